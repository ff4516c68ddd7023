//! GEMV bandwidth benchmark (`cargo bench --bench gemv [DTYPE...]`,
//! std::time only).
//!
//! For f32/f16/bf16 weights and ggml Q8_0/Q4_0 blocks and Q4_K/Q6_K
//! super-blocks, of the shapes of a
//! ~1B model's projections and lm_head, measures `y = W x` per backend with
//! 1 and 2 threads (rows split into contiguous blocks, one
//! `std::thread::scope` per measurement, each thread running all iterations
//! over its rows), next to the "best memory read loop" (`Backend::read_sum`:
//! widest loads, 8 accumulators) streaming the same bytes with the same
//! threads, measured in the same run. GB/s counts the stored weight bytes
//! (34 per 32 weights for Q8_0, 18 for Q4_0, 144 per 256 for Q4_K, 210 for
//! Q6_K, 148 for Q4_K interleaved by 8 rows: `q4_k_x8`, the layout slices
//! store Q4_K matrices in), so a kernel at the memory bound shows the read loop's GB/s
//! whatever its dtype. Quantized GEMVs take Q8_0 (K-quants: Q8_K)
//! activations, quantized once before the clock starts (as `engine::par`
//! quantizes once per region). `BACKEND/t64` rows are the
//! batched product for a 64-token prefill (`gemm_q8_0`/`gemm_q4_0`,
//! `gemm_q4_k`/`gemm_q6_k`): their
//! GB/s counts the weight bytes once per token, so the ratio is how many
//! times faster than the read loop a prompt goes through the matrix than
//! 64 memory-bound GEMVs would. The matrices rotate through a
//! set of at least `ROTATION_BYTES` (6x the 32 MB L3 of a Zen 4) so every
//! gemv streams its weights from DRAM.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tpi_kernels::kquant::{quantize_row_q8_k, QK_K};
use tpi_kernels::kx8::ROWS;
use tpi_kernels::quant::{quantize_row_q8_0, QK};
use tpi_kernels::{
    bf16, f16, Backend, BlockQ4_0, BlockQ4_K, BlockQ4_Kx8, BlockQ6_K, BlockQ8_0, BlockQ8_K, Weights,
};

const SHAPES: [(usize, usize); 3] = [(4096, 4096), (5632, 2048), (2048, 5632)];
/// TinyLlama-1.1B's MLP projections and lm_head.
const SHAPES_Q: [(usize, usize); 3] = [(5632, 2048), (2048, 5632), (32000, 2048)];
const ROTATION_BYTES: usize = 192 << 20;
const TARGET: Duration = Duration::from_millis(250);
/// Rounds per measurement; the fastest counts (see `measure`).
const ROUNDS: usize = 5;
const THREADS: [usize; 2] = [1, 2];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
    /// Q4_K rows interleaved by 8, as slices store Q4_K (`tpi_kernels::kx8`).
    Q4Kx8,
}

impl Dtype {
    const ALL: [Dtype; 8] = [
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::Q8_0,
        Dtype::Q4_0,
        Dtype::Q4K,
        Dtype::Q6K,
        Dtype::Q4Kx8,
    ];

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
            Dtype::Q8_0 => "q8_0",
            Dtype::Q4_0 => "q4_0",
            Dtype::Q4K => "q4_k",
            Dtype::Q6K => "q6_k",
            Dtype::Q4Kx8 => "q4_k_x8",
        }
    }

    /// Stored bytes of a row of `cols` weights (`cols` a multiple of 32,
    /// of 256 for the K-quants).
    fn row_bytes(self, cols: usize) -> usize {
        match self {
            Dtype::F32 => 4 * cols,
            Dtype::F16 | Dtype::BF16 => 2 * cols,
            Dtype::Q8_0 => cols / QK * size_of::<BlockQ8_0>(),
            Dtype::Q4_0 => cols / QK * size_of::<BlockQ4_0>(),
            Dtype::Q4K => cols / QK_K * size_of::<BlockQ4_K>(),
            Dtype::Q6K => cols / QK_K * size_of::<BlockQ6_K>(),
            Dtype::Q4Kx8 => cols / QK_K * size_of::<BlockQ4_Kx8>() / ROWS,
        }
    }

    /// Whether the weights are blocks (batched rows are measured too).
    fn block(self) -> bool {
        !matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }

    fn shapes(self) -> &'static [(usize, usize)] {
        match self {
            Dtype::Q8_0 | Dtype::Q4_0 | Dtype::Q4K | Dtype::Q6K | Dtype::Q4Kx8 => &SHAPES_Q,
            _ => &SHAPES,
        }
    }
}

