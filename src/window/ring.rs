//! A single-producer single-consumer ring that passes *ownership of slot
//! buffers* between an I/O thread (producer) and compute (consumer).
//!
//! Design after the `rtrb` crate: two monotonic counters, each written by one
//! side only and kept on its own cache line, plus a cached copy of the other
//! side's counter so the hot path touches the shared line only when the cached
//! value says "full" / "empty".
//!
//! * `tail` = number of slots the producer has *published* (filled).
//! * `head` = number of slots the consumer has *released* (free again).
//!
//! Slot `seq` lives at index `seq % n_slots`. Invariant: `0 <= tail - head <=
//! n_slots`. The producer owns the slots with sequence numbers in
//! `[tail, head + n_slots)` (free), the consumer owns `[head, tail)` (filled);
//! ownership moves by a Release store of the counter, observed by an Acquire
//! load on the other side. Filled slots carry `(block, start, len)`.
//!
//! The slot memory is allocated once, zeroed (so handing out `&[u8]` never
//! exposes uninitialised bytes) and 4096-byte aligned, every slot a multiple of
//! 4096 bytes long, so `O_DIRECT` reads can target it.
//!
//! Waiting: spin briefly, yield, then park on a `crossbeam` `Parker` (no mutex
//! on the hot path). A waiter announces itself in a `*_waiting` flag; the
//! other side checks the flag after its counter store (Dekker pattern with
//! `SeqCst` fences on both sides), so a wake-up is never lost. Dropping either
//! side sets `abandoned` and unparks the other, which then returns
//! [`RingError::Abandoned`] instead of hanging (the consumer first drains the
//! slots that were published before the producer went away).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::sync::{Parker, Unparker};
use crossbeam::utils::CachePadded;

use crate::sys::AlignedBuf;

/// Alignment (and size granularity) of every slot buffer.
pub const SLOT_ALIGN: usize = 4096;

/// Spin iterations (with `spin_loop` hints) before yielding.
const SPIN: u32 = if cfg!(miri) { 2 } else { 128 };
/// `yield_now` rounds before parking.
const YIELDS: u32 = if cfg!(miri) { 1 } else { 16 };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The other side was dropped (and, for the consumer, nothing is left).
    Abandoned,
    /// The deadline passed before a slot became available.
    Timeout,
    /// `acquire_filled` while slots are held through `hold_next`.
    SlotsHeld,
    /// `n_slots` or the total size cannot be allocated.
    TooLarge { n_slots: usize, slot_bytes: usize },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Abandoned => write!(f, "the other side of the ring was dropped"),
            RingError::Timeout => write!(f, "timed out waiting for a ring slot"),
            RingError::SlotsHeld => {
                write!(f, "acquire_filled needs all held slots released first")
            }
            RingError::TooLarge {
                n_slots,
                slot_bytes,
            } => {
                write!(
                    f,
                    "a ring of {n_slots} slots of {slot_bytes} bytes cannot be allocated"
                )
            }
        }
    }
}

impl std::error::Error for RingError {}

/// Metadata of one slot, written by the producer before publishing. Plain
/// atomics accessed `Relaxed`: their visibility is ordered by the `tail`
/// Release/Acquire pair, like the slot bytes.
struct Meta {
    block: AtomicU64,
    start: AtomicUsize,
    len: AtomicUsize,
}

struct Shared {
    /// Slots published by the producer. Written only by the producer.
    tail: CachePadded<AtomicUsize>,
    /// Slots released by the consumer. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Set (once, never cleared) when either side is dropped.
    abandoned: CachePadded<AtomicBool>,
    /// The consumer is (about to be) parked waiting for `tail` to move.
    consumer_waiting: AtomicBool,
    /// The producer is (about to be) parked waiting for `head` to move.
    producer_waiting: AtomicBool,
    consumer_unparker: Unparker,
    producer_unparker: Unparker,
    meta: Box<[Meta]>,
    /// `n_slots * slot_bytes` zeroed bytes, aligned to `SLOT_ALIGN`: the
    /// first byte of `mem`, taken once before any slot is handed out.
    buf: NonNull<u8>,
    /// Owns `buf`'s memory (heap or huge-page mapping), freed when the last
    /// `Arc<Shared>` drops; never accessed through this handle otherwise.
    #[cfg_attr(not(test), allow(dead_code))]
    mem: AlignedBuf,
    n_slots: usize,
    slot_bytes: usize,
}

