//! The engine against HuggingFace transformers (reference.json): logits,
//! top-5 at every prompt position, greedy continuations.

use crate::common::*;
use tpi::engine::{generate, GenOptions, GenOutput, Rank};
use tpi::engine::{Par, SamplerConfig, Solo};
use tpi::model::checkpoint::Checkpoint;
use tpi::split::plan::RankSlice;
use tpi::weights::in_place::{resident, InPlace};
use tpi_kernels::Backend;

/// Max-abs tolerance on last-position logits (the two oracles agree to 1e-5).
const LOGIT_TOL: f32 = 1e-4;
/// Max-abs tolerance between batched and token-by-token prefill: the same
/// f32 products summed in another order (measured: at most 5.5e-6 on the
/// fixtures, with logits of magnitude ~10, where one ulp is ~1e-6).
const BATCH_TOL: f32 = 2e-5;

fn greedy(
    ckpt: &Checkpoint,
    prompt: &[u32],
    length: usize,
    backend: Backend,
    threads: usize,
) -> GenOutput {
    generate_greedy(ckpt, prompt, length, backend, threads, true)
}

/// Greedy generation; with `per_position` the prompt runs token by token
/// and keeps every position's logits, without it the prompt is prefilled
/// in batches.
fn generate_greedy(
    ckpt: &Checkpoint,
    prompt: &[u32],
    length: usize,
    backend: Backend,
    threads: usize,
    per_position: bool,
) -> GenOutput {
    let cfg = &ckpt.config;
    let part = RankSlice::whole(cfg);
    let res = resident(cfg, ckpt.safetensors().expect("safetensors"), &part).expect("resident");
    let mut weights = InPlace::new(cfg, ckpt.safetensors().expect("safetensors")).expect("layers");
    let mut solo = Solo;
    let mut rank = Rank {
        res: &res,
        weights: &mut weights,
        comm: &mut solo,
        par: Par::new(threads, backend),
    };
    let opts = GenOptions {
        length,
        sampler: SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
        eos_ids: cfg.eos_token_ids.clone(),
        ignore_eos: true,
        keep_prompt_logits: per_position,
    };
    generate(
        &mut rank,
        ckpt.tokenizer.as_ref(),
        prompt,
        &opts,
        &mut |_| Ok(tpi::engine::Flow::Continue),
    )
    .expect("generate")
}

fn check_fixture(name: &str, backend: Backend) {
    let ckpt = Checkpoint::open_dir(&fixture_dir(name)).expect("open fixture");
    let reference = reference(name);
    for p in reference["prompts"].as_array().expect("prompts") {
        let text = p["text"].as_str().expect("text");
        let prompt = ids(&p["ids"]);
        let want_greedy = ids(&p["greedy"]["ids"]);
        let out = greedy(&ckpt, &prompt, want_greedy.len(), backend, 2);
        let (diff, at) = max_abs_diff(&out.last_logits, &floats(&p["last_logits"]));
        assert!(
            diff <= LOGIT_TOL,
            "{name} {text:?} [{}]: last logits differ by {diff} at id {at}",
            backend.name()
        );
        for (pos, want) in p["top5_ids"].as_array().expect("top5").iter().enumerate() {
            assert_eq!(
                top5(&out.prompt_logits[pos]),
                ids(want),
                "{name} {text:?}: top-5 at position {pos}"
            );
        }
        assert_eq!(
            out.generated_ids,
            want_greedy,
            "{name} {text:?} [{}]: greedy ids",
            backend.name()
        );
    }
}

#[test]
fn stories260k_matches_transformers() {
    check_fixture("stories260K", Backend::detect());
}

#[test]
fn llama_mha_f32_matches_transformers() {
    check_fixture("llama-mha-f32", Backend::detect());
}

#[test]
fn llama_gqa_bf16_with_llama3_rope_matches_transformers() {
    check_fixture("llama-gqa-bf16", Backend::detect());
}

#[test]
fn llama_k256_matches_transformers() {
    check_fixture("llama-k256", Backend::detect());
}

