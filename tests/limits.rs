//! What the engine refuses, and how: runs past the model's context and
//! non-finite values, the same at every world size (exit status, named
//! limit, layer and position), never an abort or a junk token.

use crate::common::*;
use std::path::Path;
use std::process::Output;

/// `tpi-run --model DIR` in local mode with `n` ranks and its own cache.
fn run_local(model: &Path, n: usize, cache: &Path, args: &[&str]) -> Output {
    tpi_run()
        .arg("--model")
        .arg(model)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--world-size", &n.to_string(), "--threads", "1"])
        .args(args)
        .output()
        .expect("spawn tpi-run")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error line tpi-run printed (first line on stderr starting with it).
fn error_line(o: &Output) -> String {
    stderr(o)
        .lines()
        .find(|l| l.starts_with("tpi-run: error:"))
        .unwrap_or_else(|| panic!("no error line: {}", stderr(o)))
        .to_string()
}

#[test]
fn context_overflow_is_the_same_usage_error_at_every_world_size() {
    // llama-mha-f32: max_position_embeddings 256.
    let model = fixture_dir("llama-mha-f32");
    let cache = TempDir::new("context");
    let prompt = ids_arg(&(1..=10).collect::<Vec<u32>>());
    let mut lines = Vec::new();
    for n in [1, 2, 3] {
        let over = run_local(
            &model,
            n,
            cache.path(),
            &["--prompt-ids", &prompt, "--length", "247", "--json"],
        );
        assert_eq!(over.status.code(), Some(2), "N={n}: {}", stderr(&over));
        assert!(over.stdout.is_empty(), "N={n} printed output");
        let line = error_line(&over);
        assert!(
            line.contains("context of 256") && line.contains("at most 246 tokens"),
            "N={n}: {line}"
        );
        lines.push(line);
        // Exactly at the limit runs to the end.
        let fits = run_local(
            &model,
            n,
            cache.path(),
            &[
                "--prompt-ids",
                &prompt,
                "--length",
                "246",
                "--ignore-eos",
                "--json",
            ],
        );
        assert!(fits.status.success(), "N={n}: {}", stderr(&fits));
        let v: serde_json::Value = serde_json::from_slice(&fits.stdout).expect("json");
        assert_eq!(ids(&v["generated_ids"]).len(), 246, "N={n}");
    }
    assert!(lines.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
}

/// Copies an f32 fixture with every weight of `tensor` set to NaN.
fn poisoned_copy(src: &Path, dst: &Path, tensor: &str) {
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).expect("copy");
    }
    let mut bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let t = &header[tensor];
    assert_eq!(t["dtype"], "F32", "{tensor}");
    let off = &t["data_offsets"];
    let (a, b) = (
        8 + n + off[0].as_u64().unwrap() as usize,
        8 + n + off[1].as_u64().unwrap() as usize,
    );
    for w in bytes[a..b].chunks_exact_mut(4) {
        w.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(dst.join("model.safetensors"), bytes).expect("write");
}

#[test]
fn nan_weights_are_a_named_error_not_junk_tokens() {
    let src = fixture_dir("llama-mha-f32");
    let cases = [
        (
            "model.layers.1.mlp.down_proj.weight",
            "the output of layer 1 at position 0",
        ),
        ("lm_head.weight", "the logits at position 2"),
    ];
    for (tensor, want) in cases {
        let model = TempDir::new("nan-model");
        let cache = TempDir::new("nan-cache");
        poisoned_copy(&src, model.path(), tensor);
        for n in [1, 2] {
            for sampling in [
                &["--temperature", "0"][..],
                &["--temperature", "0.8", "--top-k", "5"],
                &["--temperature", "0", "--memory-window", "2"],
            ] {
                let args = [
                    &["--prompt-ids", "1,2,3", "--length", "4", "--json"],
                    sampling,
                ]
                .concat();
                let out = run_local(model.path(), n, cache.path(), &args);
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{tensor} N={n}: {}",
                    stderr(&out)
                );
                assert!(out.stdout.is_empty(), "{tensor} N={n}: printed output");
                let line = error_line(&out);
                assert!(
                    line.contains("non-finite") && line.contains(want),
                    "{tensor} N={n} {sampling:?}: {line}"
                );
            }
        }
    }
}

#[test]
fn a_plan_that_cannot_be_made_is_a_usage_error_naming_the_cause() {
    // llama-mha-f32 has 8 query heads: 9 ranks cannot each hold one.
    let cache = TempDir::new("plan");
    let out = run_local(
        &fixture_dir("llama-mha-f32"),
        9,
        cache.path(),
        &["--prompt-ids", "1,2", "--length", "2"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("split plan") && line.contains('9'), "{line}");
}
