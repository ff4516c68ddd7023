//! Memory-window I/O-only benchmark (`cargo bench --bench window -- SLICE [PASSES]`).
//!
//! Streams every block a windowed rank reads (the layer blocks, then the
//! lm_head parts: `SliceFile::window_blocks`) through the engine's own
//! window (the I/O thread, the ring, W = 2 slots) with no compute: the
//! consumer acquires and releases each block as soon as it arrives. One pass
//! is what one generated token reads, so ms/pass is the
//! "I/O-only" time the windowed decode is compared with (`benches/e2e.sh`
//! runs both in the same minutes). Buffered reads (page cache warm after the
//! first pass) and `O_DIRECT` (cold, from the disk) are both measured.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tpi::slice::{Expect, SliceFile};
use tpi::window::{Window, WindowOpts};

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(path) = args.first().map(PathBuf::from) else {
        eprintln!("usage: cargo bench --bench window -- SLICE_FILE [PASSES]");
        eprintln!("(a slice file is written by any tpi-run into its --cache-dir)");
        return ExitCode::from(2);
    };
    let passes: usize = match args.get(1).map(|s| s.parse()) {
        None => 4,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("PASSES must be a positive integer");
            return ExitCode::from(2);
        }
    };
    let slice = match SliceFile::open(&path, Expect::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (blocks, lm_parts) = slice.window_blocks();
    let bytes: u64 = blocks.iter().map(|b| b.1).sum();
    println!(
        "{}: {} blocks ({} lm_head parts), {:.2} GB per pass",
        path.display(),
        blocks.len(),
        lm_parts.len(),
        bytes as f64 / 1e9
    );
    for (label, direct) in [("buffered", false), ("O_DIRECT", true)] {
        let opts = WindowOpts { direct };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        let mut w = match Window::start(file, blocks.clone(), 2, opts) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let mut ms = Vec::with_capacity(passes);
        // pass 0 warms the page cache (buffered) and the slots; not counted
        for pass in 0..=passes {
            let t = Instant::now();
            for l in 0..blocks.len() {
                let sum = match w.acquire(l) {
                    // touch one byte per 4 KiB page, as a consumer would
                    Ok(b) => b.iter().step_by(4096).fold(0u8, |a, &x| a ^ x),
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                std::hint::black_box(sum);
                if let Err(e) = w.release(l) {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
            if pass > 0 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let s = w.stats();
        ms.sort_by(f64::total_cmp);
        let median = ms[ms.len() / 2];
        println!(
            "I/O only, W=2, {label:8} (O_DIRECT in use: {}): ms/pass min {:.1} median {:.1} max {:.1} = {:.2} GB/s at the median",
            s.direct,
            ms[0],
            median,
            ms[ms.len() - 1],
            bytes as f64 / 1e6 / median
        );
    }
    ExitCode::SUCCESS
}
