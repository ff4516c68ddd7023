//! `--quantize q8_0|q4_0` end to end: real `tpi-run` processes cut Q8_0 /
//! Q4_0 slices and run them, at several world sizes and windowed, against
//! the transformers float reference.
//!
//! Tolerances, measured on these fixtures (printed by every run; release
//! test build, x86-64 AVX2, prompt 0): the last-position logits are
//! compared as NMSE, `mse(got, ref) / mse(ref, 0)` (ggml's whole-tensor
//! measure), and by rank.
//!
//! | type | fixture | max abs diff | NMSE | bound |
//! |---|---|---|---|---|
//! | Q8_0 | mha-f32, ws 1 / 2 | 0.062 / 0.095 | 2.7e-4 / 4.5e-4 | 3e-3, top-1 equal |
//! | Q8_0 | gqa-bf16, ws 1 / 2 | 0.157 | 1.37e-3 | 3e-3, top-1 equal |
//! | Q4_0 | mha-f32, ws 1-3 | 0.76-0.88 | 4.0e-2-5.6e-2 | 0.2, ref top-1 in top-5 |
//! | Q4_0 | gqa-bf16, ws 1-3 | 1.47-1.61 | 0.106-0.120 | 0.2, ref top-1 in top-5 |
//!
//! The fixtures are random-initialised (std 0.02) with top-2 margins down
//! to 0.01 logits; Q4_0's ~1e-2 per-matrix weight NMSE, compounded over
//! 3-4 layers of seven matrices, flips such close ranks, so Q4_0 asserts
//! the reference's top-1 among its top-5, not equality.
//!
//! A layer matrix whose rank-local rows are not whole 32-blocks stays in
//! its stored dtype: o_proj at world size 3 (24/16 columns for mha, 48/32
//! for gqa; down_proj of mha at every size, 176 columns). World sizes 1
//! and 2 (and the windowed runs) quantize the same matrices the same way
//! and give identical ids; world size 3 quantizes fewer and its ids
//! diverge from them on these low-margin models, so it is checked
//! against the reference bound only.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tpi::split::reader::{Expect, SliceFile};

/// Tokens generated per run (greedy).
const LENGTH: usize = 16;

fn quant_cmd(name: &str, prompt: &[u32], n: usize, cache: &Path, logits: &Path) -> Command {
    let mut c = tpi_run();
    c.arg("--model")
        .arg(fixture_dir(name))
        .args(["--prompt-ids", &ids_arg(prompt)])
        .args(["--length", &LENGTH.to_string(), "--temperature", "0"])
        .args(["--ignore-eos", "--json", "--quiet", "--threads", "1"])
        .args(["--world-size", &n.to_string()])
        .arg("--cache-dir")
        .arg(cache)
        .arg("--logits-out")
        .arg(logits);
    c
}

/// Runs a command; returns (generated ids, last-position logits).
fn run(c: &mut Command, logits: &Path) -> (Vec<u32>, Vec<f32>) {
    let out = c.output().expect("spawn tpi-run");
    assert!(
        out.status.success(),
        "tpi-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let l: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(logits).expect("logits"))
        .expect("logits json");
    (ids(&v["generated_ids"]), l)
}

/// `mse(a, b) / mse(b, 0)`.
fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    num / den
}

/// Checks `logits` against the reference: NMSE within `bound`; top-1
/// equal, or (`!exact_top1`) the reference's top-1 among the top 5.
fn check_logits(what: &str, logits: &[f32], p: &Value, bound: f64, exact_top1: bool) {
    let want = floats(&p["last_logits"]);
    let (diff, at) = max_abs_diff(logits, &want);
    let e = nmse(logits, &want);
    println!("{what}: max |diff| {diff:.5} at id {at}, NMSE {e:.2e}");
    println!("{what}: top5 {:?} ref {:?}", top5(logits), top5(&want));
    if exact_top1 {
        assert_eq!(top5(logits)[0], top5(&want)[0], "{what}: top-1 id");
    } else {
        assert!(top5(logits).contains(&top5(&want)[0]), "{what}: top-1 id");
    }
    assert!(e <= bound, "{what}: NMSE {e:.2e} above {bound:.0e}");
}

#[test]
fn q8_0_matches_reference_at_world_sizes_1_and_2() {
    for name in ["llama-mha-f32", "llama-gqa-bf16"] {
        let r = reference(name);
        let p = &r["prompts"][0];
        let tmp = TempDir::new("q8");
        let cache = tmp.path().join("cache");
        let mut first = None;
        for n in [1, 2] {
            let logits = tmp.path().join(format!("logits-{n}.json"));
            let mut c = quant_cmd(name, &ids(&p["ids"]), n, &cache, &logits);
            let (got, l) = run(c.args(["--quantize", "q8_0"]), &logits);
            check_logits(&format!("{name} q8_0 world size {n}"), &l, p, 3e-3, true);
            assert_eq!(
                got,
                *first.get_or_insert_with(|| got.clone()),
                "{name} ws {n}"
            );
        }
    }
}