// SAFETY: `buf` points into `mem`, a uniquely owned allocation freed only
// when `Shared` drops; all access to its bytes is partitioned between the single
// producer and single consumer by the head/tail protocol described in the
// module docs, so sharing `Shared` across threads is sound. All other fields
// are `Send + Sync` atomics / `Unparker`s.
unsafe impl Send for Shared {}
// SAFETY: as for `Send` above: concurrent `&Shared` access only touches
// atomics, and the slot bytes of one slot are only ever accessed by the side
// that currently owns that slot.
unsafe impl Sync for Shared {}

impl Shared {
    /// Raw pointer to slot `seq % n_slots`. Creating the pointer is safe;
    /// dereferencing it is governed by slot ownership.
    fn slot_ptr(&self, seq: usize) -> *mut u8 {
        let idx = seq % self.n_slots;
        // `wrapping_add` keeps this a safe pointer computation; `idx *
        // slot_bytes < mem.len()` so the result is in bounds.
        self.buf.as_ptr().wrapping_add(idx * self.slot_bytes)
    }
}

/// Creates a ring of `n_slots` buffers of `slot_bytes` each (rounded up to a
/// multiple of [`SLOT_ALIGN`], at least one page). Allocates once.
///
/// Errors with [`RingError::TooLarge`] if `n_slots == 0` or the total size
/// overflows the address space.
pub fn ring(n_slots: usize, slot_bytes: usize) -> Result<(Producer, Consumer), RingError> {
    let too_large = RingError::TooLarge {
        n_slots,
        slot_bytes,
    };
    // Rings of `sys::HUGE_FROM` bytes and more live in a huge-page mapping
    // (why: `AlignedBuf`).
    let mem = slot_bytes
        .max(1)
        .checked_next_multiple_of(SLOT_ALIGN)
        .filter(|_| n_slots > 0)
        .and_then(|slot| Some((slot, n_slots.checked_mul(slot)?)))
        .and_then(|(slot, total)| Some((slot, AlignedBuf::zeroed(total, SLOT_ALIGN)?)));
    let Some((slot_bytes, mut mem)) = mem else {
        return Err(too_large);
    };
    let buf = mem.as_ptr();
    let producer_parker = Parker::new();
    let consumer_parker = Parker::new();
    let shared = Arc::new(Shared {
        tail: CachePadded::new(AtomicUsize::new(0)),
        head: CachePadded::new(AtomicUsize::new(0)),
        abandoned: CachePadded::new(AtomicBool::new(false)),
        consumer_waiting: AtomicBool::new(false),
        producer_waiting: AtomicBool::new(false),
        consumer_unparker: consumer_parker.unparker().clone(),
        producer_unparker: producer_parker.unparker().clone(),
        meta: (0..n_slots)
            .map(|_| Meta {
                block: AtomicU64::new(0),
                start: AtomicUsize::new(0),
                len: AtomicUsize::new(0),
            })
            .collect(),
        buf,
        mem,
        n_slots,
        slot_bytes,
    });
    Ok((
        Producer {
            shared: Arc::clone(&shared),
            tail: 0,
            cached_head: 0,
            parker: producer_parker,
        },
        Consumer {
            shared,
            head: 0,
            read: 0,
            cached_tail: 0,
            parker: consumer_parker,
        },
    ))
}

enum Poll<T> {
    Ready(T),
    Pending,
    Abandoned,
}

