//! Multi-threaded GEMV: rows of one or several matrices split across threads.
//!
//! Each parallel region is one `Pool::run` on the rank's persistent compute
//! threads: the calling thread takes the first share, the pool's threads the
//! rest. Small matrices run on the calling thread alone (waking threads
//! would cost more than the work).
//!
//! Q8_0 / Q4_0 matrices multiply Q8_0 activations (as llama.cpp does): at
//! the start of a region each distinct input row is quantized once into
//! [`Par`]'s activation buffer (grown to the largest region seen, then
//! reused; never allocated per call), and every chunk of rows reads it.
//!
//! With several tokens (a prefill batch) a chunk of rows is one batched
//! product (`gemm`: register tiles of 3 rows x 3 tokens on float weights,
//! 4 x 4 on AVX-512;
//! `gemm_q8_0` / `gemm_q4_0` / `gemm_q4_k` / `gemm_q6_k`: each weight block
//! read once per 8 tokens)
//! into its own part of a second reused buffer, token-major as the kernel
//! writes it, then copied to each token's output row.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tpi_kernels::kquant::{quantize_row_q8_k, QK_K};
use tpi_kernels::pool::Pool;
use tpi_kernels::quant::{quantize_row_q8_0, QK};
use tpi_kernels::{Backend, BlockQ8_0, BlockQ8_K};

use crate::weights::{Activations, View};

/// Below this many weight elements a GEMV stays on one thread.
const MIN_PARALLEL_ELEMS: usize = 1 << 16;
/// Row chunks are multiples of this: the kernels' row block (4) and the
/// groups a Q4_Kx8 matrix is sliced at (8).
const ROW_ALIGN: usize = 8;
/// Weight bytes per chunk handed to a thread.
const CHUNK_BYTES: usize = 256 << 10;

