//! GEMV bandwidth benchmark (`cargo bench --bench gemv`, std::time only).
//!
//! For f32/f16/bf16 weights of the shapes of a ~1B model's projections,
//! measures `y = W x` per backend with 1 and 2 threads (rows split into
//! contiguous blocks, one `std::thread::scope` per measurement, each thread
//! running all iterations over its rows), next to the "best memory read loop"
//! (`Backend::read_sum`: widest loads, 8 accumulators) streaming the same bytes
//! with the same threads, measured in the same run. The matrices rotate
//! through a set of at least `ROTATION_BYTES` (6x the 32 MB L3 of a Zen 4) so
//! every gemv streams its weights from DRAM.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tpi_kernels::{bf16, f16, Backend, Weights};

const SHAPES: [(usize, usize); 3] = [(4096, 4096), (5632, 2048), (2048, 5632)];
const ROTATION_BYTES: usize = 192 << 20;
const TARGET: Duration = Duration::from_millis(250);
const THREADS: [usize; 2] = [1, 2];

/// The rotation set of one dtype: `count` row-major matrices back to back,
/// in an anonymous mapping advised to use huge pages, as the engine holds a
/// large model's weights (4 KiB pages would add TLB misses to both the GEMV
/// and the read loop).
struct Store {
    mem: memmap2::MmapMut,
    dtype: &'static str,
}

impl Store {
    fn new(dtype: &'static str, elems: usize) -> Store {
        let eb = if dtype == "f32" { 4 } else { 2 };
        let mut mem = memmap2::MmapMut::map_anon(elems * eb).expect("anonymous mapping");
        #[cfg(target_os = "linux")]
        let _ = mem.advise(memmap2::Advice::HugePage);
        // Non-zero data written to every page (an untouched page would map
        // the shared zero page and never reach DRAM).
        let v = |i: usize| ((i.wrapping_mul(2_654_435_761) >> 7) % 2001) as f32 / 1000.0 - 1.0;
        match dtype {
            "f32" => fill(bytemuck::cast_slice_mut::<u8, f32>(&mut mem), v),
            "f16" => fill(bytemuck::cast_slice_mut::<u8, f16>(&mut mem), |i| {
                f16::from_f32(v(i))
            }),
            _ => fill(bytemuck::cast_slice_mut::<u8, bf16>(&mut mem), |i| {
                bf16::from_f32(v(i))
            }),
        }
        Store { mem, dtype }
    }

    fn elem_bytes(&self) -> usize {
        if self.dtype == "f32" {
            4
        } else {
            2
        }
    }

    /// Elements `start..end` as weights.
    fn weights(&self, start: usize, end: usize) -> Weights<'_> {
        let b = self.bytes(start, end);
        match self.dtype {
            "f32" => Weights::F32(bytemuck::cast_slice(b)),
            "f16" => Weights::F16(bytemuck::cast_slice(b)),
            _ => Weights::BF16(bytemuck::cast_slice(b)),
        }
    }

    /// Elements `start..end` as raw bytes.
    fn bytes(&self, start: usize, end: usize) -> &[u8] {
        let eb = self.elem_bytes();
        &self.mem[start * eb..end * eb]
    }
}

fn fill<T>(out: &mut [T], f: impl Fn(usize) -> T) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = f(i);
    }
}

#[derive(Clone, Copy)]
enum Work {
    Gemv(Backend),
    Read(Backend),
}