/// Spin, yield, then park until `poll` is ready or abandoned or `deadline`.
///
/// Lost-wakeup freedom: before parking we store `waiting = true`, issue a
/// `SeqCst` fence and poll again; the notifier stores its counter, issues a
/// `SeqCst` fence and then reads `waiting` (see [`notify`]). By the fence
/// rules at least one of the two sees the other's store: either our re-poll
/// sees the new counter, or the notifier sees `waiting` and unparks us (the
/// unpark token persists, so it also works if we have not parked yet).
fn wait<T>(
    parker: &Parker,
    waiting: &AtomicBool,
    deadline: Option<Instant>,
    mut poll: impl FnMut() -> Poll<T>,
) -> Result<T, RingError> {
    for i in 0..SPIN + YIELDS {
        match poll() {
            Poll::Ready(t) => return Ok(t),
            Poll::Abandoned => return Err(RingError::Abandoned),
            Poll::Pending => {}
        }
        if i < SPIN {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    loop {
        if let Some(d) = deadline {
            if Instant::now() >= d {
                return Err(RingError::Timeout);
            }
        }
        waiting.store(true, Ordering::Relaxed);
        // Pairs with the fence in `notify` (Dekker: store flag / fence / load
        // counter here vs store counter / fence / load flag there).
        fence(Ordering::SeqCst);
        let r = poll();
        if matches!(r, Poll::Pending) {
            match deadline {
                None => parker.park(),
                Some(d) => parker.park_deadline(d),
            }
        }
        waiting.store(false, Ordering::Relaxed);
        match r {
            Poll::Ready(t) => return Ok(t),
            Poll::Abandoned => return Err(RingError::Abandoned),
            // Woken (or spurious / timed out): poll again at the loop top.
            Poll::Pending => {}
        }
    }
}

/// Wakes the other side if it announced it is waiting. Call after the
/// Release store of our counter.
fn notify(waiting: &AtomicBool, unparker: &Unparker) {
    // Pairs with the fence in `wait` (see there).
    fence(Ordering::SeqCst);
    if waiting.load(Ordering::Relaxed) {
        unparker.unpark();
    }
}

/// The I/O side: takes free slots, fills them, publishes them.
pub struct Producer {
    shared: Arc<Shared>,
    /// Authoritative copy of `shared.tail` (only we write it).
    tail: usize,
    /// Last observed `shared.head`; may lag behind (conservative).
    cached_head: usize,
    parker: Parker,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("n_slots", &self.shared.n_slots)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub fn n_slots(&self) -> usize {
        self.shared.n_slots
    }

    /// Bytes per slot (a multiple of [`SLOT_ALIGN`]).
    pub fn slot_bytes(&self) -> usize {
        self.shared.slot_bytes
    }

    /// True once the consumer has been dropped.
    pub fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::Acquire)
    }

    /// Number of slots published so far.
    pub fn published(&self) -> usize {
        self.tail
    }

    /// Waits for a free slot (or until `deadline`). Returns
    /// [`RingError::Abandoned`] as soon as the consumer is gone, even if free
    /// slots remain (nobody would read them).
    pub fn acquire_free(&mut self, deadline: Option<Instant>) -> Result<SlotMut<'_>, RingError> {
        let shared = &*self.shared;
        let n = shared.n_slots;
        let tail = self.tail;
        let cached_head = &mut self.cached_head;
        wait(&self.parker, &shared.producer_waiting, deadline, || {
            // Acquire pairs with the Release in `Consumer::drop`.
            if shared.abandoned.load(Ordering::Acquire) {
                return Poll::Abandoned;
            }
            if tail.wrapping_sub(*cached_head) < n {
                return Poll::Ready(());
            }
            // Acquire pairs with the Release store of `head` in
            // `Consumer::release_oldest`: the consumer's reads of the slot
            // we are about to overwrite happen-before our writes.
            *cached_head = shared.head.load(Ordering::Acquire);
            if tail.wrapping_sub(*cached_head) < n {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })?;
        Ok(SlotMut { producer: self })
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Release pairs with the Acquire loads of `abandoned` in the
        // consumer: every slot we published is visible once it sees the flag.
        self.shared.abandoned.store(true, Ordering::Release);
        // Unconditional: the token persists, so a consumer about to park
        // returns at once and re-polls (unpark synchronizes-with park).
        self.shared.consumer_unparker.unpark();
    }
}

/// A free slot owned by the producer until published (dropping it without
/// publishing leaves it free).
pub struct SlotMut<'a> {
    producer: &'a mut Producer,
}

