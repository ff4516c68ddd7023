//! The `tpi-run` command-line contract: output, JSON, logits file, errors.

use crate::common::*;
use serde_json::Value;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    tpi_run().args(args).output().expect("spawn tpi-run")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "tpi-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A failure exit (1): not a panic (101) or abort (signal), message on stderr.
fn assert_clean_error(out: &Output, needle: &str) {
    assert_exit(out, 1, needle);
}

/// A usage error (exit 2, as clap's own), message on stderr.
fn assert_usage_error(out: &Output, needle: &str) {
    assert_exit(out, 2, needle);
}

fn assert_exit(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {:?}; stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains(needle),
        "stderr should name {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
}

#[test]
fn prompt_text_gives_the_reference_story_as_json() {
    let r = reference("stories260K");
    let dir = fixture_dir("stories260K");
    let out = run(&[
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
        "--length",
        "64",
        "--temperature",
        "0",
        "--json",
    ]);
    let v = json_of(&out);
    assert_eq!(ids(&v["prompt_ids"]), ids(&r["once_upon_a_time_64"]["ids"]));
    assert_eq!(
        ids(&v["generated_ids"]),
        ids(&r["once_upon_a_time_64"]["greedy_ids"])
    );
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with(", there was a little girl named Lily."),
        "{text:?}"
    );
    for key in ["ttft_ms", "ms_per_token", "tokens_per_s", "peak_rss_bytes"] {
        assert!(
            v[key].as_f64().is_some_and(|x| x > 0.0),
            "{key} = {}",
            v[key]
        );
    }
    assert!(["avx512", "avx2", "neon-dotprod", "neon", "scalar"]
        .contains(&v["kernel"].as_str().unwrap()));
}

