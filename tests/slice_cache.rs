//! The slice cache never serves slices of other weights: a model whose
//! weights change (same layout) is sliced again, a worker holding other
//! weights is refused; and cutting slices does not keep the model resident.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};
use tpi::model::checkpoint::Checkpoint;

const MODEL: &str = "llama-mha-f32";

/// A copy of a fixture (no tokenizer: ids only) whose files were last
/// modified a minute ago, so their digests go into the digest cache.
fn aged_copy(name: &str, dst: &Path) {
    std::fs::create_dir_all(dst).expect("model dir");
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        let to = dst.join(f);
        std::fs::copy(fixture_dir(name).join(f), &to).expect("copy fixture");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(60)))
            .expect("age fixture");
    }
}

/// Rewrites `tensor`'s bytes in place with its rows in reverse order: the
/// same layout and header, other values.
fn reverse_rows(model: &Path, tensor: &str) {
    let ckpt = Checkpoint::open_dir(model).expect("open model");
    let t = ckpt
        .safetensors()
        .expect("safetensors")
        .tensor(tensor)
        .expect("tensor")
        .clone();
    drop(ckpt);
    let path = model.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read model");
    let row = t.shape[1] * t.dtype.size();
    let data = &mut bytes[t.offset..t.offset + t.len];
    let rows: Vec<Vec<u8>> = data.chunks(row).rev().map(<[u8]>::to_vec).collect();
    data.copy_from_slice(&rows.concat());
    std::fs::write(&path, &bytes).expect("write model");
}