impl SlotMut<'_> {
    /// The slot's whole buffer (`slot_bytes` long, 4096-aligned).
    pub fn buf(&mut self) -> &mut [u8] {
        let shared = &*self.producer.shared;
        let ptr = shared.slot_ptr(self.producer.tail);
        // SAFETY: slot `tail` is producer-owned: `acquire_free` established
        // `tail - head < n_slots` with `head` loaded Acquire (so the
        // consumer's last reads of it happened-before), and the consumer only
        // touches slots in `[head, tail)`. `self` mutably borrows the Producer
        // and this method borrows `self` mutably, so no other reference to
        // the slot exists. `ptr..ptr+slot_bytes` lies inside the zeroed
        // (hence initialised) allocation made in `ring`.
        unsafe { std::slice::from_raw_parts_mut(ptr, shared.slot_bytes) }
    }

    /// True once the consumer has been dropped (lets a long fill stop early).
    pub fn is_abandoned(&self) -> bool {
        self.producer.is_abandoned()
    }

    /// Publishes `buf()[..len]` as `block`.
    pub fn publish(self, block: u64, len: usize) {
        self.publish_range(block, 0, len);
    }

    /// Publishes `buf()[start..start + len]` as `block`.
    ///
    /// Panics if the range exceeds the slot (the consumer builds a slice
    /// from it, so this is checked, not trusted).
    pub fn publish_range(self, block: u64, start: usize, len: usize) {
        let p = self.producer;
        let shared = &*p.shared;
        assert!(
            start
                .checked_add(len)
                .is_some_and(|end| end <= shared.slot_bytes),
            "publish range {start}+{len} exceeds slot of {} bytes",
            shared.slot_bytes
        );
        let m = &shared.meta[p.tail % shared.n_slots];
        m.block.store(block, Ordering::Relaxed);
        m.start.store(start, Ordering::Relaxed);
        m.len.store(len, Ordering::Relaxed);
        p.tail = p.tail.wrapping_add(1);
        // Release pairs with the Acquire load of `tail` in
        // `Consumer::hold_next`: slot bytes and meta written above are
        // visible to the consumer once it sees the new tail.
        shared.tail.store(p.tail, Ordering::Release);
        notify(&shared.consumer_waiting, &shared.consumer_unparker);
    }
}

/// A filled slot as seen by the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    pub block: u64,
    pub len: usize,
}

/// The compute side: takes filled slots in order, releases them in order.
///
/// Two styles: [`Consumer::acquire_filled`] returns a guard that releases on
/// drop (one slot at a time); [`Consumer::hold_next`] /
/// [`Consumer::held`] / [`Consumer::release_oldest`] let the consumer hold
/// several filled slots at once (up to `n_slots`), released oldest first.
pub struct Consumer {
    shared: Arc<Shared>,
    /// Authoritative copy of `shared.head` (only we write it).
    head: usize,
    /// Slots taken by `hold_next`; `[head, read)` are held, `read <= tail`.
    read: usize,
    /// Last observed `shared.tail`; may lag behind (conservative).
    cached_tail: usize,
    parker: Parker,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("held", &self.held_count())
            .field("n_slots", &self.shared.n_slots)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub fn n_slots(&self) -> usize {
        self.shared.n_slots
    }

    pub fn slot_bytes(&self) -> usize {
        self.shared.slot_bytes
    }