/// One GEMV: `y = W x`.
pub type Job<'a, 'b> = (View<'a>, &'b [f32], &'b mut [f32]);

/// Thread count and kernel backend for a rank's matmuls.
pub struct Par {
    pool: Arc<Pool>,
    backend: Backend,
    /// `[sum over a region's distinct quantized inputs of t * cols/32]`:
    /// Q8_0 activations, locked for one region at a time.
    xq: Mutex<Vec<BlockQ8_0>>,
    /// `[... of t * cols/256]`: Q8_K activations of K-quant matrices,
    /// locked with `xq`.
    xk: Mutex<Vec<BlockQ8_K>>,
    /// `[sum over a region's matrices of t * rows]` when `t > 1`:
    /// batched outputs, chunk by chunk `[t][chunk rows]`, locked with `xq`.
    yq: Mutex<Vec<f32>>,
}

impl Clone for Par {
    /// The same threads; activation and output buffers of its own.
    fn clone(&self) -> Par {
        Par {
            pool: self.pool.clone(),
            backend: self.backend,
            xq: Mutex::new(Vec::new()),
            xk: Mutex::new(Vec::new()),
            yq: Mutex::new(Vec::new()),
        }
    }
}

/// A chunk's inputs: all `t` tokens' rows, as floats, Q8_0 or Q8_K blocks.
#[allow(non_camel_case_types)] // ggml's spelling
#[derive(Clone, Copy)]
enum Input<'b> {
    F32(&'b [f32]),
    Q8_0(&'b [BlockQ8_0]),
    Q8_K(&'b [BlockQ8_K]),
}

/// Where `xs`, quantized as `act`, starts in its buffer.
fn find(inputs: &[(&[f32], Activations, usize)], xs: &[f32], act: Activations) -> Option<usize> {
    inputs
        .iter()
        .find(|(x, a, _)| (x.as_ptr(), x.len(), *a) == (xs.as_ptr(), xs.len(), act))
        .map(|i| i.2)
}

impl Par {
    pub fn new(threads: usize, backend: Backend) -> Par {
        Par {
            pool: Arc::new(Pool::new(threads)),
            backend,
            xq: Mutex::new(Vec::new()),
            xk: Mutex::new(Vec::new()),
            yq: Mutex::new(Vec::new()),
        }
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn gemv<'w>(&self, w: impl Into<View<'w>>, x: &[f32], y: &mut [f32]) {
        self.run(1, vec![(w.into(), x, y)]);
    }

    /// `t` tokens at once: `xs` holds `t` input rows, `ys` gets `t` output rows.
    pub fn gemv_t<'w>(&self, t: usize, w: impl Into<View<'w>>, xs: &[f32], ys: &mut [f32]) {
        self.run(t, vec![(w.into(), xs, ys)]);
    }

    pub fn gemv2(&self, t: usize, a: Job<'_, '_>, b: Job<'_, '_>) {
        self.run(t, vec![a, b]);
    }

    pub fn gemv3(&self, t: usize, a: Job<'_, '_>, b: Job<'_, '_>, c: Job<'_, '_>) {
        self.run(t, vec![a, b, c]);
    }

    /// Runs `jobs` for `t` tokens: each job's `x` holds `t` input rows and
    /// its `y` gets `t` output rows. Rows of the weights are split into
    /// chunks that the threads take in turn; a chunk is applied to all `t`
    /// tokens by one batched product, so its weights come from DRAM once
    /// per batch (a prompt costs a little more than one decode step in
    /// bytes read, not `t` of them).
    ///
    /// Static equal shares leave one thread idle at the end of every region
    /// when the two do not get the same share of the memory bus (they rarely
    /// do on a shared VM); with chunks of ~`CHUNK_BYTES` handed out by an
    /// atomic counter both finish within one chunk of each other.
    ///
    /// # Panics
    /// If a job's `x` or `y` is not `t` rows of the weights' shape, or a
    /// block matrix's rows are not whole blocks.
    pub fn run(&self, t: usize, jobs: Vec<Job<'_, '_>>) {
        let t = t.max(1);
        let work: usize = jobs.iter().map(|(w, _, _)| w.len()).sum();
        let backend = self.backend;
        let quantized = jobs.iter().any(|(w, _, _)| w.is_quantized());
        if !quantized && t == 1 && (self.threads() == 1 || work < MIN_PARALLEL_ELEMS) {
            for (w, x, y) in jobs {
                if let View::Float(w) = w {
                    backend.gemv(w, x, y);
                }
            }
            return;
        }
        // Quantize each distinct input of a block matrix once per
        // activation type: jobs sharing `x` (q, k, v; gate, up) share it.
        let mut xq = self.xq.lock().unwrap_or_else(|e| e.into_inner());
        let mut xk = self.xk.lock().unwrap_or_else(|e| e.into_inner());
        // (input rows, activation type, first block in its buffer)
        let mut inputs: Vec<(&[f32], Activations, usize)> = Vec::new();
        let (mut n_q, mut n_k) = (0, 0);
        for (w, xs, _) in &jobs {
            let act = w.activations();
            if act == Activations::F32 || find(&inputs, xs, act).is_some() {
                continue;
            }
            let (block, n) = match act {
                Activations::Q8_0 => (QK, &mut n_q),
                _ => (QK_K, &mut n_k),
            };
            assert!(
                xs.len().is_multiple_of(block * t),
                "gemv: {t} tokens of {} inputs are not whole {block}-blocks",
                xs.len()
            );
            inputs.push((xs, act, *n));
            *n += xs.len() / block;
        }
        if xq.len() < n_q {
            xq.resize(n_q, BlockQ8_0::default());
        }
        if xk.len() < n_k {
            xk.resize(n_k, bytemuck::Zeroable::zeroed());
        }
        for &(xs, act, at) in &inputs {
            // Row by row, so each token's blocks start its own row.
            let cols = xs.len() / t;
            for (i, x) in xs.chunks_exact(cols.max(1)).enumerate() {
                if act == Activations::Q8_0 {
                    let nb = cols / QK;
                    quantize_row_q8_0(x, &mut xq[at + i * nb..at + (i + 1) * nb]);
                } else {
                    let nb = cols / QK_K;
                    quantize_row_q8_k(x, &mut xk[at + i * nb..at + (i + 1) * nb]);
                }
            }
        }
        let (xq, xk): (&[BlockQ8_0], &[BlockQ8_K]) = (&xq[..n_q], &xk[..n_k]);
        // Batched outputs of block matrices, carved chunk by chunk below.
        let mut yq = self.yq.lock().unwrap_or_else(|e| e.into_inner());
        let batched = if t > 1 {
            jobs.iter().map(|(_, _, ys)| ys.len()).sum()
        } else {
            0
        };
        if yq.len() < batched {
            yq.resize(batched, 0.0);
        }
        let mut yq_free: &mut [f32] = &mut yq[..batched];
        let mut chunks: Vec<Chunk<'_, '_>> = Vec::new();
        for (w, xs, ys) in jobs {
            let (cols, rows) = (xs.len() / t, ys.len() / t);
            assert!(
                xs.len() == t * cols
                    && ys.len() == t * rows
                    && w.len() == rows * cols
                    && rows.is_multiple_of(w.row_group()),
                "gemv: {t} tokens of {} x {} weights, x {} and y {}",
                rows,
                cols,
                xs.len(),
                ys.len()
            );
            let act = w.activations();
            let input = match (act, find(&inputs, xs, act)) {
                (Activations::Q8_0, Some(at)) => Input::Q8_0(&xq[at..at + xs.len() / QK]),
                (Activations::Q8_K, Some(at)) => Input::Q8_K(&xk[at..at + xs.len() / QK_K]),
                _ => Input::F32(xs),
            };
            let row_bytes = w.byte_len() / rows.max(1);
            let rows_per = (CHUNK_BYTES / row_bytes.max(1))
                .next_multiple_of(ROW_ALIGN)
                .max(ROW_ALIGN);
            // Per token, its output row cut at the chunk boundaries.
            let mut pieces: Vec<_> = ys
                .chunks_mut(rows.max(1))
                .map(|y| y.chunks_mut(rows_per))
                .collect();
            for start in (0..rows).step_by(rows_per) {
                let end = (start + rows_per).min(rows);
                let ys: Vec<&mut [f32]> = pieces.iter_mut().filter_map(|p| p.next()).collect();
                let scratch = if t > 1 {
                    let (mine, rest) = std::mem::take(&mut yq_free).split_at_mut(t * (end - start));
                    yq_free = rest;
                    mine
                } else {
                    &mut []
                };
                chunks.push((w.slice(start * cols, end * cols), input, cols, ys, scratch));
            }
        }
        if self.threads() == 1 || work < MIN_PARALLEL_ELEMS {
            for c in chunks {
                run_chunk(backend, c);
            }
            return;
        }
        // Each chunk is taken exactly once (the counter hands out each index
        // once), so its mutex is never contended.
        let chunks: Vec<Mutex<Option<Chunk<'_, '_>>>> =
            chunks.into_iter().map(|c| Mutex::new(Some(c))).collect();
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = chunks.get(i) else { break };
            let chunk = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(c) = chunk {
                run_chunk(backend, c);
            }
        });
    }
}

