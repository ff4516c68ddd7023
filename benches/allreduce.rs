//! Allreduce benchmark (`cargo bench --bench allreduce`, std::time only).
//!
//! 1. The star allreduce of the library (`HubComm` / `WorkerComm` through the
//!    real `HubListener::join` / `worker_join` handshake, one thread per rank, loopback
//!    TCP) for 2, 4, 8 ranks, next to a ping-pong round trip of the same
//!    payload over loopback TCP (TCP_NODELAY) with the same frame codec,
//!    measured in the same run, each with blocking reads and with the default
//!    yield-spin-then-block wait. Both are cycle times: one sample is the time
//!    between the starts of consecutive operations on the hub / pinger, the
//!    ranks running back to back in lockstep.
//! 2. Waiting strategy: the same star on raw `TcpStream`s and the same codec,
//!    with blocking reads vs spin-then-block (non-blocking reads for a bounded
//!    time, then one blocking read with the deadline), for 2, 4 and 8 ranks.
//!    Strategies are interleaved over rounds (the machine is shared); "CPU" is
//!    the CPU time of all ranks per op, "cores" CPU time over wall time.
//! 3. Emulated links: star vs ring (reduce-scatter + all-gather) over
//!    in-process channels whose messages are delivered a fixed latency after
//!    they leave the sender (the sender is not blocked), optionally with a
//!    per-rank NIC of limited bandwidth (egress and ingress serialised).
//!
//! 4. Wire dtypes: the library star of part 1 with `--wire-dtype` f32, f16
//!    and q8_0 (rounds interleaved), TinyLlama's dim 2048 for one token and
//!    a 64-token prefill step, next to the codec alone (encode + decode of
//!    one message on one thread). On loopback the bytes are nearly free, so
//!    this is the codec's price; `benches/wire.sh` measures the gain on a
//!    rate-limited link.
//!
//! Reported: p50 and p90 over many iterations (the machine is shared and noisy).

use std::hint::black_box;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use tpi::engine::{Collective, Op};
use tpi::net::frame::{recv_f32s_into, send_f32s, Header, Kind, FLAG_STOP, MAX_PAYLOAD};
use tpi::net::wire::{decode, encode};
use tpi::net::{
    worker_join, worker_ready, Command, HubComm, HubListener, NetOpts, SessionId, WireDtype,
    WorkerComm,
};

const PAYLOADS_KIB: [usize; 5] = [1, 4, 8, 16, 64];
const RANKS: [usize; 3] = [2, 4, 8];
/// Wall time per measured configuration (after warm-up).
const BUDGET: Duration = Duration::from_millis(300);
const WARMUP: usize = 100;
const MIN_ITERS: usize = 200;
const MAX_ITERS: usize = 20_000;

// ------------------------------------------------------------------ helpers

struct Stats {
    p50: f64,
    p90: f64,
    n: usize,
}

/// p50/p90 of samples (sorted in place).
fn pct(d: &mut [f64]) -> Stats {
    d.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize];
    Stats {
        p50: at(0.5),
        p90: at(0.9),
        n: d.len(),
    }
}

/// p50/p90 in microseconds of consecutive differences of `starts`.
fn cycle_stats(starts: &[Instant]) -> Stats {
    let mut d: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6)
        .collect();
    pct(&mut d)
}

/// CPU time of all live threads of this process (ns resolution), the sum of
/// the first field of /proc/self/task/*/schedstat.
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let s = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn fill(x: &mut [f32], v: f32) {
    x.iter_mut().for_each(|a| *a = v);
}

/// Every rank contributes rank + 1, so the sum of n ranks is n(n+1)/2
/// (exactly on the f32 wire, within 1% on the others).
fn check(x: &[f32], n: usize, what: &str, wire: WireDtype) {
    let want = (n * (n + 1) / 2) as f32;
    let tol = if wire == WireDtype::F32 {
        0.0
    } else {
        0.01 * want
    };
    for v in [x.first(), x.last()] {
        if !v.is_some_and(|v| (v - want).abs() <= tol) {
            panic!("{what}: wrong sum {v:?}, want {want}");
        }
    }
}

fn boxed_buf() -> Box<[u8; MAX_PAYLOAD]> {
    vec![0u8; MAX_PAYLOAD]
        .into_boxed_slice()
        .try_into()
        .unwrap()
}