    /// True once the producer has been dropped (filled slots may remain).
    pub fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::Acquire)
    }

    /// Number of slots currently held (taken, not yet released).
    pub fn held_count(&self) -> usize {
        self.read.wrapping_sub(self.head)
    }

    /// Waits for the next filled slot and returns a guard that releases it
    /// on drop. Errors with [`RingError::SlotsHeld`] if slots are held
    /// through [`Consumer::hold_next`].
    pub fn acquire_filled(&mut self) -> Result<SlotRef<'_>, RingError> {
        self.acquire_filled_until(None)
    }

    /// [`Consumer::acquire_filled`] with a deadline.
    pub fn acquire_filled_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<SlotRef<'_>, RingError> {
        if self.held_count() != 0 {
            return Err(RingError::SlotsHeld);
        }
        self.hold_next(deadline)?;
        Ok(SlotRef { consumer: self })
    }

    /// Waits for the next filled slot (after the held ones) and adds it to
    /// the held set. Drains slots published before the producer was dropped,
    /// then returns [`RingError::Abandoned`].
    pub fn hold_next(&mut self, deadline: Option<Instant>) -> Result<Filled, RingError> {
        let shared = &*self.shared;
        let read = self.read;
        let cached_tail = &mut self.cached_tail;
        wait(&self.parker, &shared.consumer_waiting, deadline, || {
            if read != *cached_tail {
                return Poll::Ready(());
            }
            // Acquire pairs with the Release store of `tail` in
            // `SlotMut::publish_range`: the slot's bytes and meta are visible.
            *cached_tail = shared.tail.load(Ordering::Acquire);
            if read != *cached_tail {
                return Poll::Ready(());
            }
            // Acquire pairs with the Release in `Producer::drop`; the final
            // `tail` store happened-before it, so re-reading `tail` after
            // seeing the flag drains everything that was published.
            if shared.abandoned.load(Ordering::Acquire) {
                *cached_tail = shared.tail.load(Ordering::Acquire);
                if read != *cached_tail {
                    return Poll::Ready(());
                }
                return Poll::Abandoned;
            }
            Poll::Pending
        })?;
        let m = &shared.meta[read % shared.n_slots];
        let filled = Filled {
            block: m.block.load(Ordering::Relaxed),
            len: m.len.load(Ordering::Relaxed),
        };
        self.read = read.wrapping_add(1);
        Ok(filled)
    }

    /// The `i`-th held slot (0 = oldest) as `(block, bytes)`.
    pub fn held(&self, i: usize) -> Option<(u64, &[u8])> {
        if i >= self.held_count() {
            return None;
        }
        let seq = self.head.wrapping_add(i);
        let shared = &*self.shared;
        let m = &shared.meta[seq % shared.n_slots];
        let block = m.block.load(Ordering::Relaxed);
        let start = m.start.load(Ordering::Relaxed);
        let len = m.len.load(Ordering::Relaxed);
        let ptr = shared.slot_ptr(seq).wrapping_add(start);
        // SAFETY: `seq` is in `[head, read)` and `read <= tail` as observed by
        // the Acquire load in `hold_next`, so the slot is consumer-owned and
        // its bytes/meta were published (happens-before via tail
        // Release/Acquire). The producer does not write it until `head`
        // passes `seq`, which only `release_oldest(&mut self)` does — not
        // possible while the returned borrow of `&self` lives.
        // `start + len <= slot_bytes` was asserted in `publish_range`, so the
        // range lies inside the zeroed (initialised) allocation.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        Some((block, bytes))
    }

    /// Releases the oldest held slot back to the producer. Returns false if
    /// nothing is held.
    pub fn release_oldest(&mut self) -> bool {
        if self.held_count() == 0 {
            return false;
        }
        self.head = self.head.wrapping_add(1);
        let shared = &*self.shared;
        // Release pairs with the Acquire load of `head` in
        // `Producer::acquire_free`: our reads of the slot complete before the
        // producer may overwrite it.
        shared.head.store(self.head, Ordering::Release);
        notify(&shared.producer_waiting, &shared.producer_unparker);
        true
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Release pairs with the Acquire loads of `abandoned` in the producer.
        self.shared.abandoned.store(true, Ordering::Release);
        self.shared.producer_unparker.unpark();
    }
}

/// A filled slot held by the consumer; released on drop or by `release`.
pub struct SlotRef<'a> {
    consumer: &'a mut Consumer,
}

impl SlotRef<'_> {
    pub fn block(&self) -> u64 {
        self.get().0
    }

    pub fn bytes(&self) -> &[u8] {
        self.get().1
    }

    /// `(block, bytes)`.
    pub fn get(&self) -> (u64, &[u8]) {
        // `acquire_filled` guarantees exactly one held slot while the guard
        // lives (it borrows the consumer mutably).
        self.consumer.held(0).expect("SlotRef holds a slot") // ok: type invariant
    }

    /// Gives the slot back to the producer (same as dropping the guard).
    pub fn release(self) {}
}