fn run(model: &Path, cache: &Path, extra: &[&str]) -> Value {
    let r = reference(MODEL);
    let prompt = ids_arg(&ids(&r["prompts"][0]["ids"]));
    let out = tpi_run()
        .arg("--model")
        .arg(model)
        .args([
            "--prompt-ids",
            &prompt,
            "--length",
            "12",
            "--temperature",
            "0",
        ])
        .args(["--ignore-eos", "--threads", "1", "--json", "--quiet"])
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .output()
        .expect("spawn tpi-run");
    assert!(
        out.status.success(),
        "tpi-run {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The cache entry directories (`<fingerprint>-<plan>`) under `cache`.
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn replaced_weights_are_sliced_again_at_world_sizes_1_and_2() {
    for mode in [
        &["--world-size", "1", "--memory-window", "2"][..],
        &["--world-size", "2"],
    ] {
        let tmp = TempDir::new("reslice");
        let (model, cache) = (tmp.path().join("m"), tmp.path().join("cache"));
        aged_copy(MODEL, &model);
        let before = run(&model, &cache, mode);
        assert_eq!(
            ids(&before["generated_ids"]),
            ids(&reference(MODEL)["prompts"][0]["greedy"]["ids"])[..12],
            "{mode:?}: the unchanged copy follows the oracle"
        );
        assert!(
            cache.join(tpi::split::digest::DIGESTS).is_file(),
            "{mode:?}: the aged model's digest was not cached"
        );
        let first = entries(&cache);
        assert_eq!(first.len(), 1, "{first:?}");
        // Same layout, other values (the modification time moves on).
        reverse_rows(&model, "lm_head.weight");
        let after = run(&model, &cache, mode);
        let fresh = run(&model, &tmp.path().join("fresh-cache"), mode);
        assert_eq!(
            after["generated_ids"], fresh["generated_ids"],
            "{mode:?}: the old cache's output differs from a fresh cache's"
        );
        assert_ne!(
            after["generated_ids"], before["generated_ids"],
            "{mode:?}: output did not follow the new weights"
        );
        let second = entries(&cache);
        assert_eq!(second.len(), 2, "{mode:?}: no new fingerprint: {second:?}");
        // The old entry's model changed under it; prune drops it alone.
        let gone = tpi::split::cache::prune(&cache, &tpi::split::cache::PrunePolicy::default())
            .expect("prune");
        assert_eq!(
            gone.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
            first,
            "{mode:?}"
        );
        assert_eq!(
            tpi::split::cache::list(&cache).expect("list")[0].model,
            tpi::split::cache::ModelStatus::Same
        );
    }
}

fn fingerprint_of(model: &Path, cache: &Path) -> u64 {
    let ckpt = Checkpoint::open_dir(model).expect("open model");
    tpi::split::digest::fingerprint(&ckpt, cache, &mut tpi::progress::Silent).expect("fingerprint")
}

#[test]
fn worker_with_other_weights_is_refused_naming_both_fingerprints() {
    let tmp = TempDir::new("foreign");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    aged_copy(MODEL, &a);
    aged_copy(MODEL, &b);
    reverse_rows(&b, "model.layers.0.mlp.up_proj.weight");
    let (fa, fb) = (
        fingerprint_of(&a, &tmp.path().join("fp")),
        fingerprint_of(&b, &tmp.path().join("fp")),
    );
    assert_ne!(fa, fb);
    let port = free_port();
    let worker = rank_cmd(1, 2, port, &tmp.path().join("cache-1"))
        .arg("--model")
        .arg(&b)
        .args(["--join-timeout", "20"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker");
    let hub = Command::new(env!("CARGO_BIN_EXE_tpi-run"))
        .arg("--model")
        .arg(&a)
        .args(["--prompt-ids", "1,2,3", "--length", "4", "--threads", "1"])
        .args(["--world-size", "2", "--rank", "0", "--join-timeout", "20"])
        .args(["--master", &format!("127.0.0.1:{port}")])
        .arg("--cache-dir")
        .arg(tmp.path().join("cache-0"))
        .stdin(Stdio::null())
        .output()
        .expect("spawn rank 0");
    let w = worker.wait_with_output().expect("worker");
    let logs = format!(
        "{}\n{}",
        String::from_utf8_lossy(&hub.stderr),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(!hub.status.success() && !w.status.success(), "{logs}");
    let want = format!("model fingerprint: rank 0 runs {fa:016x}, rank 1 has {fb:016x}");
    assert!(logs.contains(&want), "expected `{want}` in:\n{logs}");
}

#[test]
fn first_run_peak_memory_stays_near_the_cached_run() {
    let tmp = TempDir::new("firstrss");
    let model = tmp.path().join("deep");
    // 17 layers of 16 MiB: past the size from which one rank runs from a
    // slice; the largest tensor is a 4 MiB MLP matrix (lm_head 4 MiB too).
    crate::window::deep_model(&model, 17, 2048);
    let cache = tmp.path().join("cache");
    let args = |c: &Path| -> Value {
        let out = tpi_run()
            .arg("--model")
            .arg(&model)
            .args([
                "--prompt-ids",
                "1,2,3,4",
                "--length",
                "2",
                "--temperature",
                "0",
            ])
            .args(["--ignore-eos", "--threads", "1", "--json", "--quiet"])
            .args(["--no-memory-window"])
            .arg("--cache-dir")
            .arg(c)
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let first = args(&cache);
    let cached = args(&cache);
    assert_eq!(first["generated_ids"], cached["generated_ids"]);
    let peak = |v: &Value| v["peak_rss_bytes"].as_u64().expect("peak rss");
    let (p1, p2) = (peak(&first), peak(&cached));
    let model_bytes = std::fs::metadata(model.join("model.safetensors"))
        .expect("model")
        .len();
    eprintln!(
        "model {:.0} MiB: first run {:.1} MiB, cached {:.1} MiB",
        model_bytes as f64 / 1048576.0,
        p1 as f64 / 1048576.0,
        p2 as f64 / 1048576.0
    );
    let largest = 512 * 2048 * 4;
    let bound = p2 + largest + (32 << 20);
    assert!(
        p1 <= bound,
        "first run peak {p1} > cached {p2} + largest tensor {largest} + 32 MiB \
         (the {model_bytes}-byte model stayed resident?)"
    );
}

/// `tpi-run cache list|prune ARGS --cache-dir DIR --json`: one object per line.
fn cache_cmd(cache: &Path, args: &[&str]) -> Vec<Value> {
    let out = tpi_run()
        .arg("cache")
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--json")
        .output()
        .expect("spawn tpi-run cache");
    assert!(
        out.status.success(),
        "tpi-run cache {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn cache_command_lists_entries_and_prunes_those_of_gone_models() {
    let tmp = TempDir::new("cache-cmd");
    let (keep, gone, cache) = (
        tmp.path().join("keep"),
        tmp.path().join("gone"),
        tmp.path().join("cache"),
    );
    aged_copy(MODEL, &keep);
    aged_copy(MODEL, &gone);
    reverse_rows(&gone, "model.layers.0.mlp.up_proj.weight");
    for m in [&keep, &gone] {
        run(m, &cache, &["--memory-window", "2"]);
    }
    let listed = cache_cmd(&cache, &["list"]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed
        .iter()
        .all(|e| e["model_status"] == "same" && e["bytes"].as_u64() > Some(0)));
    std::fs::remove_dir_all(&gone).expect("remove model");
    let status = |v: &[Value], m: &Path| {
        v.iter()
            .find(|e| e["model"].as_str() == Some(&m.display().to_string()))
            .map(|e| e["model_status"].as_str().unwrap_or("").to_string())
    };
    let listed = cache_cmd(&cache, &["list"]);
    assert_eq!(
        status(&listed, &gone).as_deref(),
        Some("gone"),
        "{listed:?}"
    );
    assert_eq!(
        status(&listed, &keep).as_deref(),
        Some("same"),
        "{listed:?}"
    );
    // Prune removes exactly the gone model's entry; a size cap of 0 then
    // evicts the rest.
    let removed = cache_cmd(&cache, &["prune"]);
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(status(&removed, &gone).as_deref(), Some("gone"));
    assert_eq!(entries(&cache).len(), 1);
    let removed = cache_cmd(&cache, &["prune", "--max-size", "0"]);
    assert_eq!(
        status(&removed, &keep).as_deref(),
        Some("same"),
        "{removed:?}"
    );
    assert!(entries(&cache).is_empty());
    // Foreign files in the cache directory are never touched.
    std::fs::write(cache.join("notes.txt"), "mine").expect("write");
    assert!(cache_cmd(&cache, &["prune", "--max-size", "0"]).is_empty());
    assert!(cache.join("notes.txt").exists());
}
