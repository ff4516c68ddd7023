//! Memory-window overlap benchmark: windowed decode against its two
//! bounds, interleaved in one process.
//!
//! ```text
//! cargo bench --bench overlap -- SLICE [ROUNDS] [direct|mapped] [threads=T] [tokens=K]
//! ```
//!
//! Each round measures, back to back, K forward passes (one decode token
//! each) three ways on the same slice file (written by any `tpi-run` into
//! its `--cache-dir`):
//!
//! * **I/O-only**: every block a windowed rank reads (layers, then lm_head
//!   parts) streamed through the engine's `Window` (W = 2) with no compute;
//! * **windowed**: the engine's forward on the same blocks through its own
//!   W = 2 window (`SliceResident::windowed`), I/O overlapped with compute;
//! * **compute-only**: the same forward on resident weights.
//!
//! The overlap target of the memory window is windowed <= 1.1 x max(I/O-only,
//! compute-only). The disk and memory bus of a shared VM change speed from
//! one minute to the next, so the three are measured within a second of
//! each other, round after round, and the ratio is taken per round.
//!
//! Both windows read ahead W blocks when idle. Before each measurement the
//! bench waits until that read-ahead is done (no reader runs during another
//! measurement), so both start a pass with the same W blocks in their
//! slots.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tpi::engine::{forward, Par, Solo, State, Timing};
use tpi::split::reader::{Expect, SliceFile};
use tpi::weights::sliced::SliceResident;
use tpi::weights::sliced::SliceWeights;
use tpi::weights::{RankWeights, Resident};
use tpi::window::{Reads, Window, WindowOpts};
use tpi_kernels::Backend;

/// Slots of both windows.
const W: usize = 2;

struct Args {
    path: PathBuf,
    rounds: usize,
    reads: Reads,
    threads: usize,
    tokens: usize,
}

fn parse() -> Result<Args, String> {
    // `cargo bench` passes `--bench`; everything else is ours.
    let mut words = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let path = words.next().map(PathBuf::from).ok_or(
        "usage: cargo bench --bench overlap -- SLICE [ROUNDS] [direct|mapped] [threads=T] [tokens=K]",
    )?;
    let mut a = Args {
        path,
        rounds: 6,
        reads: Reads::Buffered,
        threads: 2,
        tokens: 4,
    };
    let num = |s: &str| -> Result<usize, String> {
        match s.parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{s}: expected a positive integer")),
        }
    };
    for w in words {
        if w == "direct" {
            a.reads = Reads::Direct;
        } else if w == "mapped" {
            a.reads = Reads::Mapped;
        } else if let Some(t) = w.strip_prefix("threads=") {
            a.threads = num(t)?;
        } else if let Some(k) = w.strip_prefix("tokens=") {
            a.tokens = num(k)?;
        } else {
            a.rounds = num(&w)?;
        }
    }
    Ok(a)
}

fn open(path: &Path) -> Result<SliceFile, String> {
    SliceFile::open(path, Expect::default()).map_err(|e| e.to_string())
}

