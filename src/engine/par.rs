//! Multi-threaded GEMV: rows of one or several matrices split across threads.
//!
//! Each parallel region is one `Pool::run` on the rank's persistent compute
//! threads: the calling thread takes the first share, the pool's threads the
//! rest. Small matrices run on the calling thread alone (waking threads
//! would cost more than the work).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tpi_kernels::pool::Pool;
use tpi_kernels::{Backend, Weights};

/// Below this many weight elements a GEMV stays on one thread.
const MIN_PARALLEL_ELEMS: usize = 1 << 16;
/// Row chunks are multiples of this (the kernels' row block).
const ROW_ALIGN: usize = 4;
/// Weight bytes per chunk handed to a thread.
const CHUNK_BYTES: usize = 256 << 10;

/// One GEMV: `y = W x`.
pub type Job<'a, 'b> = (Weights<'a>, &'b [f32], &'b mut [f32]);

/// Thread count and kernel backend for a rank's matmuls.
#[derive(Clone)]
pub struct Par {
    pool: Arc<Pool>,
    backend: Backend,
}

impl Par {
    pub fn new(threads: usize, backend: Backend) -> Par {
        Par {
            pool: Arc::new(Pool::new(threads)),
            backend,
        }
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn gemv(&self, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
        self.run(1, vec![(w, x, y)]);
    }

    /// `t` tokens at once: `xs` holds `t` input rows, `ys` gets `t` output rows.
    pub fn gemv_t(&self, t: usize, w: Weights<'_>, xs: &[f32], ys: &mut [f32]) {
        self.run(t, vec![(w, xs, ys)]);
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
    /// tokens one after the other, so its weights come from DRAM once and
    /// from the cache `t - 1` times (a prompt costs a little more than one
    /// decode step, not `t` of them).
    ///
    /// Static equal shares leave one thread idle at the end of every region
    /// when the two do not get the same share of the memory bus (they rarely
    /// do on a shared VM); with chunks of ~`CHUNK_BYTES` handed out by an
    /// atomic counter both finish within one chunk of each other.
    ///
    /// # Panics
    /// If a job's `x` or `y` is not `t` rows of the weights' shape.
    pub fn run(&self, t: usize, jobs: Vec<Job<'_, '_>>) {
        let t = t.max(1);
        let work: usize = jobs.iter().map(|(w, _, _)| w.len()).sum();
        let backend = self.backend;
        if t == 1 && (self.threads() == 1 || work < MIN_PARALLEL_ELEMS) {
            for (w, x, y) in jobs {
                backend.gemv(w, x, y);
            }
            return;
        }
        let mut chunks: Vec<Chunk<'_, '_>> = Vec::new();
        for (w, xs, ys) in jobs {
            let (cols, rows) = (xs.len() / t, ys.len() / t);
            assert!(
                xs.len() == t * cols && ys.len() == t * rows && w.len() == rows * cols,
                "gemv: {t} tokens of {} x {} weights, x {} and y {}",
                rows,
                cols,
                xs.len(),
                ys.len()
            );
            let row_bytes = cols.max(1) * w.elem_bytes();
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
                chunks.push((w.slice(start * cols, end * cols), xs, cols, ys));
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
/// columns, each token's output rows).
type Chunk<'a, 'b> = (Weights<'a>, &'b [f32], usize, Vec<&'b mut [f32]>);

fn run_chunk(backend: Backend, (w, xs, cols, ys): Chunk<'_, '_>) {
    for (i, y) in ys.into_iter().enumerate() {
        backend.gemv(w, &xs[i * cols..(i + 1) * cols], y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                (Weights::F16(&wa), &x, &mut ya),
                (Weights::F32(&wb), &x, &mut yb),
            );
            (ya, yb)
        };
        let one = run(1);
        assert_eq!(one, run(2));
        let expect: f32 = (0..cols).map(|j| wb[cols * 5 + j] * x[j]).sum();
        assert!((one.1[5] - expect).abs() < 1e-3);
    }
}