/// Rows of one matrix for every token: (weights, all tokens' inputs,
/// columns, each token's output rows, and with more than one token
/// `[t][chunk rows]` floats for the batched product).
type Chunk<'a, 'b> = (
    View<'a>,
    Input<'b>,
    usize,
    Vec<&'b mut [f32]>,
    &'b mut [f32],
);

fn run_chunk(backend: Backend, (w, xs, cols, mut ys, yq): Chunk<'_, '_>) {
    let (nb, t) = (cols / QK, ys.len());
    match (w, xs) {
        (View::Float(w), Input::F32(x)) if t == 1 => backend.gemv(w, &x[..cols], ys[0]),
        (View::Float(w), Input::F32(x)) => {
            backend.gemm(w, &x[..t * cols], t, yq);
            scatter(yq, ys);
        }
        (View::Q8_0(w), Input::Q8_0(x)) if t == 1 => backend.gemv_q8_0(w, x, ys[0]),
        (View::Q4_0(w), Input::Q8_0(x)) if t == 1 => backend.gemv_q4_0(w, x, ys[0]),
        (View::Q8_0(w), Input::Q8_0(x)) => {
            backend.gemm_q8_0(w, &x[..t * nb], t, yq);
            scatter(yq, ys);
        }
        (View::Q4_0(w), Input::Q8_0(x)) => {
            backend.gemm_q4_0(w, &x[..t * nb], t, yq);
            scatter(yq, ys);
        }
        (View::Q4_K(w), Input::Q8_K(x)) if t == 1 => backend.gemv_q4_k(w, x, ys[0]),
        (View::Q6_K(w), Input::Q8_K(x)) if t == 1 => backend.gemv_q6_k(w, x, ys[0]),
        (View::Q4_K(w), Input::Q8_K(x)) => {
            backend.gemm_q4_k(w, &x[..t * (cols / QK_K)], t, yq);
            scatter(yq, ys);
        }
        (View::Q6_K(w), Input::Q8_K(x)) => {
            backend.gemm_q6_k(w, &x[..t * (cols / QK_K)], t, yq);
            scatter(yq, ys);
        }
        (View::Q4_Kx8(w), Input::Q8_K(x)) if t == 1 => backend.gemv_q4_k_x8(w, x, ys[0]),
        (View::Q4_Kx8(w), Input::Q8_K(x)) => {
            backend.gemm_q4_k_x8(w, &x[..t * (cols / QK_K)], t, yq);
            scatter(yq, ys);
        }
        _ => unreachable!("inputs are quantized as their weights' activations"),
    }
}