impl Drop for SlotRef<'_> {
    fn drop(&mut self) {
        self.consumer.release_oldest();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fill(buf: &mut [u8], seq: u64) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seq.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8;
        }
    }

    fn check(buf: &[u8], seq: u64) -> bool {
        buf.iter()
            .enumerate()
            .all(|(i, &b)| b == (seq.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
    }

    #[test]
    fn impossible_sizes_are_an_error_not_a_panic() {
        assert!(matches!(
            ring(0, 64),
            Err(RingError::TooLarge { n_slots: 0, .. })
        ));
        assert!(matches!(
            ring(4, usize::MAX - 10),
            Err(RingError::TooLarge { .. })
        ));
        assert!(matches!(
            ring(usize::MAX / 2, 8192),
            Err(RingError::TooLarge { .. })
        ));
    }

    #[test]
    fn slots_are_aligned_and_sized() {
        let (mut p, _c) = ring(3, 5000).unwrap();
        assert_eq!(p.slot_bytes(), 8192);
        for _ in 0..3 {
            let mut s = p.acquire_free(None).unwrap();
            assert_eq!(s.buf().as_ptr() as usize % SLOT_ALIGN, 0);
            assert_eq!(s.buf().len(), 8192);
            s.publish(0, 1);
        }
        // Full: a deadline in the past times out instead of blocking.
        assert_eq!(
            p.acquire_free(Some(Instant::now())).err(),
            Some(RingError::Timeout)
        );
    }

    #[test]
    fn stress_two_threads_ordered_contents() {
        // >= 1M handoffs in total (the test profile is opt-level 3).
        let n = if cfg!(miri) { 200 } else { 800_000 };
        stress(8, n);
    }

    #[test]
    fn stress_two_slots() {
        stress(2, if cfg!(miri) { 100 } else { 200_000 });
    }

    fn stress(n_slots: usize, n: u64) {
        let payload = if cfg!(miri) { 16 } else { 64 };
        let (mut p, mut c) = ring(n_slots, payload).unwrap();
        let t = std::thread::spawn(move || {
            for seq in 0..n {
                let mut s = p.acquire_free(None).unwrap();
                // Vary the published length (and thus start) per seq.
                let len = payload - (seq as usize % 8);
                let start = seq as usize % 8;
                fill(&mut s.buf()[start..start + len], seq);
                s.publish_range(seq, start, len);
            }
        });
        let mut seq = 0u64;
        while seq < n {
            // Alternate the two consumer styles.
            if seq.is_multiple_of(3) {
                let f = c.hold_next(None).unwrap();
                let f2 = if seq + 1 < n {
                    Some(c.hold_next(None).unwrap())
                } else {
                    None
                };
                assert_eq!(f.block, seq);
                let (b, bytes) = c.held(0).unwrap();
                assert_eq!((b, bytes.len()), (seq, f.len));
                assert!(check(bytes, seq), "bad bytes at {seq}");
                if let Some(f2) = f2 {
                    assert_eq!(f2.block, seq + 1);
                    let (b, bytes) = c.held(1).unwrap();
                    assert_eq!(b, seq + 1);
                    assert!(check(bytes, seq + 1), "bad bytes at {}", seq + 1);
                    assert!(c.release_oldest());
                    seq += 1;
                }
                assert!(c.release_oldest());
                assert!(!c.release_oldest());
                seq += 1;
            } else {
                let s = c.acquire_filled().unwrap();
                let (b, bytes) = s.get();
                assert_eq!(b, seq);
                assert_eq!(bytes.len(), payload - (seq as usize % 8));
                assert!(check(bytes, seq), "bad bytes at {seq}");
                s.release();
                seq += 1;
            }
        }
        t.join().unwrap();
        // Producer gone, nothing left.
        assert_eq!(c.acquire_filled().err(), Some(RingError::Abandoned));
    }

    /// Rings of 2 MiB and more live in a huge-page-advised mapping: the
    /// memory is zeroed, slots are aligned, contents survive the handoff
    /// across threads, and dropping both sides unmaps it.
    #[test]
    #[cfg_attr(miri, ignore = "mmap: the heap path is what miri checks")]
    fn large_ring_is_a_zeroed_mapping_and_hands_off() {
        let slot = (1 << 20) + 1;
        let (mut p, mut c) = ring(3, slot).unwrap();
        let mapped = p.shared.mem.is_mapped();
        assert_eq!(mapped, std::env::var_os("TPI_NO_HUGEPAGES").is_none());
        assert_eq!(p.slot_bytes(), (1 << 20) + 4096);
        let n = 24u64;
        let t = std::thread::spawn(move || {
            for seq in 0..n {
                let mut s = p.acquire_free(None).unwrap();
                assert_eq!(s.buf().as_ptr() as usize % SLOT_ALIGN, 0);
                if seq < 3 {
                    assert!(s.buf().iter().all(|&b| b == 0), "slot {seq} not zeroed");
                }
                fill(&mut s.buf()[..slot], seq);
                s.publish(seq, slot);
            }
        });
        for seq in 0..n {
            let s = c.acquire_filled().unwrap();
            let (b, bytes) = s.get();
            assert_eq!((b, bytes.len()), (seq, slot));
            assert!(check(bytes, seq), "bad bytes at {seq}");
        }
        t.join().unwrap();
        drop(c);
    }

    /// A deadline that only a hang reaches. Miri runs 100-1000x slower on
    /// the wall clock, more on a loaded machine.
    fn far_off() -> Duration {
        Duration::from_secs(if cfg!(miri) { 900 } else { 10 })
    }

    #[test]
    fn producer_dropped_mid_stream() {
        let (mut p, mut c) = ring(2, 64).unwrap();
        let t = std::thread::spawn(move || {
            for seq in 0..5u64 {
                let mut s = p.acquire_free(None).unwrap();
                fill(s.buf(), seq);
                s.publish(seq, 64);
            }
            // Park the consumer first, then drop the producer.
            std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
            drop(p);
        });
        let deadline = Instant::now() + far_off();
        for seq in 0..5u64 {
            let s = c.acquire_filled_until(Some(deadline)).unwrap();
            assert_eq!(s.block(), seq);
            assert!(check(s.bytes(), seq));
        }
        // Blocks (parks) until the producer drops, then Abandoned — not
        // Timeout, not a hang.
        assert_eq!(
            c.acquire_filled_until(Some(deadline)).err(),
            Some(RingError::Abandoned)
        );
        assert!(Instant::now() < deadline);
        t.join().unwrap();
    }

    #[test]
    fn published_then_dropped_is_drained() {
        let (mut p, mut c) = ring(3, 64).unwrap();
        for seq in 0..3u64 {
            let mut s = p.acquire_free(None).unwrap();
            fill(s.buf(), seq);
            s.publish(seq, 10);
        }
        drop(p);
        for seq in 0..3u64 {
            let f = c.hold_next(None).unwrap();
            assert_eq!(
                f,
                Filled {
                    block: seq,
                    len: 10
                }
            );
        }
        assert_eq!(c.hold_next(None), Err(RingError::Abandoned));
        assert_eq!(c.acquire_filled().err(), Some(RingError::SlotsHeld));
    }

    #[test]
    fn consumer_dropped_producer_sees_abandoned() {
        let (mut p, c) = ring(2, 64).unwrap();
        for seq in 0..2u64 {
            p.acquire_free(None).unwrap().publish(seq, 1);
        }
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 20 }));
            drop(c);
        });
        let deadline = Instant::now() + far_off();
        // Ring is full: parks until the consumer drops.
        assert_eq!(
            p.acquire_free(Some(deadline)).err(),
            Some(RingError::Abandoned)
        );
        assert!(p.is_abandoned());
        t.join().unwrap();
    }

    #[test]
    fn unpublished_slot_stays_free() {
        let (mut p, mut c) = ring(1, 64).unwrap();
        {
            let mut s = p.acquire_free(None).unwrap();
            s.buf()[0] = 9;
        } // dropped without publish
        p.acquire_free(None).unwrap().publish(7, 1);
        let s = c.acquire_filled().unwrap();
        assert_eq!(s.get(), (7, &[9u8][..]));
    }

    #[test]
    #[should_panic(expected = "exceeds slot")]
    fn publish_out_of_bounds_panics() {
        let (mut p, _c) = ring(1, 4096).unwrap();
        p.acquire_free(None).unwrap().publish_range(0, 1, 4096);
    }

    #[test]
    fn sides_are_send() {
        fn is_send<T: Send>() {}
        is_send::<Producer>();
        is_send::<Consumer>();
    }
}