/// The rotation set of one dtype: row-major matrices back to back, in an
/// anonymous mapping advised to use huge pages, as the engine holds a large
/// model's weights (4 KiB pages would add TLB misses to both the GEMV and
/// the read loop).
struct Store {
    mem: memmap2::MmapMut,
    dtype: Dtype,
}

impl Store {
    fn new(dtype: Dtype, bytes: usize) -> Store {
        let mut mem = memmap2::MmapMut::map_anon(bytes).expect("anonymous mapping");
        #[cfg(target_os = "linux")]
        let _ = mem.advise(memmap2::Advice::HugePage);
        // Non-zero data written to every page (an untouched page would map
        // the shared zero page and never reach DRAM).
        let h = |i: usize| i.wrapping_mul(2_654_435_761) >> 7;
        let v = |i: usize| (h(i) % 2001) as f32 / 1000.0 - 1.0;
        // Block scales of a trained model's magnitude (1e-3..1e-2).
        let d = |i: usize| f16::from_f32(1e-3 * (1.0 + (h(i) % 9) as f32));
        match dtype {
            Dtype::F32 => fill(bytemuck::cast_slice_mut::<u8, f32>(&mut mem), v),
            Dtype::F16 => fill(bytemuck::cast_slice_mut::<u8, f16>(&mut mem), |i| {
                f16::from_f32(v(i))
            }),
            Dtype::BF16 => fill(bytemuck::cast_slice_mut::<u8, bf16>(&mut mem), |i| {
                bf16::from_f32(v(i))
            }),
            Dtype::Q8_0 => fill(bytemuck::cast_slice_mut::<u8, BlockQ8_0>(&mut mem), |i| {
                BlockQ8_0 {
                    d: d(i),
                    qs: core::array::from_fn(|j| h(i * QK + j) as i8),
                }
            }),
            Dtype::Q4_0 => fill(bytemuck::cast_slice_mut::<u8, BlockQ4_0>(&mut mem), |i| {
                BlockQ4_0 {
                    d: d(i),
                    qs: core::array::from_fn(|j| h(i * QK + j) as u8),
                }
            }),
            Dtype::Q4K => fill(bytemuck::cast_slice_mut::<u8, BlockQ4_K>(&mut mem), |i| {
                BlockQ4_K {
                    d: d(i),
                    dmin: d(i + 1),
                    scales: core::array::from_fn(|j| h(i * QK_K + 200 + j) as u8),
                    qs: core::array::from_fn(|j| h(i * QK_K + j) as u8),
                }
            }),
            Dtype::Q6K => fill(bytemuck::cast_slice_mut::<u8, BlockQ6_K>(&mut mem), |i| {
                BlockQ6_K {
                    ql: core::array::from_fn(|j| h(i * QK_K + j) as u8),
                    qh: core::array::from_fn(|j| h(i * QK_K + 128 + j) as u8),
                    scales: core::array::from_fn(|j| h(i * QK_K + 192 + j) as i8),
                    d: d(i),
                }
            }),
            Dtype::Q4Kx8 => fill(bytemuck::cast_slice_mut::<u8, BlockQ4_Kx8>(&mut mem), |i| {
                BlockQ4_Kx8 {
                    d: core::array::from_fn(|r| d(ROWS * i + r)),
                    dmin: core::array::from_fn(|r| d(ROWS * i + r + 1)),
                    scales: core::array::from_fn(|j| h(i * 2048 + 1100 + j) as u8 & 63),
                    mins: core::array::from_fn(|j| h(i * 2048 + 1200 + j) as u8 & 63),
                    qs: core::array::from_fn(|j| h(i * 2048 + j) as u8),
                }
            }),
        }
        Store { mem, dtype }
    }

