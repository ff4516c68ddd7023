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
        self.run(vec![(w, x, y)]);
    }

    pub fn gemv2(&self, a: Job<'_, '_>, b: Job<'_, '_>) {
        self.run(vec![a, b]);
    }

    pub fn gemv3(&self, a: Job<'_, '_>, b: Job<'_, '_>, c: Job<'_, '_>) {
        self.run(vec![a, b, c]);
    }

    /// Runs `jobs`, split by rows into chunks that the threads take in turn.
    ///
    /// Static equal shares leave one thread idle at the end of every region
    /// when the two do not get the same share of the memory bus (they rarely
    /// do on a shared VM); with chunks of ~`CHUNK_BYTES` handed out by an
    /// atomic counter both finish within one chunk of each other.
    pub fn run(&self, jobs: Vec<Job<'_, '_>>) {
        let work: usize = jobs.iter().map(|(w, _, _)| w.len()).sum();
        let backend = self.backend;
        if self.threads() == 1 || work < MIN_PARALLEL_ELEMS {
            for (w, x, y) in jobs {
                backend.gemv(w, x, y);
            }
            return;
        }
        let mut chunks: Vec<Job<'_, '_>> = Vec::new();
        for (w, x, y) in jobs {
            let cols = x.len().max(1);
            let row_bytes = cols * w.elem_bytes();
            let rows_per = (CHUNK_BYTES / row_bytes.max(1))
                .next_multiple_of(ROW_ALIGN)
                .max(ROW_ALIGN);
            let mut start = 0;
            for mine in y.chunks_mut(rows_per) {
                let end = start + mine.len();
                chunks.push((w.slice(start * cols, end * cols), x, mine));
                start = end;
            }
        }
        // Each chunk is taken exactly once (the counter hands out each index
        // once), so its mutex is never contended.
        let chunks: Vec<Mutex<Option<Job<'_, '_>>>> =
            chunks.into_iter().map(|j| Mutex::new(Some(j))).collect();
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = chunks.get(i) else { break };
            let job = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((w, x, y)) = job {
                backend.gemv(w, x, y);
            }
        });
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
