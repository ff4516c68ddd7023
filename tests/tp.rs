//! Tensor parallelism end to end: real `tpi-run` processes, local mode and
//! separately started ranks, against the transformers oracle.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Runs rank 0 for a fixture prompt; returns (json, last logits).
fn greedy_json(cmd: &mut Command, logits: &Path) -> (Value, Vec<f32>) {
    let out = cmd.output().expect("spawn tpi-run");
    assert!(
        out.status.success(),
        "tpi-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let l: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(logits).expect("logits file"))
        .expect("logits json");
    (v, l)
}

fn check_against_oracle(name: &str, p: &Value, v: &Value, logits: &[f32], what: &str) {
    assert_eq!(
        ids(&v["generated_ids"]),
        ids(&p["greedy"]["ids"]),
        "{name} {what}: greedy ids"
    );
    let (diff, at) = max_abs_diff(logits, &floats(&p["last_logits"]));
    assert!(
        diff <= 1e-4,
        "{name} {what}: last logits differ by {diff} at id {at}"
    );
}

fn rank0_cmd(name: &str, prompt: &[u32], n: usize, cache: &Path, logits: &Path) -> Command {
    let mut c = tpi_run();
    c.arg("--model")
        .arg(fixture_dir(name))
        .args([
            "--prompt-ids",
            &ids_arg(prompt),
            "--length",
            "32",
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
            "--quiet",
        ])
        .args(["--world-size", &n.to_string(), "--threads", "1"])
        .arg("--cache-dir")
        .arg(cache)
        .arg("--logits-out")
        .arg(logits);
    c
}

#[test]
fn local_mode_matches_oracle_at_every_world_size() {
    for name in FIXTURES {
        let r = reference(name);
        let prompts = r["prompts"].as_array().expect("prompts");
        let n_heads = r["config"]["num_attention_heads"].as_u64().expect("heads") as usize;
        let tmp = TempDir::new("local");
        for n in 1..=n_heads.min(8) {
            let p = &prompts[n % prompts.len()];
            let logits = tmp.path().join(format!("logits-{n}.json"));
            let (v, l) = greedy_json(
                &mut rank0_cmd(name, &ids(&p["ids"]), n, &tmp.path().join("cache"), &logits),
                &logits,
            );
            assert_eq!(v["world_size"].as_u64(), Some(n as u64));
            check_against_oracle(name, p, &v, &l, &format!("world size {n}"));
            if n > 1 {
                assert!(
                    v["bytes_sent_per_token"].as_f64().unwrap_or(0.0) > 0.0,
                    "{name}: no traffic reported"
                );
            }
        }
    }
}

#[test]
fn uneven_split_weights_match_oracle() {
    let name = "stories260K";
    let r = reference(name);
    let p = &r["prompts"][2];
    let tmp = TempDir::new("weights");
    let logits = tmp.path().join("logits.json");
    let mut c = rank0_cmd(name, &ids(&p["ids"]), 3, &tmp.path().join("cache"), &logits);
    c.args(["--split-weights", "3,1,1"]);
    let (v, l) = greedy_json(&mut c, &logits);
    check_against_oracle(name, p, &v, &l, "split weights 3,1,1");
}

/// A prompt longer than one prefill batch crosses the cluster as two
/// multi-token steps (resident and windowed ranks); the next token is the
/// oracle story's.
#[test]
fn batched_prefill_across_ranks_continues_the_story() {
    let (prompt, next) = long_story_prompt();
    let tmp = TempDir::new("prefill");
    let mut logits = Vec::new();
    for extra in [&[][..], &["--memory-window", "2"][..]] {
        let out = tmp.path().join(format!("logits-{}.json", extra.len()));
        let mut c = rank0_cmd("stories260K", &prompt, 3, &tmp.path().join("cache"), &out);
        let (v, l) = greedy_json(c.args(extra), &out);
        assert_eq!(ids(&v["generated_ids"]).first(), Some(&next), "{extra:?}");
        logits.push(l);
    }
    let (diff, at) = max_abs_diff(&logits[0], &logits[1]);
    assert!(
        diff <= 1e-5,
        "resident vs windowed logits differ by {diff} at {at}"
    );
}

/// Both waiting strategies of the links (blocking reads, and a long
/// yield-spin) carry the same session, forwarded to spawned workers.
#[test]
fn blocking_and_spinning_links_match_oracle() {
    let name = "llama-gqa-bf16";
    let r = reference(name);
    let p = &r["prompts"][0];
    let tmp = TempDir::new("spin");
    for spin in ["0", "5000"] {
        let logits = tmp.path().join(format!("logits-{spin}.json"));
        let mut c = rank0_cmd(name, &ids(&p["ids"]), 3, &tmp.path().join("cache"), &logits);
        c.args(["--net-spin-us", spin]);
        let (v, l) = greedy_json(&mut c, &logits);
        check_against_oracle(name, p, &v, &l, &format!("--net-spin-us {spin}"));
    }
}

fn spawn_worker(rank: usize, n: usize, port: u16, cache: &Path, extra: &[&str]) -> Child {
    rank_cmd(rank, n, port, cache)
        .args(["--join-timeout", "20"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

fn worker_log(c: Child) -> (bool, String) {
    let out: Output = c.wait_with_output().expect("worker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rank 0 and workers as separate processes, each with its own cache dir.
fn multi_host_session(
    name: &str,
    n: usize,
    caches: &[PathBuf],
    p: &Value,
    tmp: &Path,
) -> Vec<String> {
    let port = free_port();
    let workers: Vec<Child> = (1..n)
        .map(|r| spawn_worker(r, n, port, &caches[r], &[]))
        .collect();
    let logits = tmp.join("logits.json");
    let mut c = rank0_cmd(name, &ids(&p["ids"]), n, &caches[0], &logits);
    c.args(["--rank", "0", "--master", &format!("127.0.0.1:{port}")]);
    let (v, l) = greedy_json(&mut c, &logits);
    check_against_oracle(name, p, &v, &l, &format!("{n} separate ranks"));
    workers
        .into_iter()
        .map(|w| {
            let (ok, log) = worker_log(w);
            assert!(ok, "worker failed: {log}");
            log
        })
        .collect()
}

#[test]
fn separate_ranks_fetch_cache_and_refetch_corrupted_slices() {
    let name = "llama-gqa-bf16";
    let r = reference(name);
    let p = &r["prompts"][1];
    let n = 3;
    let tmp = TempDir::new("multi");
    let caches: Vec<PathBuf> = (0..n)
        .map(|i| tmp.path().join(format!("cache-{i}")))
        .collect();

    // Fresh: workers have empty caches and fetch their slices from rank 0.
    let logs = multi_host_session(name, n, &caches, p, tmp.path());
    for log in &logs {
        assert!(log.contains("fetched"), "expected a fetch: {log}");
    }
    // Cached: nothing is fetched again.
    let logs = multi_host_session(name, n, &caches, p, tmp.path());
    for log in &logs {
        assert!(
            log.contains("using cached slice"),
            "expected cache use: {log}"
        );
    }
    // A flipped byte in worker 2's cached slice is detected and re-fetched.
    let slice = find_slice(&caches[2]);
    let mut bytes = std::fs::read(&slice).expect("read slice");
    let at = bytes.len() - 5000;
    bytes[at] ^= 0x40;
    std::fs::write(&slice, &bytes).expect("write slice");
    let logs = multi_host_session(name, n, &caches, p, tmp.path());
    assert!(logs[0].contains("using cached slice"), "{}", logs[0]);
    assert!(
        logs[1].contains("rejected") && logs[1].contains("fetched"),
        "expected a re-fetch: {}",
        logs[1]
    );

    // An interrupted transfer resumes: half of worker 1's slice is left as
    // its `.partial`, and only the rest crosses the wire.
    let slice = find_slice(&caches[1]);
    let bytes = std::fs::read(&slice).expect("read slice");
    std::fs::remove_file(&slice).expect("remove slice");
    let half = bytes.len() / 2;
    std::fs::write(slice.with_extension("partial"), &bytes[..half]).expect("write partial");
    let logs = multi_host_session(name, n, &caches, p, tmp.path());
    let want = format!("fetched {} bytes", bytes.len() - half);
    assert!(
        logs[0].contains(&want),
        "expected a resumed fetch ({want}): {}",
        logs[0]
    );
}

fn find_slice(dir: &Path) -> PathBuf {
    for e in std::fs::read_dir(dir).expect("cache dir").flatten() {
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).expect("dir").flatten() {
                if f.path().extension().is_some_and(|x| x == "slice") {
                    return f.path();
                }
            }
        }
    }
    panic!("no slice under {}", dir.display());
}

#[test]
fn dry_run_prints_the_plan() {
    let out = tpi_run()
        .args(["--world-size", "3", "--dry-run"])
        .output()
        .expect("spawn");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // stories260K: 8 heads in 4 GQA groups over 3 ranks (whole groups),
    // 172 MLP columns on 32-column boundaries, 512 vocab rows.
    let rows: Vec<&str> = s
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 3, "{s}");
    for (row, want) in rows.iter().zip([
        ["0..2 ", "0..1 ", "0..64 ", "0..160 "],
        ["2..6 ", "1..3 ", "64..128 ", "160..352 "],
        ["6..8 ", "3..4 ", "128..172 ", "352..512 "],
    ]) {
        for w in want {
            assert!(row.contains(w), "{w:?} missing in {row:?}");
        }
    }
}
