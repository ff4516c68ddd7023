//! Fixtures and the transformers oracle (reference.json) for the tests.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fixture model directories copied from the oracle set.
pub const FIXTURES: [&str; 3] = ["stories260K", "llama-mha-f32", "llama-gqa-bf16"];

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `reference.json` of a fixture.
pub fn reference(name: &str) -> Value {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("float array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

/// Largest absolute difference, with the index where it occurs.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut worst = (0.0f32, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d > worst.0 || d.is_nan() {
            worst = (d, i);
        }
    }
    worst
}

/// Ids of the 5 largest values, descending.
pub fn top5(logits: &[f32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(5);
    idx
}

/// The path of the built `tpi-run`.
pub fn tpi_run() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tpi-run"))
}

/// A fresh, unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("tpi-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn ids_arg(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `tpi-run --rank R --world-size N --master 127.0.0.1:PORT --cache-dir DIR
/// --threads 1`, stdin closed, stderr captured.
pub fn rank_cmd(rank: usize, n: usize, port: u16, cache: &Path) -> std::process::Command {
    let mut c = tpi_run();
    c.args([
        "--rank",
        &rank.to_string(),
        "--world-size",
        &n.to_string(),
        "--master",
        &format!("127.0.0.1:{port}"),
    ])
    .arg("--cache-dir")
    .arg(cache)
    .args(["--threads", "1"])
    .stdin(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    c
}

/// stories260K's "Once upon a time" prompt followed by the first 140
/// tokens of its greedy story from transformers (`long_story.json`, made by
/// `tools/long_story_fixture.py`; longer than one prefill batch), and the
/// story's 141st token that must come next (its top-2 logit gap is 7.3).
pub fn long_story_prompt() -> (Vec<u32>, u32) {
    const HEAD: usize = 140;
    let path = fixture_dir("stories260K").join("long_story.json");
    let text = std::fs::read_to_string(&path).expect("long_story.json");
    let case: Value = serde_json::from_str(&text).expect("long_story.json parses");
    let story = ids(&case["greedy_ids"]);
    let mut prompt = ids(&case["ids"]);
    prompt.extend_from_slice(&story[..HEAD]);
    assert!(prompt.len() > tpi::engine::PREFILL_BATCH);
    (prompt, story[HEAD])
}

/// Tokens generated per `greedy_cmd` run.
pub const LENGTH: usize = 16;

pub fn greedy_cmd(
    name: &str,
    prompt: &[u32],
    n: usize,
    cache: &Path,
    logits: &Path,
) -> std::process::Command {
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
pub fn run_greedy(c: &mut std::process::Command, logits: &Path) -> (Vec<u32>, Vec<f32>) {
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
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    num / den
}