#[test]
fn scalar_kernels_match_transformers_too() {
    for name in FIXTURES {
        check_fixture(name, Backend::Scalar);
    }
}

#[test]
fn stories260k_tells_the_64_token_story() {
    let r = reference("stories260K");
    let case = &r["once_upon_a_time_64"];
    let ckpt = Checkpoint::open_dir(&fixture_dir("stories260K")).expect("open");
    let out = greedy(&ckpt, &ids(&case["ids"]), 64, Backend::detect(), 1);
    assert_eq!(out.generated_ids, ids(&case["greedy_ids"]));
    let full = r["prompts"][0]["greedy"]["full_text"]
        .as_str()
        .expect("full_text");
    assert!(full.starts_with("<s> Once upon a time"));
    assert!(
        case["greedy_text"]
            .as_str()
            .expect("text")
            .starts_with(&out.text[..40]),
        "text: {:?}",
        out.text
    );
}

#[test]
fn bundled_model_is_stories260k() {
    let r = reference("stories260K");
    let case = &r["from_bos_64"];
    let ckpt = Checkpoint::bundled().expect("bundled");
    let out = greedy(&ckpt, &ids(&case["ids"]), 64, Backend::detect(), 1);
    assert_eq!(out.generated_ids, ids(&case["greedy_ids"]));
}

#[test]
fn prompt_text_encodes_to_the_reference_ids() {
    for name in FIXTURES {
        let ckpt = Checkpoint::open_dir(&fixture_dir(name)).expect("open");
        let tok = ckpt.tokenizer.as_ref().expect("tokenizer");
        for p in reference(name)["prompts"].as_array().expect("prompts") {
            assert_eq!(
                tok.encode(p["text"].as_str().expect("text"))
                    .expect("encode"),
                ids(&p["ids"]),
                "{name}"
            );
        }
    }
}

/// Prompts prefilled in batches (every weight read once per batch of up to
/// `PREFILL_BATCH` tokens) give the oracle's logits and continuations, and
/// within `BATCH_TOL` of token-by-token prefill (the batched product sums
/// in another order), also across a batch boundary.
#[test]
fn batched_prefill_matches_transformers_and_token_by_token() {
    for name in FIXTURES {
        let ckpt = Checkpoint::open_dir(&fixture_dir(name)).expect("open fixture");
        for p in reference(name)["prompts"].as_array().expect("prompts") {
            let (prompt, want) = (ids(&p["ids"]), ids(&p["greedy"]["ids"]));
            for threads in [1, 2] {
                let batched = generate_greedy(
                    &ckpt,
                    &prompt,
                    want.len(),
                    Backend::detect(),
                    threads,
                    false,
                );
                let (diff, at) = max_abs_diff(&batched.last_logits, &floats(&p["last_logits"]));
                assert!(
                    diff <= LOGIT_TOL,
                    "{name}: logits differ by {diff} at id {at}"
                );
                assert_eq!(batched.generated_ids, want, "{name}: greedy ids");
                let stepped = greedy(&ckpt, &prompt, 1, Backend::detect(), threads);
                let (diff, at) = max_abs_diff(&batched.last_logits, &stepped.last_logits);
                assert!(
                    diff <= BATCH_TOL,
                    "{name}: batched and token-by-token prefill differ by {diff} at id {at}"
                );
            }
        }
    }
    // The prompt and 140 story tokens: a batch of PREFILL_BATCH, then the
    // rest; the next token is the story's 141st.
    let (prompt, next) = long_story_prompt();
    let ckpt = Checkpoint::open_dir(&fixture_dir("stories260K")).expect("open");
    let batched = generate_greedy(&ckpt, &prompt, 1, Backend::detect(), 2, false);
    assert_eq!(batched.generated_ids, [next]);
    let stepped = greedy(&ckpt, &prompt, 1, Backend::detect(), 2);
    let (diff, at) = max_abs_diff(&batched.last_logits, &stepped.last_logits);
    assert!(diff <= BATCH_TOL, "differ by {diff} at id {at}");
}