fn loopback_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    for s in [&a, &b] {
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (a, b)
}

// ------------------------------------------- 1. library star + ping-pong RTT

/// Worker loop: each Step carries the payload length (token) and the
/// iteration count (pos).
fn lib_worker(mut w: WorkerComm, rank: usize, n: usize) {
    let wire = w.link.wire();
    loop {
        match w.next_command().expect("worker: next command") {
            Command::Step { tokens, pos, .. } => {
                let mut x = vec![0f32; tokens[0] as usize];
                for i in 0..pos {
                    fill(&mut x, (rank + 1) as f32);
                    let op = if i % 2 == 0 { Op::Attention } else { Op::Mlp };
                    w.allreduce_sum(&mut x, i / 2, op)
                        .expect("worker allreduce");
                    check(&x, n, "worker", wire);
                }
            }
            Command::Stop => return,
        }
    }
}

struct LibStar {
    hub: HubComm,
    workers: Vec<thread::JoinHandle<()>>,
    n: usize,
}

impl LibStar {
    fn start(n: usize, empty_slice: &Path, spin: Duration, wire: WireDtype) -> LibStar {
        let opts = NetOpts {
            spin,
            wire: Some(wire),
            ..NetOpts::default()
        };
        let listener = HubListener::open(
            "listen",
            "127.0.0.1:0",
            n,
            None,
            opts,
            std::sync::Arc::new(tpi::progress::Silent),
        )
        .expect("listen");
        let addr = listener.local_addr().to_string();
        let workers = (1..n)
            .map(|r| {
                let addr = addr.clone();
                thread::spawn(move || {
                    let (mut link, _) =
                        worker_join(&addr, r, n, None, None, opts).expect("worker_join");
                    worker_ready(&mut link, opts.peer_timeout).expect("worker_ready");
                    lib_worker(
                        WorkerComm::new(link, opts.peer_timeout, opts.spin).expect("worker comm"),
                        r,
                        n,
                    );
                })
            })
            .collect();
        let id = SessionId {
            world_size: n,
            fingerprint: 0,
            plan_hash: 0,
        };
        // join opens every slice file before serving; never requested here.
        let links = listener
            .join(id, vec![empty_slice.to_path_buf(); n])
            .expect("join");
        let hub = HubComm::new(links, vec![0..0; n], opts.spin).expect("hub comm");
        LibStar { hub, workers, n }
    }

    /// One step of `iters` allreduces of `len` floats; returns the start
    /// instants of every op plus the end.
    fn run(&mut self, len: usize, iters: usize) -> Vec<Instant> {
        let mut x = vec![0f32; len];
        self.hub.begin_step(&[len as u32], iters, false).unwrap();
        let mut t = Vec::with_capacity(iters + 1);
        for i in 0..iters {
            t.push(Instant::now());
            fill(&mut x, 1.0);
            let op = if i % 2 == 0 { Op::Attention } else { Op::Mlp };
            self.hub.allreduce_sum(&mut x, i / 2, op).unwrap();
            check(&x, self.n, "hub", self.hub.wire());
        }
        t.push(Instant::now());
        t
    }

    fn measure(&mut self, len: usize) -> Stats {
        let warm = cycle_stats(&self.run(len, WARMUP));
        let iters = ((BUDGET.as_secs_f64() * 1e6 / warm.p50) as usize).clamp(MIN_ITERS, MAX_ITERS);
        cycle_stats(&self.run(len, iters))
    }

    fn stop(mut self) {
        self.hub.stop();
        for w in self.workers {
            w.join().unwrap();
        }
    }
}