    /// Rows `r0..r1` of matrix `m` (of `rows x cols`), as raw bytes.
    fn bytes(&self, m: usize, rows: usize, cols: usize, r0: usize, r1: usize) -> &[u8] {
        let rb = self.dtype.row_bytes(cols);
        let base = m * rows * rb;
        &self.mem[base + r0 * rb..base + r1 * rb]
    }

    /// `y = W x` on the rows `bytes` of this store's dtype, `x` as floats,
    /// as Q8_0 blocks and as Q8_K super-blocks.
    fn gemv(
        &self,
        be: Backend,
        bytes: &[u8],
        x: &[f32],
        xq: &[BlockQ8_0],
        xk: &[BlockQ8_K],
        y: &mut [f32],
    ) {
        use bytemuck::cast_slice as c;
        match self.dtype {
            Dtype::F32 => be.gemv(Weights::F32(c(bytes)), x, y),
            Dtype::F16 => be.gemv(Weights::F16(c(bytes)), x, y),
            Dtype::BF16 => be.gemv(Weights::BF16(c(bytes)), x, y),
            Dtype::Q8_0 => be.gemv_q8_0(c(bytes), xq, y),
            Dtype::Q4_0 => be.gemv_q4_0(c(bytes), xq, y),
            Dtype::Q4K => be.gemv_q4_k(c(bytes), xk, y),
            Dtype::Q6K => be.gemv_q6_k(c(bytes), xk, y),
            Dtype::Q4Kx8 => be.gemv_q4_k_x8(c(bytes), xk, y),
        }
    }
}