/// Copies the token-major `[t][rows]` product to each token's output row.
fn scatter(yq: &[f32], ys: Vec<&mut [f32]>) {
    let rows = yq.len() / ys.len().max(1);
    for (y, src) in ys.into_iter().zip(yq.chunks_exact(rows.max(1))) {
        y.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpi_kernels::Weights;

    #[test]
    fn parallel_gemv_matches_single_thread_on_uneven_rows() {
        let (rows, cols) = (1003, 131);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        let mut y1 = vec![0.0; rows];
        let mut y3 = vec![0.0; rows];
        Par::new(1, Backend::Scalar).gemv(Weights::F32(&w), &x, &mut y1);
        Par::new(3, Backend::Scalar).gemv(Weights::F32(&w), &x, &mut y3);
        assert_eq!(y1, y3);
        let expect0: f32 = (0..cols).map(|j| w[j] * x[j]).sum();
        assert!((y1[0] - expect0).abs() < 1e-4);
    }

    #[test]
    fn several_jobs_of_mixed_dtypes_in_one_region_match_one_thread() {
        use tpi_kernels::f16;
        // 300 rows of 1000 f16 (2000 B/row) span several 256 KiB chunks.
        let (ra, rb, cols) = (300, 77, 1000);
        let wa: Vec<f16> = (0..ra * cols)
            .map(|i| f16::from_f32(((i * 31) % 97) as f32 / 97.0 - 0.5))
            .collect();
        let wb: Vec<f32> = (0..rb * cols).map(|i| ((i % 13) as f32) * 0.01).collect();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).cos()).collect();
        let run = |threads| {
            let (mut ya, mut yb) = (vec![0.0; ra], vec![0.0; rb]);
            Par::new(threads, Backend::Scalar).gemv2(
                1,
                (Weights::F16(&wa).into(), &x, &mut ya),
                (Weights::F32(&wb).into(), &x, &mut yb),
            );
            (ya, yb)
        };
        let one = run(1);
        assert_eq!(one, run(2));
        let expect: f32 = (0..cols).map(|j| wb[cols * 5 + j] * x[j]).sum();
        assert!((one.1[5] - expect).abs() < 1e-3);
    }

    #[test]
    fn block_weights_quantize_each_input_once_and_match_the_kernel() {
        use tpi_kernels::quant::quantize_row_q4_0;
        use tpi_kernels::BlockQ4_0;
        // 2 tokens; q4 and q8 jobs share one input; 600 rows of 256 span chunks.
        let (rows, cols, t) = (600, 256, 2);
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut w4 = vec![BlockQ4_0::default(); rows * cols / QK];
        let mut w8 = vec![BlockQ8_0::default(); rows * cols / QK];
        quantize_row_q4_0(&wf, &mut w4);
        quantize_row_q8_0(&wf, &mut w8);
        let xs: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.37).cos()).collect();
        let run = |threads| {
            let (mut y4, mut y8) = (vec![0.0; t * rows], vec![0.0; t * rows]);
            let par = Par::new(threads, Backend::Scalar);
            par.gemv2(
                t,
                (View::Q4_0(&w4), &xs, &mut y4),
                (View::Q8_0(&w8), &xs, &mut y8),
            );
            (y4, y8)
        };
        let (y4, y8) = run(1);
        assert_eq!((y4.clone(), y8.clone()), run(2));
        for tok in 0..t {
            let mut xq = vec![BlockQ8_0::default(); cols / QK];
            quantize_row_q8_0(&xs[tok * cols..(tok + 1) * cols], &mut xq);
            let (mut e4, mut e8) = (vec![0.0; rows], vec![0.0; rows]);
            Backend::Scalar.gemv_q4_0(&w4, &xq, &mut e4);
            Backend::Scalar.gemv_q8_0(&w8, &xq, &mut e8);
            assert_eq!(&y4[tok * rows..(tok + 1) * rows], &e4[..], "token {tok}");
            assert_eq!(&y8[tok * rows..(tok + 1) * rows], &e8[..], "token {tok}");
        }
    }

    #[test]
    fn k_quant_weights_get_q8_k_inputs_beside_q8_0_ones_and_match_the_kernels() {
        use tpi_kernels::kquant::{quantize_row_q4_k, quantize_row_q6_k};
        use tpi_kernels::{BlockQ4_K, BlockQ6_K};
        // One input shared by a Q4_K, a Q6_K and a Q8_0 job (two activation
        // types in one region); 1 and 3 tokens; rows span several chunks.
        let (rows, cols) = (700, 512);
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut w4 = vec![bytemuck::Zeroable::zeroed(); rows * cols / QK_K];
        let mut w6 = vec![bytemuck::Zeroable::zeroed(); rows * cols / QK_K];
        let mut w8 = vec![BlockQ8_0::default(); rows * cols / QK];
        quantize_row_q4_k(&wf, &mut w4);
        quantize_row_q6_k(&wf, &mut w6);
        quantize_row_q8_0(&wf, &mut w8);
        let (w4, w6): (Vec<BlockQ4_K>, Vec<BlockQ6_K>) = (w4, w6);
        for t in [1, 3, 9] {
            let xs: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.37).cos()).collect();
            for backend in Backend::all_available() {
                for threads in [1, 2] {
                    let mut y = [
                        vec![0.0; t * rows],
                        vec![0.0; t * rows],
                        vec![0.0; t * rows],
                    ];
                    let [y4, y6, y8] = &mut y;
                    Par::new(threads, backend).gemv3(
                        t,
                        (View::Q4_K(&w4), &xs, y4),
                        (View::Q6_K(&w6), &xs, y6),
                        (View::Q8_0(&w8), &xs, y8),
                    );
                    for tok in 0..t {
                        let x = &xs[tok * cols..(tok + 1) * cols];
                        let mut xk = vec![bytemuck::Zeroable::zeroed(); cols / QK_K];
                        let mut xq = vec![BlockQ8_0::default(); cols / QK];
                        quantize_row_q8_k(x, &mut xk);
                        quantize_row_q8_0(x, &mut xq);
                        let mut e = [vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]];
                        backend.gemv_q4_k(&w4, &xk, &mut e[0]);
                        backend.gemv_q6_k(&w6, &xk, &mut e[1]);
                        backend.gemv_q8_0(&w8, &xq, &mut e[2]);
                        // K-quants: the same bits as their GEMV; the batched
                        // Q8_0 product (t > 1 on x86) sums its blocks in
                        // another order: within 1e-5 of the row's sum |w x|.
                        for (j, (got, want)) in y.iter().zip(&e).enumerate() {
                            let got = &got[tok * rows..(tok + 1) * rows];
                            let bad = (0..rows).find(|&r| {
                                let abs: f32 = wf[r * cols..(r + 1) * cols]
                                    .iter()
                                    .zip(x)
                                    .map(|(w, x)| (w * x).abs())
                                    .sum();
                                let tol = if j == 2 && t > 1 { 1e-5 * abs } else { 0.0 };
                                (got[r] - want[r]).abs() > tol
                            });
                            assert!(
                                bad.is_none(),
                                "{} job {j} t={t} threads={threads} token {tok} row {bad:?}",
                                backend.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_of_tokens_on_block_weights_matches_the_gemv_per_token_on_every_backend() {
        use tpi_kernels::quant::{block_dot_q4_0, block_dot_q8_0, quantize_row_q4_0};
        use tpi_kernels::BlockQ4_0;
        // 9 tokens: one group of 8 in the batched kernel, one token alone;
        // 602 rows of 256 span several chunks and end in a partial tile.
        let (rows, cols, t) = (602, 256, 9);
        let nb = cols / QK;
        let wf: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut w4 = vec![BlockQ4_0::default(); rows * nb];
        let mut w8 = vec![BlockQ8_0::default(); rows * nb];
        quantize_row_q4_0(&wf, &mut w4);
        quantize_row_q8_0(&wf, &mut w8);
        let xs: Vec<f32> = (0..t * cols).map(|i| (i as f32 * 0.37).cos()).collect();
        let mut xq = vec![BlockQ8_0::default(); t * nb];
        quantize_row_q8_0(&xs, &mut xq);
        for backend in Backend::all_available() {
            let run = |threads| {
                let (mut y4, mut y8) = (vec![0.0; t * rows], vec![0.0; t * rows]);
                Par::new(threads, backend).gemv2(
                    t,
                    (View::Q4_0(&w4), &xs, &mut y4),
                    (View::Q8_0(&w8), &xs, &mut y8),
                );
                (y4, y8)
            };
            let (y4, y8) = run(1);
            assert_eq!((y4.clone(), y8.clone()), run(2), "{}", backend.name());
            for tok in 0..t {
                let x = &xq[tok * nb..(tok + 1) * nb];
                let (mut e4, mut e8) = (vec![0.0; rows], vec![0.0; rows]);
                Backend::Scalar.gemv_q4_0(&w4, x, &mut e4);
                Backend::Scalar.gemv_q8_0(&w8, x, &mut e8);
                for r in 0..rows {
                    let (w4r, w8r) = (&w4[r * nb..(r + 1) * nb], &w8[r * nb..(r + 1) * nb]);
                    let scale = |d: tpi_kernels::f16, xb: &BlockQ8_0| d.to_f32() * xb.d.to_f32();
                    let s4: f32 = w4r
                        .iter()
                        .zip(x)
                        .map(|(w, xb)| (scale(w.d, xb) * block_dot_q4_0(w, xb) as f32).abs())
                        .sum();
                    let s8: f32 = w8r
                        .iter()
                        .zip(x)
                        .map(|(w, xb)| (scale(w.d, xb) * block_dot_q8_0(w, xb) as f32).abs())
                        .sum();
                    let (g4, g8) = (y4[tok * rows + r], y8[tok * rows + r]);
                    assert!(
                        (g4 - e4[r]).abs() <= 1e-5 * s4 + 1e-30,
                        "{} q4_0 token {tok} row {r}: {g4} vs {}",
                        backend.name(),
                        e4[r]
                    );
                    assert!(
                        (g8 - e8[r]).abs() <= 1e-5 * s8 + 1e-30,
                        "{} q8_0 token {tok} row {r}: {g8} vs {}",
                        backend.name(),
                        e8[r]
                    );
                }
            }
        }
    }
}
