//! A loaded model answering several prompts (`session::Generator`): the
//! second turn of a conversation reuses the KV cache of the first for its
//! common prefix and computes only the new tokens, with the logits a fresh
//! generation of the whole prompt gives (within the batched-prefill
//! summation-order bound of tests/oracle.rs); a prompt that leaves the
//! cached conversation reuses only what it shares; a generation stopped by
//! its text receiver keeps the cache consistent.

use crate::common::*;
use tpi::engine::{Finish, Flow, GenOptions, GenOutput, SamplerConfig};
use tpi::model::checkpoint::Checkpoint;
use tpi::progress::Silent;
use tpi::session::single::{Single, SingleSetup};
use tpi::session::{plan_for_model, Generator};
use tpi::window::policy::MemoryOpts;

/// Batched and token-by-token prefill differ in summation order only.
const TOL: f32 = 1e-4;

fn greedy(length: usize) -> GenOptions {
    GenOptions {
        length,
        sampler: SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
        eos_ids: vec![],
        ignore_eos: true,
        keep_prompt_logits: false,
    }
}

fn run(g: &mut dyn Generator, prompt: &[u32], length: usize) -> GenOutput {
    g.generate(prompt, &greedy(length), &mut |_| Ok(Flow::Continue))
        .expect("generate")
}

#[test]
fn the_second_turn_computes_only_its_new_tokens() {
    let tmp = TempDir::new("turns");
    for model in [
        fixture_dir("stories260K"),
        fixture_dir("gguf_run").join("k256-q4_k_m.gguf"),
    ] {
        let ckpt = Checkpoint::open(Some(&model)).expect("model");
        let plan = plan_for_model(&ckpt, 1, None, None).expect("plan");
        let setup = SingleSetup {
            ckpt: &ckpt,
            plan: &plan,
            cache_dir: tmp.path(),
            memory: MemoryOpts::default(),
            threads: 1,
            observer: &Silent,
        };
        let mut chat = Single::start(&setup).expect("start");
        let p1: Vec<u32> = vec![1, 403, 407, 261, 378, 432, 261, 397];
        let a = run(&mut chat, &p1, 8);
        assert_eq!(a.cached_tokens, 0);
        assert_eq!(a.finish, Finish::Length);

        // Turn 2: the whole conversation so far, then new tokens.
        let mut p2 = p1.clone();
        p2.extend_from_slice(&a.generated_ids);
        p2.extend_from_slice(&[13, 437, 260, 336]);
        let b = run(&mut chat, &p2, 8);
        // The last generated id was never fed back: its position is new.
        assert_eq!(
            b.cached_tokens,
            p1.len() + a.generated_ids.len() - 1,
            "{model:?}"
        );
        let mut fresh = Single::start(&setup).expect("start");
        let want = run(&mut fresh, &p2, 8);
        assert_eq!(want.cached_tokens, 0);
        let (diff, at) = max_abs_diff(&b.last_logits, &want.last_logits);
        println!(
            "{model:?}: turn 2 reused {} of {} ids, |logits - fresh| {diff:.1e}",
            b.cached_tokens,
            p2.len()
        );
        assert!(diff <= TOL, "{model:?}: {diff} at {at}");
        assert_eq!(b.generated_ids, want.generated_ids, "{model:?}");

        // A prompt sharing only its first 3 ids reuses those 3.
        let mut p3 = p1[..3].to_vec();
        p3.extend_from_slice(&[300, 301, 302]);
        let c = run(&mut chat, &p3, 4);
        assert_eq!(c.cached_tokens, 3);
        let want = run(&mut fresh_start(&setup), &p3, 4);
        assert!(max_abs_diff(&c.last_logits, &want.last_logits).0 <= TOL);
        assert_eq!(c.generated_ids, want.generated_ids);

        // The same prompt again: everything but its last id is reused.
        let d = run(&mut chat, &p3, 4);
        assert_eq!(d.cached_tokens, p3.len() - 1);
        assert!(max_abs_diff(&d.last_logits, &c.last_logits).0 <= TOL);
        assert_eq!(d.generated_ids, c.generated_ids);
    }
}

fn fresh_start<'a>(setup: &SingleSetup<'a>) -> Single<'a> {
    Single::start(setup).expect("start")
}

#[test]
fn a_stopped_generation_ends_at_once_and_the_next_turn_is_right() {
    let tmp = TempDir::new("turnstop");
    let ckpt = Checkpoint::open(Some(&fixture_dir("stories260K"))).expect("model");
    let plan = plan_for_model(&ckpt, 1, None, None).expect("plan");
    let setup = SingleSetup {
        ckpt: &ckpt,
        plan: &plan,
        cache_dir: tmp.path(),
        memory: MemoryOpts::default(),
        threads: 1,
        observer: &Silent,
    };
    let mut chat = Single::start(&setup).expect("start");
    let prompt: Vec<u32> = vec![1, 403, 407, 261, 378];
    let mut pieces = 0;
    let out = chat
        .generate(&prompt, &greedy(16), &mut |_| {
            pieces += 1;
            Ok(if pieces == 3 {
                Flow::Stop
            } else {
                Flow::Continue
            })
        })
        .expect("generate");
    assert_eq!(out.finish, Finish::Stopped);
    assert_eq!(pieces, 3, "no piece after the stop");
    assert!(out.generated_ids.len() < 16, "{:?}", out.generated_ids);
    // The next turn continues what was generated before the stop.
    let mut next = prompt.clone();
    next.extend_from_slice(&out.generated_ids);
    next.push(13);
    let b = run(&mut chat, &next, 4);
    assert_eq!(b.cached_tokens, prompt.len() + out.generated_ids.len() - 1);
    let want = run(&mut fresh_start(&setup), &next, 4);
    assert!(max_abs_diff(&b.last_logits, &want.last_logits).0 <= TOL);
    assert_eq!(b.generated_ids, want.generated_ids);
}
