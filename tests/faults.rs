//! Failure and hostile-network behaviour of real `tpi-run` processes on
//! loopback: junk on the port, wrong keys, killed ranks.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn rank0(port: u16, n: usize, cache: &Path, extra: &[&str]) -> Command {
    let mut c = rank_cmd(0, n, port, cache);
    c.args(["--temperature", "0"])
        .args(extra)
        .stdout(Stdio::piped());
    c
}

fn worker(port: u16, rank: usize, n: usize, cache: &Path, extra: &[&str]) -> Command {
    let mut c = rank_cmd(rank, n, port, cache);
    c.args(extra).stdout(Stdio::null());
    c
}

/// Runs rank 0 and one worker to the end: ((code, stderr) of rank 0, of the worker).
fn run_pair(mut hub: Command, mut w: Command) -> ((Option<i32>, String), (Option<i32>, String)) {
    let hub = hub.spawn().expect("rank 0");
    let w = w.spawn().expect("worker");
    let (wc, werr, _) = finish(w, Duration::from_secs(15));
    let (hc, herr, _) = finish(hub, Duration::from_secs(15));
    ((hc, herr), (wc, werr))
}

/// Waits for a child with a limit; returns (exit code, stderr, elapsed).
fn finish(mut c: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = c.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            panic!("process still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `bytes` (then lingers briefly) to the port; errors are expected.
fn junk(port: u16, bytes: &[u8], linger: Duration) {
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
        let _ = s.write_all(bytes);
        std::thread::sleep(linger);
    }
}

#[test]
fn junk_connections_do_not_disturb_a_session() {
    let name = "stories260K";
    let r = reference(name);
    let p = &r["prompts"][1];
    let tmp = TempDir::new("junk");
    let port = free_port();
    let hub = rank0(
        port,
        2,
        &tmp.path().join("c0"),
        &[
            "--prompt-ids",
            &ids_arg(&ids(&p["ids"])),
            "--length",
            "32",
            "--ignore-eos",
            "--json",
            "--quiet",
        ],
    )
    .arg("--model")
    .arg(fixture_dir(name))
    .spawn()
    .expect("rank 0");
    std::thread::sleep(Duration::from_millis(300));
    // 200 hostile connections: random bytes, HTTP, a truncated header, an
    // oversized frame, a valid-looking header with a bad checksum, silence.
    let mut valid = [0u8; 40];
    valid[..4].copy_from_slice(b"TPI1");
    valid[4] = 1;
    valid[6] = 1;
    let payloads: Vec<Vec<u8>> = vec![
        (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"TPI1\x01\x00".to_vec(),
        {
            let mut v = valid.to_vec();
            v[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
            v
        },
        valid.to_vec(),
        Vec::new(),
    ];
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let b = payloads[i % payloads.len()].clone();
            std::thread::spawn(move || {
                junk(
                    port,
                    &b,
                    Duration::from_millis(if i % 6 == 5 { 2500 } else { 20 }),
                )
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let w = worker(port, 1, 2, &tmp.path().join("c1"), &["--quiet"])
        .spawn()
        .expect("worker");
    let out = hub.wait_with_output().expect("rank 0");
    assert!(
        out.status.success(),
        "rank 0 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ids(&v["generated_ids"]), ids(&p["greedy"]["ids"]));
    let (code, err, _) = finish(w, Duration::from_secs(10));
    assert_eq!(code, Some(0), "worker: {err}");
}

#[test]
fn wrong_secret_is_refused_on_both_sides_and_right_secret_joins() {
    let tmp = TempDir::new("secret");
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, "correct horse\n").expect("key");
    for (worker_key, ok) in [("battery staple", false), ("correct horse", true)] {
        let port = free_port();
        let mut hub = rank0(
            port,
            2,
            &tmp.path().join("c0"),
            &[
                "--prompt",
                "Once upon a time",
                "--length",
                "8",
                "--json",
                "--join-timeout",
                "4",
            ],
        );
        hub.arg("--secret-file").arg(&key_file);
        let mut w = worker(port, 1, 2, &tmp.path().join("c1"), &["--join-timeout", "4"]);
        w.env("TPI_SECRET", worker_key);
        let ((hc, herr), (wc, werr)) = run_pair(hub, w);
        if ok {
            assert_eq!(
                (hc, wc),
                (Some(0), Some(0)),
                "rank 0: {herr}\nworker: {werr}"
            );
        } else {
            assert_eq!(
                (hc, wc),
                (Some(1), Some(1)),
                "rank 0: {herr}\nworker: {werr}"
            );
            assert!(werr.contains("authentication failed"), "worker: {werr}");
            assert!(herr.contains("authentication failed"), "rank 0: {herr}");
        }
    }
}

/// Starts a long generation; returns rank 0 and the worker once rank 0 has
/// streamed its first text (so the session is mid-generation).
fn mid_generation(tmp: &TempDir) -> (Child, Child) {
    let port = free_port();
    let mut hub = rank0(
        port,
        2,
        &tmp.path().join("c0"),
        &[
            "--prompt-ids",
            "1",
            "--length",
            "500",
            "--ignore-eos",
            "--peer-timeout",
            "10",
        ],
    )
    .spawn()
    .expect("rank 0");
    let w = worker(
        port,
        1,
        2,
        &tmp.path().join("c1"),
        &["--peer-timeout", "10"],
    )
    .spawn()
    .expect("worker");
    let mut first = [0u8; 8];
    hub.stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("rank 0 streams text");
    (hub, w)
}

#[test]
fn killed_worker_makes_rank0_exit_naming_the_rank() {
    let tmp = TempDir::new("killw");
    let (hub, mut w) = mid_generation(&tmp);
    w.kill().expect("kill worker");
    let _ = w.wait();
    let (code, err, took) = finish(hub, Duration::from_secs(15));
    assert_eq!(code, Some(1), "rank 0: {err}");
    assert!(err.contains("rank 1"), "rank 0 should name rank 1: {err}");
    assert!(
        err.contains("step") && (err.contains("layer") || err.contains("lm_head")),
        "rank 0 should name step and layer (or the lm_head): {err}"
    );
    eprintln!("rank 0 exited {took:?} after the worker was killed");
    assert!(
        took < Duration::from_secs(2),
        "rank 0 took {took:?} to notice"
    );
}

#[test]
fn killed_rank0_makes_the_worker_exit() {
    let tmp = TempDir::new("kill0");
    let (mut hub, w) = mid_generation(&tmp);
    hub.kill().expect("kill rank 0");
    let _ = hub.wait();
    let (code, err, took) = finish(w, Duration::from_secs(15));
    assert_eq!(code, Some(1), "worker: {err}");
    assert!(err.contains("rank 0"), "worker should name rank 0: {err}");
    eprintln!("worker exited {took:?} after rank 0 was killed");
    assert!(
        took < Duration::from_secs(2),
        "worker took {took:?} to notice"
    );
}

#[test]
fn world_size_mismatch_is_refused_naming_both_values() {
    let tmp = TempDir::new("skew");
    let port = free_port();
    let hub = rank0(
        port,
        2,
        &tmp.path().join("c0"),
        &[
            "--prompt",
            "Once upon a time",
            "--length",
            "4",
            "--join-timeout",
            "3",
        ],
    );
    let w = worker(port, 1, 3, &tmp.path().join("c1"), &["--join-timeout", "3"]);
    let ((hc, herr), (wc, werr)) = run_pair(hub, w);
    assert_eq!(
        (hc, wc),
        (Some(1), Some(1)),
        "rank 0: {herr}\nworker: {werr}"
    );
    for err in [&werr, &herr] {
        assert!(
            err.contains("world size: rank 0 has 2, rank 1 has 3"),
            "both values named: {err}"
        );
    }
    // No slice byte reached the worker's cache.
    let cached = std::fs::read_dir(tmp.path().join("c1"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "the refused worker has a cache entry");
}

#[test]
fn worker_with_its_own_model_is_checked_and_slices_locally() {
    let tmp = TempDir::new("ownmodel");
    let prompt = [
        "--prompt",
        "Once upon a time",
        "--length",
        "8",
        "--join-timeout",
        "3",
    ];
    let session = |model: &str, cache: &str| {
        let port = free_port();
        let hub = rank0(port, 2, &tmp.path().join("c0"), &prompt);
        let mut w = worker(
            port,
            1,
            2,
            &tmp.path().join(cache),
            &["--join-timeout", "3"],
        );
        w.arg("--model").arg(fixture_dir(model));
        run_pair(hub, w)
    };
    // Another model on the worker: refused in the hello, both values named.
    let ((hc, herr), (wc, werr)) = session("llama-mha-f32", "c1");
    assert_eq!(
        (hc, wc),
        (Some(1), Some(1)),
        "rank 0: {herr}\nworker: {werr}"
    );
    for err in [&werr, &herr] {
        assert!(
            err.contains("model fingerprint: rank 0 runs") && err.contains("rank 1 has"),
            "both fingerprints named: {err}"
        );
    }
    // The same model (the bundled one, as a directory): joins and cuts its
    // slice itself, no transfer.
    let ((hc, herr), (wc, werr)) = session("stories260K", "c2");
    assert_eq!(
        (hc, wc),
        (Some(0), Some(0)),
        "rank 0: {herr}\nworker: {werr}"
    );
    assert!(
        werr.contains("cut slice locally") && !werr.contains("fetched"),
        "worker: {werr}"
    );
}