impl Store {
    /// `y[i] = W x[i]` for the `PREFILL` tokens of `xq` (Q8_0) or `xk`
    /// (Q8_K), quantized dtypes.
    fn gemm(&self, be: Backend, bytes: &[u8], xq: &[BlockQ8_0], xk: &[BlockQ8_K], y: &mut [f32]) {
        use bytemuck::cast_slice as c;
        match self.dtype {
            Dtype::Q8_0 => be.gemm_q8_0(c(bytes), xq, PREFILL, y),
            Dtype::Q4_0 => be.gemm_q4_0(c(bytes), xq, PREFILL, y),
            Dtype::Q4K => be.gemm_q4_k(c(bytes), xk, PREFILL, y),
            Dtype::Q6K => be.gemm_q6_k(c(bytes), xk, PREFILL, y),
            Dtype::Q4Kx8 => be.gemm_q4_k_x8(c(bytes), xk, PREFILL, y),
            _ => unreachable!("gemm rows are measured for block dtypes only"),
        }
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
    /// One batched product for `PREFILL` tokens per pass (quantized only).
    Gemm(Backend),
    Read(Backend),
}

/// Tokens of a prefill batch (`engine::generate`'s prompt chunk).
const PREFILL: usize = 64;

/// Runs `iters` passes of `work` over the rotation set (`count` matrices)
/// with `threads` threads; returns the wall time.
fn run(
    store: &Store,
    count: usize,
    (rows, cols): (usize, usize),
    work: Work,
    threads: usize,
    iters: usize,
) -> Duration {
    let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
    let xs: Vec<f32> = (0..PREFILL).flat_map(|_| x.iter().copied()).collect();
    let mut xq = vec![BlockQ8_0::default(); PREFILL * cols / QK];
    quantize_row_q8_0(&xs, &mut xq);
    let mut xk = vec![BlockQ8_K::default(); PREFILL * cols / QK_K];
    quantize_row_q8_k(&xs, &mut xk);
    let batch = if matches!(work, Work::Gemm(_)) {
        PREFILL
    } else {
        1
    };
    let mut y = vec![0.0f32; rows];
    let mut yb = vec![0.0f32; batch * rows];
    // Contiguous row blocks, multiples of 8 rows (the kernels' row block,
    // Q4_Kx8's groups).
    let per = rows.div_ceil(threads).div_ceil(ROWS) * ROWS;
    let start = Instant::now();
    std::thread::scope(|s| {
        for ((t, yt), ybt) in y
            .chunks_mut(per)
            .enumerate()
            .zip(yb.chunks_mut(batch * per))
        {
            let (x, xq, xk) = (&x, &xq, &xk);
            s.spawn(move || {
                let r0 = t * per;
                let mut sink = 0u64;
                for it in 0..iters {
                    let bytes = store.bytes(it % count, rows, cols, r0, r0 + yt.len());
                    match work {
                        Work::Gemv(be) => {
                            store.gemv(be, bytes, x, &xq[..cols / QK], &xk[..cols / QK_K], yt)
                        }
                        Work::Gemm(be) => store.gemm(be, bytes, xq, xk, ybt),
                        Work::Read(be) => sink = sink.wrapping_add(be.read_sum(bytes)),
                    }
                    black_box(&mut *yt);
                    black_box(&mut *ybt);
                }
                black_box(sink);
            });
        }
    });
    start.elapsed()
}

/// Calibrates an iteration count for ~TARGET / ROUNDS (at least one full
/// rotation, except for the slow scalar backend and batched products),
/// then measures ROUNDS times and keeps the fastest: on a machine shared
/// with other work, another process can only make a round slower. Returns
/// seconds per pass.
fn measure(store: &Store, count: usize, shape: (usize, usize), work: Work, threads: usize) -> f64 {
    let slow = matches!(work, Work::Gemv(Backend::Scalar) | Work::Gemm(_));
    let min_iters = if slow { 1 } else { count };
    let warm = run(store, count, shape, work, threads, min_iters);
    let per = warm.as_secs_f64() / min_iters as f64;
    let round = TARGET.as_secs_f64() / ROUNDS as f64;
    let iters = ((round / per).ceil() as usize).max(min_iters);
    let iters = if slow { iters.min(2) } else { iters };
    (0..ROUNDS)
        .map(|_| run(store, count, shape, work, threads, iters).as_secs_f64() / iters as f64)
        .fold(f64::INFINITY, f64::min)
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
        "{:<5} {:>11} {:>3} {:>8} | {:>9} {:>8} | {:>13} | {:>6}",
        "dtype", "rows x cols", "thr", "backend", "ms/gemv", "GB/s", "baseline GB/s", "ratio"
    );
    println!("{}", "-".repeat(81));
    for dtype in Dtype::ALL {
        if !filter.is_empty() && !filter.iter().any(|f| f == dtype.name()) {
            continue;
        }
        let max_bytes = dtype
            .shapes()
            .iter()
            .map(|&(r, c)| r * dtype.row_bytes(c))
            .max()
            .unwrap_or(0);
        let store = Store::new(dtype, ROTATION_BYTES.div_ceil(max_bytes).max(2) * max_bytes);
        for &(rows, cols) in dtype.shapes() {
            let mat_bytes = rows * dtype.row_bytes(cols);
            // Distinct matrices of this shape that fit in the store.
            let count = store.mem.len() / mat_bytes;
            let mat_bytes = mat_bytes as f64;
            for threads in THREADS {
                let read = Work::Read(read_backend);
                let base = measure(&store, count, (rows, cols), read, threads);
                let base_gbs = mat_bytes / base / 1e9;
                let mut backends = simd.clone();
                if threads == 1 {
                    backends.push(Backend::Scalar);
                }
                let quantized = dtype.block();
                let gemms = simd.iter().filter(|_| quantized).map(|&be| Work::Gemm(be));
                for work in backends.iter().map(|&be| Work::Gemv(be)).chain(gemms) {
                    let (name, tokens) = match work {
                        Work::Gemv(be) => (be.name().to_string(), 1),
                        Work::Gemm(be) => (format!("{}/t{PREFILL}", be.name()), PREFILL),
                        Work::Read(_) => unreachable!(),
                    };
                    let t = measure(&store, count, (rows, cols), work, threads);
                    let gbs = tokens as f64 * mat_bytes / t / 1e9;
                    println!(
                        "{:<5} {:>11} {:>3} {:>8} | {:>9.3} {:>8.2} | {:>13.2} | {:>6.2}",
                        dtype.name(),
                        format!("{rows}x{cols}"),
                        threads,
                        name,
                        t * 1e3,
                        gbs,
                        base_gbs,
                        gbs / base_gbs
                    );
                }
            }
        }
    }
    println!("{}", "-".repeat(81));
    println!("total {:.1} s", wall.elapsed().as_secs_f64());
}
