//! Joining under pressure, real `tpi-run` processes on loopback: a flood of
//! slow senders, workers started before a slow rank 0, a bad `--master`.

use crate::common::*;
use crate::faults::{finish, rank0, worker};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Threads of process `pid` (/proc/<pid>/status).
fn threads_of(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `n` connections to `addr` that each send one byte of a frame header
/// every 500 ms and are opened again when rank 0 closes them, until `stop`.
fn slow_flood(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut socks: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        let magic = b"TPI1";
        let mut tick = 0usize;
        while !stop.load(Ordering::Relaxed) {
            for s in &mut socks {
                if s.is_none() {
                    *s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok();
                }
                let sent = s.as_mut().map(|t| t.write(&magic[tick % 4..tick % 4 + 1]));
                if matches!(sent, Some(Err(_)) | Some(Ok(0))) {
                    *s = None;
                }
            }
            tick += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}

/// 300 slow senders cannot hold rank 0's threads: it stays within
/// MAX_PENDING join threads (+ a few of its own) and the real worker joins.
#[test]
fn slow_sender_flood_keeps_rank0_threads_bounded_and_the_worker_joins() {
    let bound = tpi::net::MAX_PENDING + 8;
    let tmp = TempDir::new("flood");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let hub = rank0(
        port,
        2,
        &tmp.path().join("c0"),
        &[
            "--prompt-ids",
            "1",
            "--length",
            "4",
            "--json",
            "--quiet",
            "--join-timeout",
            "20",
        ],
    )
    .spawn()
    .expect("rank 0");
    let pid = hub.id();
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = threads_of(pid) {
                    most.fetch_max(t, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Wait for the port, then flood it.
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "rank 0 never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let flood = slow_flood(addr, 300, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let during_flood = most.load(Ordering::Relaxed);
    let started = Instant::now();
    let w = worker(
        port,
        1,
        2,
        &tmp.path().join("c1"),
        &["--join-timeout", "20"],
    )
    .spawn()
    .expect("worker");
    let (code, err, _) = finish(hub, Duration::from_secs(25));
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = flood.join();
    let _ = sampler.join();
    let (wcode, werr, _) = finish(w, Duration::from_secs(10));
    let most = most.load(Ordering::Relaxed);
    eprintln!(
        "rank 0: at most {most} threads (bound {bound}), {during_flood} under the flood before the worker; session done {took:?} after the worker started"
    );
    assert_eq!(code, Some(0), "rank 0: {err}");
    assert_eq!(wcode, Some(0), "worker: {werr}");
    assert!(most <= bound, "rank 0 ran {most} threads, bound {bound}");
    assert!(
        during_flood >= 16,
        "the flood should have filled rank 0's pending places: {during_flood} threads"
    );
}

/// A worker started first, with a join deadline shorter than rank 0's
/// slicing (a real one: a model of 48 layers, 768 MiB of f32), joins while
/// rank 0 slices and gets the session afterwards.
#[test]
fn worker_started_before_a_slowly_slicing_rank0_joins() {
    let tmp = TempDir::new("early");
    let model = tmp.path().join("model");
    crate::window::deep_model(&model, 48, 1000);
    let join_timeout = Duration::from_secs(1);
    let port = free_port();
    let w = worker(
        port,
        1,
        2,
        &tmp.path().join("c1"),
        &["--join-timeout", &join_timeout.as_secs_f64().to_string()],
    )
    .spawn()
    .expect("worker");
    std::thread::sleep(Duration::from_millis(100));
    let mut hub = rank0(
        port,
        2,
        &tmp.path().join("c0"),
        &["--prompt-ids", "1", "--length", "4", "--join-timeout", "30"],
    );
    let hub = hub.arg("--model").arg(&model).spawn().expect("rank 0");
    let (code, err, _) = finish(hub, Duration::from_secs(60));
    // The worker ends when rank 0 does; the limit only bounds a hang (on a
    // machine shared with other builds it may wait its turn for a core).
    let (wcode, werr, _) = finish(w, Duration::from_secs(30));
    assert_eq!(code, Some(0), "rank 0: {err}");
    assert_eq!(wcode, Some(0), "worker: {werr}");
    // The test means something only if slicing outlasted the worker's deadline.
    let sliced_ms: f64 = err
        .lines()
        .find_map(|l| l.split("slices ready in").nth(1))
        .and_then(|t| t.rsplit('(').next())
        .and_then(|t| t.trim_end_matches(" ms)").trim().parse().ok())
        .unwrap_or_else(|| panic!("no slicing time in rank 0's output: {err}"));
    assert!(
        sliced_ms > join_timeout.as_secs_f64() * 1e3,
        "rank 0 sliced in {sliced_ms} ms, within the worker's join deadline"
    );
}

/// A bad --master fails in well under a second, before any slicing,
/// naming the flag and its value.
#[test]
fn bad_master_fails_at_once_naming_the_flag() {
    let tmp = TempDir::new("master");
    for (rank, master) in [
        (0, "127.0.0.1:99999"),
        (0, "192.0.2.1:5000"),
        (1, "127.0.0.1:99999"),
        (1, "no-port-here"),
    ] {
        let cache = tmp.path().join(format!("c{rank}"));
        let mut c = tpi_run();
        c.args(["--rank", &rank.to_string(), "--world-size", "2"])
            .args(["--master", master])
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--prompt-ids", "1", "--length", "4", "--join-timeout", "10"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let t0 = Instant::now();
        let (code, err, _) = finish(c.spawn().expect("tpi-run"), Duration::from_secs(15));
        let took = t0.elapsed();
        assert_eq!(code, Some(1), "rank {rank} --master {master}: {err}");
        assert!(
            err.contains(&format!("--master {master}")),
            "rank {rank} should name the flag and value: {err}"
        );
        assert!(
            took < Duration::from_secs(3),
            "rank {rank} --master {master} took {took:?}"
        );
        let sliced = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
        assert_eq!(sliced, 0, "rank {rank} wrote to its cache before failing");
    }
}
