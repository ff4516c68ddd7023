//! Failure and hostile-network behaviour of real `tpi-run` processes on
//! loopback: junk on the port, wrong keys, killed ranks.

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn rank0(port: u16, n: usize, cache: &Path, extra: &[&str]) -> Command {
    let mut c = rank_cmd(0, n, port, cache);
    c.args(["--temperature", "0"])
        .args(extra)
        .stdout(Stdio::piped());
    c
}

pub(crate) fn worker(port: u16, rank: usize, n: usize, cache: &Path, extra: &[&str]) -> Command {
    let mut c = rank_cmd(rank, n, port, cache);
    c.args(extra).stdout(Stdio::null());
    c
}

/// Runs rank 0 and one worker to the end: ((code, stderr) of rank 0, of the worker).
pub(crate) fn run_pair(
    mut hub: Command,
    mut w: Command,
) -> ((Option<i32>, String), (Option<i32>, String)) {
    let hub = hub.spawn().expect("rank 0");
    let w = w.spawn().expect("worker");
    let (wc, werr, _) = finish(w, Duration::from_secs(15));
    let (hc, herr, _) = finish(hub, Duration::from_secs(15));
    ((hc, herr), (wc, werr))
}

/// Waits for a child with a limit; returns (exit code, stderr, elapsed).
pub(crate) fn finish(mut c: Child, limit: Duration) -> (Option<i32>, String, Duration) {
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
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("process still running after {limit:?}; its stderr:\n{err}");
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

/// What a fake worker (this test process speaking the protocol through the
/// library) does at the first step.
#[derive(Clone, Copy)]
enum Fake {
    /// Sends an Error frame with its reason and leaves.
    StatesAReason,
    /// Runs every allreduce of the step, then dies instead of sending its
    /// logits.
    DiesAtLogits,
}

/// The reason [`Fake::StatesAReason`] gives.
const FAKE_REASON: &str = "forward: layer 3 block checksum mismatch (fake worker)";

/// Rank 1 of a world of 2 on `port`, as [`Fake`] says, on a thread.
fn fake_worker(port: u16, fake: Fake) -> std::thread::JoinHandle<()> {
    use tpi::engine::{Collective, Op};
    use tpi::net::{worker_join, worker_ready, Command, NetOpts, WorkerComm};
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("stories260K").join("config.json")).expect("config"),
    )
    .expect("config json");
    let dim = cfg["hidden_size"].as_u64().expect("dim") as usize;
    let n_layers = cfg["num_hidden_layers"].as_u64().expect("layers") as usize;
    std::thread::spawn(move || {
        let opts = NetOpts {
            join_timeout: Duration::from_secs(15),
            ..NetOpts::default()
        };
        let master = format!("127.0.0.1:{port}");
        let (mut link, _) = worker_join(&master, 1, 2, None, None, opts).expect("join");
        // Ready without a slice: the fake never computes.
        worker_ready(&mut link, opts.peer_timeout).expect("ready");
        let mut comm = WorkerComm::new(link, opts.peer_timeout, Duration::ZERO).expect("comm");
        let Command::Step {
            tokens,
            want_logits,
            ..
        } = comm.next_command().expect("first step")
        else {
            panic!("rank 0 stopped before the first step");
        };
        match fake {
            Fake::StatesAReason => comm.fail(FAKE_REASON),
            Fake::DiesAtLogits => {
                assert!(want_logits, "the one-token prompt wants logits");
                let mut x = vec![0.0f32; dim * tokens.len()];
                for layer in 0..n_layers {
                    for op in [Op::Attention, Op::Mlp] {
                        comm.allreduce_sum(&mut x, layer, op).expect("allreduce");
                    }
                }
                // Dropping the link closes the connection: dead at logits.
            }
        }
    })
}

/// Rank 0 (bundled stories260K, a one-token prompt) against a fake rank 1.
fn against_fake(fake: Fake, tag: &str) -> (Option<i32>, String) {
    let tmp = TempDir::new(tag);
    let port = free_port();
    let hub = rank0(
        port,
        2,
        &tmp.path().join("c0"),
        &["--prompt-ids", "1", "--length", "4", "--join-timeout", "15"],
    )
    .spawn()
    .expect("rank 0");
    let w = fake_worker(port, fake);
    let (code, err, _) = finish(hub, Duration::from_secs(20));
    w.join().expect("fake worker");
    (code, err)
}