/// Ping-pong of `len` floats with the frame codec and a waiting strategy;
/// the echo side stops when a frame carries FLAG_STOP.
fn rtt(len: usize, wait: Wait) -> Stats {
    let (a, b) = loopback_pair();
    let mut a = WaitStream::new(a, wait);
    let echo = thread::spawn(move || {
        let mut b = WaitStream::new(b, wait);
        let mut buf = boxed_buf();
        let mut x = vec![0f32; len];
        loop {
            let h = recv_f32s_into(&mut b, Kind::Partial, 1, &mut x, &mut buf).unwrap();
            let mut r = Header::new(Kind::Reduced, 0, 1, h.seq);
            r.flags = h.flags;
            send_f32s(&mut b, &r, &x).unwrap();
            if h.stop() {
                return;
            }
        }
    });
    let mut buf = boxed_buf();
    let mut x = vec![1f32; len];
    let mut t = Vec::new();
    let start = Instant::now();
    let mut i = 0usize;
    loop {
        let last = i >= WARMUP + MAX_ITERS
            || (i >= WARMUP + MIN_ITERS && start.elapsed() > BUDGET + BUDGET / 3);
        if i >= WARMUP {
            t.push(Instant::now());
        }
        let mut h = Header::new(Kind::Partial, 1, 1, i as u32);
        if last {
            h.flags = FLAG_STOP;
        }
        send_f32s(&mut a, &h, &x).unwrap();
        recv_f32s_into(&mut a, Kind::Reduced, 1, &mut x, &mut buf).unwrap();
        black_box(&x);
        i += 1;
        if last {
            break;
        }
    }
    t.push(Instant::now());
    echo.join().unwrap();
    cycle_stats(&t)
}

fn part1() {
    let empty =
        std::env::temp_dir().join(format!("tpi-bench-allreduce-{}.slice", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let spin = NetOpts::default().spin;
    println!(
        "1. Star allreduce (HubComm/WorkerComm via HubListener/worker_join, one thread per rank) vs"
    );
    println!(
        "   ping-pong RTT (2 threads, same codec), loopback TCP_NODELAY; cycle time per op, µs;"
    );
    println!(
        "   \"block\" = blocking reads, \"spin\" = the default: yield-spin {} µs, then block.",
        spin.as_micros()
    );
    println!("   RTT is measured with the same waiting strategy; \"/ block RTT\" divides by the");
    println!("   blocking RTT of the same payload.");
    println!();
    println!(
        "{:>5} {:>8} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11}",
        "ranks",
        "payload",
        "wait",
        "iters",
        "AR p50",
        "AR p90",
        "RTT p50",
        "RTT p90",
        "ratio p50",
        "/ block RTT"
    );
    for &n in &RANKS {
        let mut block_rtt = Vec::new();
        for (name, s) in [("block", Duration::ZERO), ("spin", spin)] {
            let wait = if s.is_zero() {
                Wait::Block
            } else {
                Wait::SpinYield(s)
            };
            let mut star = LibStar::start(n, &empty, s, WireDtype::F32);
            for (k, &kib) in PAYLOADS_KIB.iter().enumerate() {
                let len = kib * 1024 / 4;
                let ar = star.measure(len);
                let rt = rtt(len, wait);
                if s.is_zero() {
                    block_rtt.push(rt.p50);
                }
                println!(
                    "{:>5} {:>5} KiB {:>5} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.2}x {:>10.2}x",
                    n,
                    kib,
                    name,
                    ar.n,
                    ar.p50,
                    ar.p90,
                    rt.p50,
                    rt.p90,
                    ar.p50 / rt.p50,
                    ar.p50 / block_rtt[k]
                );
            }
            star.stop();
        }
    }
    let _ = std::fs::remove_file(&empty);
    println!();
}

// -------------------------------------------------- 2. waiting strategies

#[derive(Clone, Copy)]
enum Wait {
    Block,
    /// Non-blocking reads with `spin_loop` for up to this long, then block.
    Spin(Duration),
    /// Same, but `yield_now` between attempts.
    SpinYield(Duration),
}

impl Wait {
    fn name(&self) -> String {
        match self {
            Wait::Block => "blocking".into(),
            Wait::Spin(d) => format!("spin {} µs", d.as_micros()),
            Wait::SpinYield(d) => format!("spin+yield {} µs", d.as_micros()),
        }
    }
}

/// A TCP stream read with a waiting strategy. In spin modes the socket is
/// non-blocking; the fallback switches it to blocking for one read (the
/// read timeout is the deadline), then back.
struct WaitStream {
    s: TcpStream,
    wait: Wait,
}

impl WaitStream {
    fn new(s: TcpStream, wait: Wait) -> WaitStream {
        s.set_nonblocking(!matches!(wait, Wait::Block)).unwrap();
        WaitStream { s, wait }
    }

    fn blocking<T>(&self, f: impl FnOnce(&TcpStream) -> io::Result<T>) -> io::Result<T> {
        self.s.set_nonblocking(false)?;
        let r = f(&self.s);
        self.s.set_nonblocking(true)?;
        r
    }
}

impl Read for WaitStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (limit, yield_) = match self.wait {
            Wait::Block => return (&self.s).read(buf),
            Wait::Spin(d) => (d, false),
            Wait::SpinYield(d) => (d, true),
        };
        let mut since: Option<Instant> = None;
        loop {
            match (&self.s).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let t0 = *since.get_or_insert_with(Instant::now);
                    if t0.elapsed() < limit {
                        if yield_ {
                            thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                        continue;
                    }
                    return self.blocking(|mut s| s.read(buf));
                }
                r => return r,
            }
        }
    }
}

