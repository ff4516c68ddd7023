//! A persistent pool of compute threads (with `std`).
//!
//! `Pool::run(f)` calls `f(t)` once for every thread index `t` in
//! `0..threads`: index 0 on the calling thread, the others on threads that
//! live as long as the pool. Spawning a thread per parallel region costs tens
//! of microseconds, and a decode step has ~4 regions per layer; the pool
//! wakes its threads with one atomic store instead.
//!
//! Protocol: the caller publishes a lifetime-erased pointer to `f` under the
//! `job` mutex, sets `pending = threads - 1`, then bumps `epoch`. A worker
//! that sees a new epoch reads the pointer (under the same mutex), calls it,
//! and decrements `pending`. `run` returns only when `pending == 0`, so no
//! worker touches `f` after `run` returns: that is what makes erasing the
//! lifetime sound. Idle workers spin briefly on `epoch`, then sleep on a
//! condvar (`sleepers` + SeqCst on both sides, so a wake-up is never lost).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::vec::Vec;

type Task = dyn Fn(usize) + Sync;

/// How long an idle worker spins before sleeping.
const SPIN: Duration = Duration::from_micros(50);

#[derive(Clone, Copy)]
struct JobPtr(*const Task);

// SAFETY: the pointee is `Sync` (shared calls from several threads are
// allowed), and `Pool::run` keeps it alive until every worker is done with
// it (see the module protocol).
unsafe impl Send for JobPtr {}

struct Shared {
    job: Mutex<Option<JobPtr>>,
    epoch: AtomicU64,
    pending: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// A fixed set of compute threads.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` in all (the caller counts as one).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            epoch: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|t| {
                let s = shared.clone();
                std::thread::spawn(move || worker(&s, t))
            })
            .collect();
        Pool {
            shared,
            workers,
            threads,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(t)` for every `t` in `0..threads`, in parallel; returns when
    /// all calls have returned.
    ///
    /// # Panics
    /// If `f` panicked on any thread.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased (same fat-pointer layout); the
        // pointer is used by workers strictly before they decrement
        // `pending`, and this function does not return before `pending`
        // is 0 (the wait below), so `f` outlives every use.
        let erased: &'static Task =
            unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Task>(f) };
        *lock(&s.job) = Some(JobPtr(erased));
        s.pending.store(self.threads - 1, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = lock(&s.sleep);
            s.wake.notify_all();
        }
        f(0);
        let start = Instant::now();
        while s.pending.load(Ordering::Acquire) != 0 {
            if start.elapsed() < SPIN {
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *lock(&s.job) = None;
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a pool thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = lock(&self.shared.sleep);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(s: &Shared, t: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then sleep.
        let start = Instant::now();
        loop {
            if s.stop.load(Ordering::SeqCst) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if start.elapsed() < SPIN {
                core::hint::spin_loop();
                continue;
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let g = lock(&s.sleep);
            let g = s
                .wake
                .wait_while(g, |_| {
                    s.epoch.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst)
                })
                .unwrap_or_else(|e| e.into_inner());
            drop(g);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        let job = *lock(&s.job);
        if let Some(JobPtr(p)) = job {
            // SAFETY: `run` published `p` for this epoch and waits for this
            // thread's `pending` decrement below before the pointee can die.
            let f: &Task = unsafe { &*p };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_thread_index_runs_once_per_call() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            let rounds = if cfg!(miri) { 20 } else { 2000u32 };
            for round in 0..rounds {
                let hits: Vec<AtomicU32> = (0..threads).map(|_| AtomicU32::new(0)).collect();
                pool.run(&|t| {
                    hits[t].fetch_add(round + 1, Ordering::Relaxed);
                });
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), round + 1);
                }
                if round % 500 == 0 || (cfg!(miri) && round % 10 == 0) {
                    // Let workers fall asleep, then wake them.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    #[test]
    fn borrowed_data_is_written_through_shares() {
        let pool = Pool::new(3);
        let out: Vec<Mutex<Vec<usize>>> = (0..3).map(|_| Mutex::new(Vec::new())).collect();
        pool.run(&|t| lock(&out[t]).push(t * 10));
        let got: Vec<usize> = out.iter().map(|m| lock(m)[0]).collect();
        assert_eq!(got, [0, 10, 20]);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|t| {
                if t == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicU32::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