/// Waits until a window has read `want` blocks (its read-ahead is done).
fn settle(label: &str, read: impl Fn() -> u64, want: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while read() < want {
        if Instant::now() > deadline {
            return Err(format!("{label}: read-ahead did not finish in 60 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// K decode forwards at positions `pos..`; ms per forward.
fn decode(
    res: &Resident,
    w: &mut dyn RankWeights,
    par: &Par,
    s: &mut State,
    pos: &mut usize,
    k: usize,
) -> Result<f64, String> {
    let mut timing = Timing::default();
    let t = Instant::now();
    for _ in 0..k {
        let token = (*pos % 100) as u32 + 1;
        forward(res, w, &mut Solo, par, s, &[token], *pos, true, &mut timing)
            .map_err(|e| e.to_string())?;
        *pos += 1;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / k as f64)
}

/// K passes over every block with no compute; ms per pass.
fn io_only(w: &mut Window, k: usize) -> Result<f64, String> {
    let t = Instant::now();
    for _ in 0..k {
        for l in 0..w.n_blocks() {
            // touch one byte per 4 KiB page, as a consumer would
            let b = w.acquire(l).map_err(|e| e.to_string())?;
            std::hint::black_box(b.iter().step_by(4096).fold(0u8, |a, &x| a ^ x));
            w.release(l).map_err(|e| e.to_string())?;
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / k as f64)
}

fn run(a: &Args) -> Result<(), String> {
    let res = open(&a.path)?.resident().map_err(|e| e.to_string())?;
    let opts = WindowOpts { reads: a.reads };
    let mut windowed =
        SliceResident::windowed(open(&a.path)?, W, opts).map_err(|e| e.to_string())?;
    let mut resident = SliceResident::load(open(&a.path)?).map_err(|e| e.to_string())?;
    let slice = open(&a.path)?;
    let (blocks, lm_parts) = slice.window_blocks();
    let bytes: u64 = blocks.iter().map(|b| b.1).sum();
    let file = std::fs::File::open(&a.path).map_err(|e| e.to_string())?;
    let mut io = Window::start(file, blocks.clone(), W, opts).map_err(|e| e.to_string())?;
    let par = Par::new(a.threads, Backend::detect());
    let seq = (a.rounds + 1) * a.tokens * 2 + 1;
    let (mut s_win, mut s_res) = (
        State::new(&res.dims, seq).map_err(|e| e.to_string())?,
        State::new(&res.dims, seq).map_err(|e| e.to_string())?,
    );
    let (mut pos_win, mut pos_res) = (0usize, 0usize);
    println!(
        "{}: {} blocks ({} lm_head parts), {:.2} GB per token, {} threads, {}, {} tokens per measurement",
        a.path.display(),
        blocks.len(),
        lm_parts.len(),
        bytes as f64 / 1e9,
        a.threads,
        match a.reads {
            Reads::Buffered => "pread through the page cache",
            Reads::Direct => "O_DIRECT",
            Reads::Mapped => "mapped from the page cache",
        },
        a.tokens
    );
    let stats = |w: &SliceResident| w.window_stats().unwrap_or_else(|| unreachable!());
    let settle_win = |w: &SliceResident| {
        let s = stats(w);
        settle("windowed", || stats(w).blocks_read, s.acquires + W as u64)
    };
    let settle_io = |w: &Window| {
        settle(
            "I/O-only",
            || w.stats().blocks_read,
            w.stats().acquires + W as u64,
        )
    };
    // warm-up: fills the page cache (buffered), faults in every buffer
    io_only(&mut io, 1)?;
    decode(&res, &mut windowed, &par, &mut s_win, &mut pos_win, 1)?;
    decode(&res, &mut resident, &par, &mut s_res, &mut pos_res, 1)?;
    println!("round  I/O-only  windowed  compute-only  windowed / max(I/O, compute)  I/O busy / windowed  windowed, not waiting for I/O");
    let mut ratios = Vec::with_capacity(a.rounds);
    for round in 1..=a.rounds {
        settle_io(&io)?;
        settle_win(&windowed)?;
        let t_io = io_only(&mut io, a.tokens)?;
        settle_io(&io)?;
        let (busy0, wait0) = (stats(&windowed).io_busy, stats(&windowed).io_wait);
        let t_win = decode(
            &res,
            &mut windowed,
            &par,
            &mut s_win,
            &mut pos_win,
            a.tokens,
        )?;
        let busy = (stats(&windowed).io_busy - busy0).as_secs_f64() * 1e3 / a.tokens as f64;
        let wait = (stats(&windowed).io_wait - wait0).as_secs_f64() * 1e3 / a.tokens as f64;
        settle_win(&windowed)?;
        let t_res = decode(
            &res,
            &mut resident,
            &par,
            &mut s_res,
            &mut pos_res,
            a.tokens,
        )?;
        let ratio = t_win / t_io.max(t_res);
        ratios.push(ratio);
        println!(
            "{round:5}  {t_io:8.1}  {t_win:8.1}  {t_res:12.1}  {ratio:28.2}x  {:18.2}x  {:8.1}",
            busy / t_win,
            t_win - wait
        );
    }
    ratios.sort_by(f64::total_cmp);
    let met = ratios.iter().filter(|&&r| r <= 1.1).count();
    println!(
        "windowed / max(I/O-only, compute-only): median {:.2}x, range {:.2}-{:.2}x; <= 1.1x in {met} of {} rounds",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