impl Write for WaitStream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match (&self.s).write(b) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.blocking(|mut s| s.write(b)),
            r => r,
        }
    }
    fn write_vectored(&mut self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        match (&self.s).write_vectored(b) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.blocking(|mut s| s.write_vectored(b))
            }
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Result of one raw-star run: cycle times (µs), CPU time and wall time of
/// the measured iterations.
struct RawRun {
    cycles: Vec<f64>,
    cpu: Duration,
    wall: Duration,
}

/// Raw star, hub in this thread; runs `warmup` ops, then measures until
/// `budget` (at least `min_iters` ops); the last Reduced carries FLAG_STOP.
fn raw_star(n: usize, len: usize, wait: Wait, budget: Duration, min_iters: usize) -> RawRun {
    let warmup = 30;
    let mut links = Vec::new();
    let mut workers = Vec::new();
    for r in 1..n {
        let (hub_side, w_side) = loopback_pair();
        links.push(WaitStream::new(hub_side, wait));
        workers.push(thread::spawn(move || {
            let mut s = WaitStream::new(w_side, wait);
            let mut buf = boxed_buf();
            let mut x = vec![0f32; len];
            for i in 0u32.. {
                fill(&mut x, (r + 1) as f32);
                send_f32s(&mut s, &Header::new(Kind::Partial, r as u16, 1, i), &x).unwrap();
                let h = recv_f32s_into(&mut s, Kind::Reduced, 1, &mut x, &mut buf).unwrap();
                check(&x, n, "raw worker", WireDtype::F32);
                if h.stop() {
                    return;
                }
            }
        }));
    }
    let mut buf = boxed_buf();
    let mut x = vec![0f32; len];
    let mut scratch = vec![0f32; len];
    let mut t = Vec::new();
    let mut i = 0usize;
    let mut cpu0 = Duration::ZERO;
    let mut wall0 = Instant::now();
    let mut cpu = Duration::ZERO;
    loop {
        if i == warmup {
            cpu0 = cpu_time();
            wall0 = Instant::now();
        }
        if i >= warmup {
            t.push(Instant::now());
        }
        fill(&mut x, 1.0);
        for l in &mut links {
            recv_f32s_into(l, Kind::Partial, 1, &mut scratch, &mut buf).unwrap();
            for (a, b) in x.iter_mut().zip(&scratch) {
                *a += b;
            }
        }
        let last = i >= warmup + MAX_ITERS || (i >= warmup + min_iters && wall0.elapsed() > budget);
        let mut h = Header::new(Kind::Reduced, 0, 1, i as u32);
        if last {
            // Before the workers can exit (their CPU time leaves with them).
            cpu = cpu_time() - cpu0;
            h.flags = FLAG_STOP;
        }
        for l in &mut links {
            send_f32s(l, &h, &x).unwrap();
        }
        check(&x, n, "raw hub", WireDtype::F32);
        i += 1;
        if last {
            break;
        }
    }
    t.push(Instant::now());
    let wall = wall0.elapsed();
    for w in workers {
        w.join().unwrap();
    }
    RawRun {
        cycles: t
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6)
            .collect(),
        cpu,
        wall,
    }
}