#[test]
fn worker_reason_for_stopping_is_printed_by_rank0_naming_the_rank() {
    let (code, err) = against_fake(Fake::StatesAReason, "reason");
    assert_eq!(code, Some(1), "rank 0: {err}");
    assert!(
        err.contains("rank 1 at 127.0.0.1") && err.contains(FAKE_REASON),
        "rank 0 should print rank 1's reason: {err}"
    );
}

#[test]
fn worker_dying_at_the_logits_step_is_named_as_the_logits() {
    let (code, err) = against_fake(Fake::DiesAtLogits, "logits");
    assert_eq!(code, Some(1), "rank 0: {err}");
    assert!(
        err.contains("rank 1 at 127.0.0.1")
            && err.contains("waiting for Logits (lm_head)")
            && err.contains("connection closed"),
        "rank 0 should name the logits step: {err}"
    );
    assert!(!err.contains("layer 0 attention"), "{err}");
}

/// A tmpfs of 64 KiB, unmounted on drop.
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    /// None (with the reason printed) where mounting is not allowed.
    fn mount(at: &Path) -> Option<TinyDisk> {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TinyDisk(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a 64 KiB tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn worker_disk_full_is_reported_by_rank0_as_the_workers_disk() {
    let tmp = TempDir::new("diskfull");
    let Some(_disk) = TinyDisk::mount(&tmp.path().join("tiny")) else {
        return;
    };
    let port = free_port();
    let hub = rank0(
        port,
        2,
        &tmp.path().join("c0"),
        &["--prompt-ids", "1", "--length", "4", "--join-timeout", "10"],
    );
    let w = worker(
        port,
        1,
        2,
        &tmp.path().join("tiny"),
        &["--join-timeout", "10"],
    );
    let ((hc, herr), (wc, werr)) = run_pair(hub, w);
    assert_eq!(
        (hc, wc),
        (Some(1), Some(1)),
        "rank 0: {herr}\nworker: {werr}"
    );
    for (who, err) in [("worker", &werr), ("rank 0", &herr)] {
        assert!(
            err.contains("writing slice")
                && err.contains("rank-1-of-2.partial")
                && err.contains("No space left on device"),
            "{who} should name the file and the full disk: {err}"
        );
    }
    assert!(
        herr.contains("rank 1 at 127.0.0.1"),
        "rank 0 should name rank 1: {herr}"
    );
}

#[test]
fn key_on_one_side_only_is_named_on_both_sides() {
    let tmp = TempDir::new("onesided");
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, "correct horse\n").expect("key");
    for worker_has_key in [true, false] {
        let port = free_port();
        let args = ["--prompt-ids", "1", "--length", "4", "--join-timeout", "3"];
        let mut hub = rank0(port, 2, &tmp.path().join("c0"), &args);
        let mut w = worker(port, 1, 2, &tmp.path().join("c1"), &["--join-timeout", "3"]);
        hub.env_remove("TPI_SECRET");
        w.env_remove("TPI_SECRET");
        if worker_has_key {
            w.env("TPI_SECRET", "correct horse");
        } else {
            hub.arg("--secret-file").arg(&key_file);
        }
        let ((hc, herr), (wc, werr)) = run_pair(hub, w);
        assert_eq!(
            (hc, wc),
            (Some(1), Some(1)),
            "worker has key {worker_has_key}: rank 0: {herr}\nworker: {werr}"
        );
        let says = if worker_has_key {
            "rank 1 holds a pre-shared key but rank 0 has none"
        } else {
            "rank 0 requires a pre-shared key but rank 1 has none"
        };
        for (who, err) in [("worker", &werr), ("rank 0", &herr)] {
            assert!(
                err.contains("authentication failed")
                    && err.contains("set on one side only")
                    && err.contains(says),
                "{who} should say the key is on one side only: {err}"
            );
        }
        assert!(herr.contains("rank 1 at 127.0.0.1"), "rank 0: {herr}");
    }
}