/// Runs `iters` passes of `work` over the rotation set with `threads`
/// threads; returns the wall time.
fn run(
    store: &Store,
    count: usize,
    rows: usize,
    cols: usize,
    work: Work,
    threads: usize,
    iters: usize,
) -> Duration {
    let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
    let mut y = vec![0.0f32; rows];
    // Contiguous row blocks, multiples of 4 rows (the kernels' row block).
    let per = rows.div_ceil(threads).div_ceil(4) * 4;
    let start = Instant::now();
    std::thread::scope(|s| {
        for (t, yt) in y.chunks_mut(per).enumerate() {
            let x = &x;
            s.spawn(move || {
                let r0 = t * per;
                let mut sink = 0u64;
                for it in 0..iters {
                    let base = (it % count) * rows * cols;
                    let (a, b) = (base + r0 * cols, base + (r0 + yt.len()) * cols);
                    match work {
                        Work::Gemv(be) => be.gemv(store.weights(a, b), x, yt),
                        Work::Read(be) => sink = sink.wrapping_add(be.read_sum(store.bytes(a, b))),
                    }
                    black_box(&mut *yt);
                }
                black_box(sink);
            });
        }
    });
    start.elapsed()
}

/// Calibrates an iteration count for ~TARGET (at least one full rotation,
/// except for the slow scalar backend), then measures. Returns seconds per pass.
fn measure(
    store: &Store,
    count: usize,
    rows: usize,
    cols: usize,
    work: Work,
    threads: usize,
) -> f64 {
    let slow = matches!(work, Work::Gemv(Backend::Scalar));
    let min_iters = if slow { 2 } else { count };
    let warm = run(store, count, rows, cols, work, threads, min_iters);
    let per = warm.as_secs_f64() / min_iters as f64;
    let iters = ((TARGET.as_secs_f64() / per).ceil() as usize).max(min_iters);
    let iters = if slow { iters.min(4) } else { iters };
    run(store, count, rows, cols, work, threads, iters).as_secs_f64() / iters as f64
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters dtypes.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let simd: Vec<Backend> = Backend::all_available()
        .filter(|b| *b != Backend::Scalar)
        .collect();
    let read_backend = Backend::detect();
    let wall = Instant::now();
    println!(
        "gemv y = W x, weights streamed from DRAM (rotation >= {} MiB); detect() = {}; baseline = {}::read_sum",
        ROTATION_BYTES >> 20,
        Backend::detect().name(),
        read_backend.name()
    );
    println!(
        "{:<5} {:>11} {:>3} {:>7} | {:>9} {:>8} | {:>13} | {:>6}",
        "dtype", "rows x cols", "thr", "backend", "ms/gemv", "GB/s", "baseline GB/s", "ratio"
    );
    println!("{}", "-".repeat(80));
    let max_elems = SHAPES.iter().map(|(r, c)| r * c).max().unwrap_or(0);
    for dtype in ["f32", "f16", "bf16"] {
        if !filter.is_empty() && !filter.iter().any(|f| f == dtype) {
            continue;
        }
        let eb = if dtype == "f32" { 4 } else { 2 };
        let count = ROTATION_BYTES.div_ceil(max_elems * eb).max(2);
        let store = Store::new(dtype, count * max_elems);
        assert_eq!(store.elem_bytes(), eb);
        for (rows, cols) in SHAPES {
            let mat_bytes = (rows * cols * eb) as f64;
            // Distinct matrices of this shape that fit in the store.
            let count = count * max_elems / (rows * cols);
            for threads in THREADS {
                let base = measure(&store, count, rows, cols, Work::Read(read_backend), threads);
                let base_gbs = mat_bytes / base / 1e9;
                let mut backends = simd.clone();
                if threads == 1 {
                    backends.push(Backend::Scalar);
                }
                for &be in &backends {
                    let t = measure(&store, count, rows, cols, Work::Gemv(be), threads);
                    let gbs = mat_bytes / t / 1e9;
                    println!(
                        "{:<5} {:>11} {:>3} {:>7} | {:>9.3} {:>8.2} | {:>13.2} | {:>6.2}",
                        dtype,
                        format!("{rows}x{cols}"),
                        threads,
                        be.name(),
                        t * 1e3,
                        gbs,
                        base_gbs,
                        gbs / base_gbs
                    );
                }
            }
        }
    }
    println!("{}", "-".repeat(80));
    println!("total {:.1} s", wall.elapsed().as_secs_f64());
}