fn part2() {
    let waits = [
        Wait::Block,
        Wait::Spin(Duration::from_micros(20)),
        Wait::Spin(Duration::from_micros(100)),
        Wait::Spin(Duration::from_micros(1000)),
        Wait::SpinYield(Duration::from_micros(20)),
        Wait::SpinYield(Duration::from_micros(100)),
    ];
    const ROUNDS: usize = 3;
    println!("2. Waiting strategy, raw star (same codec) on loopback; cycle time per op, µs;");
    println!(
        "   strategies interleaved over {ROUNDS} rounds, samples pooled; CPU = CPU time of all"
    );
    println!("   ranks per op; cores = CPU time / wall time (machine: 2 vCPUs, shared)");
    println!();
    println!(
        "{:>5} {:>8} {:>18} {:>6} {:>8} {:>8} {:>10} {:>6}",
        "ranks", "payload", "wait", "iters", "p50", "p90", "CPU µs/op", "cores"
    );
    for &n in &[2usize, 4, 8] {
        for &kib in &[4usize, 16, 64] {
            let mut runs: Vec<RawRun> = waits
                .iter()
                .map(|_| RawRun {
                    cycles: Vec::new(),
                    cpu: Duration::ZERO,
                    wall: Duration::ZERO,
                })
                .collect();
            for _ in 0..ROUNDS {
                for (w, acc) in waits.iter().zip(&mut runs) {
                    let r = raw_star(n, kib * 1024 / 4, *w, BUDGET / 3, 50);
                    acc.cycles.extend(r.cycles);
                    acc.cpu += r.cpu;
                    acc.wall += r.wall;
                }
            }
            for (w, r) in waits.iter().zip(&mut runs) {
                let s = pct(&mut r.cycles);
                println!(
                    "{:>5} {:>5} KiB {:>18} {:>6} {:>8.1} {:>8.1} {:>10.1} {:>6.2}",
                    n,
                    kib,
                    w.name(),
                    s.n,
                    s.p50,
                    s.p90,
                    r.cpu.as_secs_f64() * 1e6 / s.n as f64,
                    r.cpu.as_secs_f64() / r.wall.as_secs_f64()
                );
            }
        }
    }
    println!();
}

// ------------------------------------------------- 3. emulated link latency

/// One message on an emulated link: usable by the receiver at `ready`.
struct Msg {
    ready: Instant,
    data: Vec<f32>,
}

/// A rank's network interface: fixed one-way latency, optional bandwidth
/// (bytes/s) with egress and ingress each serialised.
struct Nic {
    latency: Duration,
    bandwidth: Option<f64>,
    egress_free: Instant,
    ingress_free: Instant,
}

impl Nic {
    fn new(latency: Duration, bandwidth: Option<f64>) -> Nic {
        let now = Instant::now();
        Nic {
            latency,
            bandwidth,
            egress_free: now,
            ingress_free: now,
        }
    }

    fn wire(&self, floats: usize) -> Duration {
        self.bandwidth.map_or(Duration::ZERO, |b| {
            Duration::from_secs_f64((floats * 4 + 40) as f64 / b)
        })
    }

    fn send(&mut self, tx: &Sender<Msg>, data: &[f32]) {
        let done = self.egress_free.max(Instant::now()) + self.wire(data.len());
        self.egress_free = done;
        tx.send(Msg {
            ready: done + self.latency,
            data: data.to_vec(),
        })
        .unwrap();
    }

    fn recv(&mut self, rx: &Receiver<Msg>) -> Vec<f32> {
        let m = rx.recv().unwrap();
        let at = m.ready.max(self.ingress_free + self.wire(m.data.len()));
        self.ingress_free = at;
        let now = Instant::now();
        if at > now {
            thread::sleep(at - now);
        }
        m.data
    }
}

const EMU_ITERS: usize = 30;
const EMU_WARMUP: usize = 3;