#[test]
fn bundled_demo_streams_the_story_without_model() {
    let out = run(&[
        "--prompt",
        "Once upon a time",
        "--length",
        "32",
        "--temperature",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = reference("stories260K");
    let want = r["prompts"][0]["greedy"]["full_text"]
        .as_str()
        .unwrap()
        .trim_start_matches("<s> Once upon a time");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        want.trim_end()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ms/token") && stderr.contains("peak RSS"),
        "summary: {stderr}"
    );
}

#[test]
fn logits_out_writes_the_last_position_logits() {
    let r = reference("llama-gqa-bf16");
    let p = &r["prompts"][1];
    let dir = fixture_dir("llama-gqa-bf16");
    let file = std::env::temp_dir().join(format!("tpi-logits-{}.json", std::process::id()));
    let prompt: Vec<String> = ids(&p["ids"]).iter().map(|i| i.to_string()).collect();
    let out = run(&[
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--length",
        "1",
        "--temperature",
        "0",
        "--json",
        "--logits-out",
        file.to_str().unwrap(),
    ]);
    json_of(&out);
    let got: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    let (diff, at) = max_abs_diff(&got, &floats(&p["last_logits"]));
    assert!(diff <= 1e-4, "logits-out differs by {diff} at {at}");
}

#[test]
fn sampling_is_seeded_and_stops_at_eos() {
    let args = [
        "--prompt",
        "Once upon a time",
        "--length",
        "40",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--json",
    ];
    let a = json_of(&run(&[&args[..], &["--seed", "5"]].concat()));
    let b = json_of(&run(&[&args[..], &["--seed", "5"]].concat()));
    let c = json_of(&run(&[&args[..], &["--seed", "6"]].concat()));
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    assert_ne!(a["generated_ids"], c["generated_ids"]);
    // EOS (id 2) never appears in the output unless --ignore-eos.
    for v in [&a, &b, &c] {
        assert!(!ids(&v["generated_ids"]).contains(&2));
    }
}

#[test]
fn missing_model_dir_is_a_clean_error() {
    let out = run(&["--model", "/nonexistent/model-dir", "--prompt", "hi"]);
    assert_clean_error(&out, "/nonexistent/model-dir");
}

#[test]
fn truncated_safetensors_is_a_clean_error_naming_the_file() {
    let src = fixture_dir("llama-mha-f32");
    let dir = std::env::temp_dir().join(format!("tpi-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let out = run(&["--model", dir.to_str().unwrap(), "--prompt", "Hello"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_clean_error(&out, "model.safetensors");
}

#[test]
fn bad_flags_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--top-p", "1.5"], "--top-p"),
        (&["--top-p", "NaN"], "--top-p"),
        (&["--top-p=-1"], "--top-p"),
        (&["--temperature=-1"], "--temperature"),
        (&["--temperature", "inf"], "--temperature"),
        (&["--temperature", "NaN"], "--temperature"),
        (&["--threads", "0"], "--threads"),
        (&["--threads", "100000000"], "--threads"),
        (&["--world-size", "0"], "--world-size"),
        (&["--world-size", "4000000000"], "--world-size"),
        (&["--memory-window", "1"], "--memory-window"),
        (&["--join-timeout", "1e300"], "--join-timeout"),
        (&["--length", "99999999999"], "context of 512"),
        (&["--length", "18446744073709551615"], "context of 512"),
        (&["--length=-1"], "--length"),
        (&["--top-k=-3"], "--top-k"),
        (&["--split-weights", "1,0"], "--split-weights"),
        (&["--bogus"], "--bogus"),
    ];
    for (args, needle) in cases {
        let out = run(&[&["--prompt", "x"], *args].concat());
        assert_usage_error(&out, needle);
    }
    assert_usage_error(&run(&["--prompt-ids", "1,x"]), "--prompt-ids");
    assert_usage_error(&run(&["--prompt-ids", "1,999999"]), "999999");
}

#[test]
fn extreme_sampling_settings_run_to_the_end() {
    // A temperature so small that every probability but the argmax's
    // underflows is greedy; top-p and top-k at their edges still pick.
    let greedy = json_of(&run(&[
        "--prompt",
        "Once upon a time",
        "--length",
        "16",
        "--temperature",
        "0",
        "--json",
    ]));
    for extra in [
        &["--temperature", "1e-45"][..],
        &["--temperature", "1e-30", "--top-k", "1"],
        &["--temperature", "1e-38", "--top-p", "1e-9"],
    ] {
        let args = [
            &["--prompt", "Once upon a time", "--length", "16", "--json"],
            extra,
        ]
        .concat();
        let v = json_of(&run(&args));
        assert_eq!(v["generated_ids"], greedy["generated_ids"], "{extra:?}");
    }
    for extra in [
        &["--temperature", "1e30"][..],
        &["--temperature", "3.4e38", "--top-k", "100000000"],
        &["--temperature", "2", "--top-p", "1e-30"],
    ] {
        let args = [
            &["--prompt", "Once upon a time", "--length", "16", "--json"],
            extra,
        ]
        .concat();
        let v = json_of(&run(&args));
        assert_eq!(ids(&v["generated_ids"]).len(), 16, "{extra:?}");
    }
}

#[test]
fn closed_or_full_stdout_is_an_error_not_an_abort() {
    use std::process::Stdio;
    // Closed: the reader goes away before the first token is written.
    let mut child = tpi_run()
        .args([
            "--prompt",
            "Once upon a time",
            "--length",
            "200",
            "--temperature",
            "0",
        ])
        .args(["--ignore-eos"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_clean_error(&out, "stdout");
    // Full: every write fails with ENOSPC.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    if let Ok(full) = full {
        for json in [false, true] {
            let mut c = tpi_run();
            c.args([
                "--prompt",
                "Once upon a time",
                "--length",
                "8",
                "--temperature",
                "0",
            ]);
            if json {
                c.arg("--json");
            }
            let out = c
                .stdout(full.try_clone().expect("dup"))
                .output()
                .expect("spawn");
            assert_clean_error(&out, "stdout: No space left on device");
        }
    }
}

#[test]
fn logits_out_is_checked_before_generation() {
    let out = run(&[
        "--prompt",
        "Once upon a time",
        "--length",
        "64",
        "--logits-out",
        "/nonexistent-dir/logits.json",
    ]);
    assert_clean_error(&out, "--logits-out /nonexistent-dir/logits.json");
    assert!(out.stdout.is_empty(), "generated before failing");
}

#[test]
fn dry_run_json_is_one_object_covering_the_model() {
    let dir = fixture_dir("llama-gqa-bf16");
    let v = json_of(&run(&[
        "--model",
        dir.to_str().unwrap(),
        "--world-size",
        "3",
        "--dry-run",
        "--json",
    ]));
    assert_eq!(v["world_size"], 3);
    let ranks = v["ranks"].as_array().expect("ranks");
    assert_eq!(ranks.len(), 3);
    // The vocab ranges tile the vocabulary.
    let mut next = 0;
    for r in ranks {
        assert_eq!(r["vocab"][0].as_u64(), Some(next));
        next = r["vocab"][1].as_u64().unwrap();
        assert!(r["weight_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(Some(next), v["vocab_size"].as_u64());
}

#[test]
fn version_names_target_and_kernel() {
    let out = run(&["--version"]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && s.contains("tpi-run") && s.contains("kernel"),
        "{s}"
    );
}

/// A tensor tpi does not read (an `o_proj.bias`, a stray norm, a layer past
/// the config's count) is refused by name, exit 1: running without it
/// would be another model's outputs.
#[test]
fn a_tensor_tpi_does_not_read_is_refused_by_name() {
    use tpi::model::dtype::Dtype;
    use tpi::model::safetensors::{writer, SafeTensors};
    let src = fixture_dir("stories260K");
    let st = SafeTensors::open_dir(&src).expect("open fixture");
    let dim = [64usize];
    let zeros = vec![0u8; 64 * 4];
    for extra in [
        "model.layers.0.self_attn.o_proj.bias",
        "model.layers.0.mlp.down_proj.bias",
        "model.layers.99.input_layernorm.weight",
        "model.layers.01.input_layernorm.weight",
    ] {
        let tmp = TempDir::new("unread");
        for f in ["config.json", "generation_config.json", "tokenizer.json"] {
            std::fs::copy(src.join(f), tmp.path().join(f)).expect("copy");
        }
        let mut tensors: Vec<(&str, Dtype, &[usize], &[u8])> = st
            .tensors()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), st.bytes(t)))
            .collect();
        tensors.push((extra, Dtype::F32, &dim, &zeros));
        writer::write(&tmp.path().join("model.safetensors"), &tensors).expect("write");
        let out = run(&[
            "--model",
            tmp.path().to_str().unwrap(),
            "--prompt-ids",
            "1,2",
            "--length",
            "1",
        ]);
        assert_clean_error(&out, extra);
    }
}
