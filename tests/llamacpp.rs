//! `--quantize q8_0|q4_0` against llama.cpp itself: `llamacpp.json` in
//! each fixture holds what llama.cpp computes on the GGUF it converts and
//! quantizes from the same HF weights (`tools/llamacpp_oracle.sh`: its own
//! `convert_hf_to_gguf.py` and quantizer, 1 thread, f32 KV cache): each
//! reference prompt's last-position logits and 16 greedy ids, and the type
//! of every tensor in its file.
//!
//! Both engines hold the same bytes (ggml's reference quantizers; the
//! lm_head Q8_0; F16 where a matrix is not whole 32-blocks) and both
//! quantize activations to Q8_0 per 32-block before the integer dot
//! products. What differs is the order of f32 additions and the
//! attention/norm arithmetic, so the logits agree far closer than either
//! agrees with the float model (tests/quant.rs), and the greedy ids are
//! equal. Bounds, from the measured differences (see `TOLERANCE`).

use crate::common::*;
use serde_json::Value;
use tpi::model::dtype::WeightType;
use tpi::split::manifest::Role;
use tpi::split::reader::{Expect, SliceFile};

/// Max |logit difference| allowed against llama.cpp. Measured (x86-64
/// AVX2, every fixture, prompt and world size below): up to 2.4e-3 for
/// Q8_0 and 4.9e-3 for Q4_0, with logits of magnitude up to ~4; the bound
/// leaves 4x room for another backend's summation order.
const TOLERANCE: f32 = 0.02;

fn oracle(name: &str) -> Value {
    let path = fixture_dir(name).join("llamacpp.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs tpi on prompt `p` of the oracle and checks ids and logits.
fn check(name: &str, quant: &str, p: &Value, n: usize, window: bool, tmp: &TempDir) {
    let logits = tmp.path().join(format!("logits-{quant}-{n}-{window}.json"));
    let cache = tmp.path().join("cache");
    let mut c = greedy_cmd(name, &ids(&p["ids"]), n, &cache, &logits);
    c.args(["--quantize", quant]);
    if window {
        c.args(["--memory-window", "2"]);
    }
    let (got, l) = run_greedy(&mut c, &logits);
    let what = format!(
        "{name} {quant} prompt of {} ids, world size {n}, window {window}",
        ids(&p["ids"]).len()
    );
    let want = floats(&p["last_logits"]);
    let (diff, at) = max_abs_diff(&l, &want);
    println!("{what}: max |logit - llama.cpp| {diff:.2e} at id {at}");
    assert_eq!(got, ids(&p["greedy_ids"]), "{what}: greedy ids");
    assert!(diff <= TOLERANCE, "{what}: {diff} at id {at}");
}

const FIXTURES_Q: [&str; 3] = ["llama-mha-f32", "llama-gqa-bf16", "stories260K"];

#[test]
fn one_rank_matches_llamacpp_on_every_prompt() {
    for name in FIXTURES_Q {
        let o = oracle(name);
        let tmp = TempDir::new("llamacpp1");
        for quant in ["q8_0", "q4_0"] {
            for p in o["types"][quant]["prompts"].as_array().expect("prompts") {
                check(name, quant, p, 1, false, &tmp);
            }
        }
    }
}

#[test]
fn world_sizes_2_to_4_and_a_window_match_llamacpp() {
    for name in FIXTURES_Q {
        let o = oracle(name);
        let tmp = TempDir::new("llamacppn");
        for quant in ["q8_0", "q4_0"] {
            let p = &o["types"][quant]["prompts"][1];
            for (n, window) in [(2, false), (3, false), (4, false), (1, true), (3, true)] {
                check(name, quant, p, n, window, &tmp);
            }
        }
    }
}

/// llama.cpp's tensor name for a role (`blk.N.` prefix added by the caller).
fn gguf_name(role: Role) -> Option<&'static str> {
    Some(match role {
        Role::Q => "attn_q",
        Role::K => "attn_k",
        Role::V => "attn_v",
        Role::O => "attn_output",
        Role::Gate => "ffn_gate",
        Role::Up => "ffn_up",
        Role::Down => "ffn_down",
        Role::LmHead => "output",
        Role::Embedding => "token_embd",
        _ => return None,
    })
}

#[test]
fn one_rank_slice_stores_the_types_llamacpp_chose() {
    for name in FIXTURES_Q {
        let o = oracle(name);
        let tmp = TempDir::new("llamacpptypes");
        for quant in ["q8_0", "q4_0"] {
            let cache = tmp.path().join(quant);
            let p = &o["types"][quant]["prompts"][0];
            let logits = tmp.path().join("logits.json");
            let mut c = greedy_cmd(name, &ids(&p["ids"]), 1, &cache, &logits);
            run_greedy(c.args(["--quantize", quant]), &logits);
            let entry = std::fs::read_dir(&cache)
                .expect("cache")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|d| d.is_dir())
                .expect("slice entry");
            let slice = SliceFile::open(&entry.join("rank-0-of-1.slice"), Expect::default())
                .expect("slice opens");
            let want = &o["types"][quant]["tensors"];
            let mut checked = 0;
            for t in slice.manifest().blocks.iter().flat_map(|b| &b.tensors) {
                let Some(leaf) = gguf_name(t.role) else {
                    continue;
                };
                let gguf = match t.layer {
                    Some(l) => format!("blk.{l}.{leaf}.weight"),
                    None => format!("{leaf}.weight"),
                };
                let theirs = want[&gguf].as_str().unwrap_or_else(|| panic!("{gguf}"));
                // The embedding stays in the stored dtype (llama.cpp's file
                // is f32 throughout before quantizing).
                let ours = match (t.role, t.wtype) {
                    (Role::Embedding, WeightType::BF16) => "F32",
                    (_, w) => w.name(),
                };
                assert_eq!(ours.to_uppercase(), theirs, "{name} {quant} {gguf}");
                checked += 1;
            }
            println!("{name} {quant}: {checked} tensor types equal llama.cpp's");
            assert!(checked > 8, "{checked}");
        }
    }
}