fn emu_star(n: usize, len: usize, lat: Duration, bw: Option<f64>) -> Stats {
    // up[r-1]: worker r -> hub; down[r-1]: hub -> worker r.
    let mut up_tx = Vec::new();
    let mut up_rx = Vec::new();
    let mut down_tx = Vec::new();
    let mut down_rx = Vec::new();
    for _ in 1..n {
        let (a, b) = channel();
        up_tx.push(Some(a));
        up_rx.push(b);
        let (a, b) = channel();
        down_tx.push(a);
        down_rx.push(Some(b));
    }
    let mut ws = Vec::new();
    for r in 1..n {
        let tx = up_tx[r - 1].take().unwrap();
        let rx = down_rx[r - 1].take().unwrap();
        ws.push(thread::spawn(move || {
            let mut nic = Nic::new(lat, bw);
            let mut x = vec![0f32; len];
            for _ in 0..EMU_WARMUP + EMU_ITERS {
                fill(&mut x, (r + 1) as f32);
                nic.send(&tx, &x);
                x = nic.recv(&rx);
                check(&x, n, "emu star worker", WireDtype::F32);
            }
        }));
    }
    let mut nic = Nic::new(lat, bw);
    let mut x = vec![0f32; len];
    let mut t = Vec::new();
    for i in 0..EMU_WARMUP + EMU_ITERS {
        if i >= EMU_WARMUP {
            t.push(Instant::now());
        }
        fill(&mut x, 1.0);
        for rx in &up_rx {
            let p = nic.recv(rx);
            for (a, b) in x.iter_mut().zip(&p) {
                *a += b;
            }
        }
        for tx in &down_tx {
            nic.send(tx, &x);
        }
        check(&x, n, "emu star hub", WireDtype::F32);
    }
    t.push(Instant::now());
    for w in ws {
        w.join().unwrap();
    }
    cycle_stats(&t)
}

fn emu_ring(n: usize, len: usize, lat: Duration, bw: Option<f64>) -> Stats {
    // link r: rank r -> rank (r+1) % n.
    let mut txs = Vec::new();
    let mut rxs: Vec<Option<Receiver<Msg>>> = Vec::new();
    for _ in 0..n {
        let (a, b) = channel();
        txs.push(Some(a));
        rxs.push(Some(b));
    }
    let chunk = move |c: usize| c * len / n..(c + 1) * len / n;
    let mut hs = Vec::new();
    for r in 0..n {
        let tx = txs[r].take().unwrap();
        let rx = rxs[(r + n - 1) % n].take().unwrap();
        hs.push(thread::spawn(move || {
            let mut nic = Nic::new(lat, bw);
            let mut x = vec![0f32; len];
            let mut t = Vec::new();
            for i in 0..EMU_WARMUP + EMU_ITERS {
                if i >= EMU_WARMUP {
                    t.push(Instant::now());
                }
                fill(&mut x, (r + 1) as f32);
                // reduce-scatter: after n-1 steps rank r owns chunk r+1.
                for s in 0..n - 1 {
                    nic.send(&tx, &x[chunk((r + n - s) % n)]);
                    let got = nic.recv(&rx);
                    for (a, b) in x[chunk((r + 2 * n - s - 1) % n)].iter_mut().zip(&got) {
                        *a += b;
                    }
                }
                // all-gather.
                for s in 0..n - 1 {
                    nic.send(&tx, &x[chunk((r + 1 + n - s) % n)]);
                    let got = nic.recv(&rx);
                    x[chunk((r + n - s) % n)].copy_from_slice(&got);
                }
                let want = (n * (n + 1) / 2) as f32;
                assert!(x.iter().all(|&v| v == want), "ring sum wrong on rank {r}");
            }
            t.push(Instant::now());
            t
        }));
    }
    let mut first = None;
    for h in hs {
        let t = h.join().unwrap();
        first.get_or_insert(t);
    }
    cycle_stats(&first.unwrap())
}