#[test]
fn q4_0_runs_at_world_sizes_1_2_3_and_windowed_with_identical_ids_at_1_2() {
    for name in ["llama-mha-f32", "llama-gqa-bf16"] {
        let r = reference(name);
        let p = &r["prompts"][0];
        let tmp = TempDir::new("q4");
        let cache = tmp.path().join("cache");
        let mut first = None;
        for (n, window) in [(1, false), (2, false), (3, false), (1, true), (2, true)] {
            let logits = tmp.path().join(format!("logits-{n}-{window}.json"));
            let mut c = quant_cmd(name, &ids(&p["ids"]), n, &cache, &logits);
            c.args(["--quantize", "q4_0"]);
            if window {
                c.args(["--memory-window", "2"]);
            }
            let (got, l) = run(&mut c, &logits);
            let what = format!("{name} q4_0 world size {n} window {window}");
            check_logits(&what, &l, p, 0.2, false);
            println!("{what}: ids {got:?}");
            if n < 3 {
                assert_eq!(got, *first.get_or_insert_with(|| got.clone()), "{what}");
            }
        }
    }
}

/// Slice files under `cache`, one per entry directory.
fn slices(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| d.is_dir())
        .map(|d| d.join("rank-0-of-1.slice"))
        .collect();
    v.sort();
    v
}

#[test]
fn q4_0_slice_is_smaller_by_the_block_ratio_and_coexists_with_f32() {
    let name = "llama-mha-f32";
    let r = reference(name);
    let p = &r["prompts"][0];
    let tmp = TempDir::new("q4size");
    let cache = tmp.path().join("cache");
    let logits = tmp.path().join("logits.json");
    // A windowed float run cuts the f32 slice.
    let mut f32_run = quant_cmd(name, &ids(&p["ids"]), 1, &cache, &logits);
    f32_run.args(["--memory-window", "2"]);
    let (f32_ids, _) = run(&mut f32_run, &logits);
    let f32_path = slices(&cache).pop().expect("f32 slice");
    let f32_mtime = std::fs::metadata(&f32_path).unwrap().modified().unwrap();
    let mut q4_run = quant_cmd(name, &ids(&p["ids"]), 1, &cache, &logits);
    q4_run.args(["--quantize", "q4_0"]);
    run(&mut q4_run, &logits);
    let all = slices(&cache);
    assert_eq!(all.len(), 2, "one entry per weight type: {all:?}");
    let q4_path = all.into_iter().find(|s| *s != f32_path).unwrap();
    // The f32 entry still serves, untouched.
    assert_eq!(run(&mut f32_run, &logits).0, f32_ids);
    assert_eq!(
        std::fs::metadata(&f32_path).unwrap().modified().unwrap(),
        f32_mtime
    );

    let open = |path: &Path| SliceFile::open(path, Expect::default()).expect("slice opens");
    let (sf, sq) = (open(&f32_path), open(&q4_path));
    // Every layer matrix: 18 bytes per 32 weights where its rows are
    // whole blocks (q, k, v, o, gate, up of this model), else 4 per weight
    // (down: 176 columns).
    let (mut float_bytes, mut q4_bytes, mut saved) = (0u64, 0u64, 0u64);
    for (bf, bq) in sf.manifest().blocks.iter().zip(&sq.manifest().blocks) {
        for (tf, tq) in bf.tensors.iter().zip(&bq.tensors) {
            assert_eq!((tf.rows, tf.cols, tf.role), (tq.rows, tq.cols, tq.role));
            let n = (tf.rows * tf.cols) as u64;
            assert_eq!(tf.byte_len(), 4 * n);
            let layer = tf.layer.is_some() && tf.rows > 1;
            let want = if layer && tf.cols % 32 == 0 {
                n / 32 * 18
            } else {
                4 * n
            };
            assert_eq!(tq.byte_len(), want, "{:?} {:?}", tq.role, tq.layer);
            if want != 4 * n {
                float_bytes += 4 * n;
                q4_bytes += want;
            }
            saved += 4 * n - want;
        }
    }
    assert_eq!(
        q4_bytes * 64,
        float_bytes * 9,
        "Q4_0 is 4.5 bits per weight"
    );
    let (lf, lq) = (sf.file_len(), sq.file_len());
    println!(
        "{name}: f32 slice {lf} B, q4_0 slice {lq} B ({:.3}x), quantized tensors {q4_bytes} of {float_bytes} B",
        lq as f64 / lf as f64
    );
    // The file shrinks by the tensors' saving, give or take the 4 KiB
    // padding of each block.
    let blocks = sf.manifest().blocks.len() as u64;
    assert!(
        lq < lf && (lf - lq).abs_diff(saved) <= blocks * 4096,
        "{lf} - {lq} vs {saved}"
    );
}