fn part3() {
    let len = 16 * 1024 / 4;
    let lat = Duration::from_millis(2);
    println!(
        "3. Emulated links (in-process channels; a message is usable 2 ms one-way latency after it"
    );
    println!("   leaves the sender), 16 KiB payload, cycle time per allreduce on rank 0, ms;");
    println!("   expected: star 2 lat (+ N wire times with a NIC cap), ring 2(N-1) (lat + wire time of 1/N)");
    println!();
    println!(
        "{:>5} {:>22} {:>5} {:>8} {:>8} {:>9}",
        "ranks", "link", "algo", "p50", "p90", "expected"
    );
    // 100 Mbit/s Ethernet.
    let links: [(&str, Option<f64>); 2] = [("2 ms", None), ("2 ms + 100 Mbit/s NIC", Some(12.5e6))];
    for &n in &[4usize, 8] {
        for (name, bw) in links {
            let s = emu_star(n, len, lat, bw);
            let r = emu_ring(n, len, lat, bw);
            let wire = |bytes: usize| bw.map_or(0.0, |b| (bytes + 40) as f64 / b * 1e3);
            // star: the hub's n-1 sends leave one wire time apart and the
            // workers answer at once, so the last partial lands after n wire times.
            let star_exp = 4.0 + n as f64 * wire(len * 4);
            let ring_exp = 2.0 * (n - 1) as f64 * (2.0 + wire(len * 4 / n));
            println!(
                "{:>5} {:>22} {:>5} {:>8.2} {:>8.2} {:>9.2}",
                n,
                name,
                "star",
                s.p50 / 1e3,
                s.p90 / 1e3,
                star_exp
            );
            println!(
                "{:>5} {:>22} {:>5} {:>8.2} {:>8.2} {:>9.2}",
                n,
                name,
                "ring",
                r.p50 / 1e3,
                r.p90 / 1e3,
                ring_exp
            );
        }
    }
    println!();
}

// ------------------------------------------------------ 4. wire dtypes

/// p50/p90 µs of encode + decode of one message of `len` values.
fn codec(wire: WireDtype, len: usize) -> Stats {
    let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
    let (mut bytes, mut y) = (Vec::new(), vec![0f32; len]);
    let mut d = Vec::new();
    let start = Instant::now();
    while d.len() < MIN_ITERS || (start.elapsed() < BUDGET / 3 && d.len() < MAX_ITERS) {
        let t = Instant::now();
        encode(wire, black_box(&x), &mut bytes).unwrap();
        decode(wire, &bytes, &mut y).unwrap();
        black_box(&y);
        d.push(t.elapsed().as_secs_f64() * 1e6);
    }
    pct(&mut d)
}

fn part4() {
    const DIM: usize = 2048;
    const ROUNDS: usize = 3;
    let empty = std::env::temp_dir().join(format!("tpi-bench-wire-{}.slice", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let spin = NetOpts::default().spin;
    println!(
        "4. Wire dtypes: library star (spin wait) over loopback, cycle time per allreduce, µs,"
    );
    println!(
        "   p50 of {ROUNDS} interleaved rounds (range); codec = encode + decode of one message,"
    );
    println!("   one thread, p50 µs; dim {DIM}, 1 token (8 KiB of f32) and 64 tokens (512 KiB)");
    println!();
    println!(
        "{:>5} {:>6} {:>5} {:>22} {:>8} {:>10}",
        "ranks", "tokens", "wire", "AR p50 (range)", "vs f32", "codec p50"
    );
    for n in [2, 4] {
        for tokens in [1, 64] {
            let len = DIM * tokens;
            // rounds[r][k]: wire k in round r; the order rotates each round.
            let mut rounds = [[0.0f64; 3]; ROUNDS];
            for (r, row) in rounds.iter_mut().enumerate() {
                for k in (0..3).map(|i| (i + r) % 3) {
                    let mut star = LibStar::start(n, &empty, spin, WireDtype::ALL[k]);
                    row[k] = star.measure(len).p50;
                    star.stop();
                }
            }
            let med = |k: usize| {
                let mut s = rounds.map(|row| row[k]);
                s.sort_by(|a, b| a.total_cmp(b));
                s[ROUNDS / 2]
            };
            for (k, wire) in WireDtype::ALL.into_iter().enumerate() {
                let lo = rounds.iter().map(|row| row[k]).fold(f64::MAX, f64::min);
                let hi = rounds.iter().map(|row| row[k]).fold(0.0, f64::max);
                println!(
                    "{:>5} {:>6} {:>5} {:>8.1} ({:>6.1}-{:>6.1}) {:>7.2}x {:>10.1}",
                    n,
                    tokens,
                    wire.name(),
                    med(k),
                    lo,
                    hi,
                    med(k) / med(0),
                    codec(wire, len).p50
                );
            }
        }
    }
    let _ = std::fs::remove_file(&empty);
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; an optional filter picks parts: "1" to "4".
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    let t0 = Instant::now();
    if want("1") {
        part1();
    }
    if want("2") {
        part2();
    }
    if want("3") {
        part3();
    }
    if want("4") {
        part4();
    }
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
}
