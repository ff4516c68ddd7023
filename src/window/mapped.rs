//! The window's mapped feed: blocks as read-only mappings of the slice file,
//! populated ahead by the I/O thread and unmapped behind compute.
//!
//! From a warm page cache a `pread` is a memory copy: every pass moves the
//! weights through the memory bus twice (page cache to slot, slot to the
//! GEMV), and the copy shares that bus with the compute it is meant to hide
//! behind. A mapping moves them once: the I/O thread only builds page-table
//! entries for the next block (`MADV_POPULATE_READ`, which also reads pages
//! the page cache lacks), compute reads the page cache in place, and a
//! released block's mapping goes back to the I/O thread to be unmapped. The
//! rank's resident set is still at most W blocks; the page cache is what it
//! would be with buffered `pread`.
//!
//! Slot ownership moves through two bounded channels: `credits` (compute to
//! I/O, carrying the mapping to unmap) and `filled` (I/O to compute). W
//! credits circulate, so at most W blocks are mapped at any time. Either side
//! dropping its end wakes the other with an error.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam::channel::{bounded, Receiver, RecvError, Sender};
use memmap2::{Advice, Mmap};

use super::{lock, Block, IoShared, WindowError, CHUNK};

/// Compute's end of the feed.
pub(super) struct MapFeed {
    filled: Receiver<(usize, Mmap)>,
    credits: Sender<Option<Mmap>>,
    held: VecDeque<Mmap>,
    n_slots: usize,
    slot_bytes: usize,
    shared: Arc<IoShared>,
}

/// The I/O thread's end.
pub(super) struct MapIo {
    file: File,
    blocks: Vec<Block>,
    credits: Receiver<Option<Mmap>>,
    filled: Sender<(usize, Mmap)>,
}

impl Drop for MapFeed {
    fn drop(&mut self) {
        // Stops a populate in progress at its next chunk; the channels'
        // disconnection stops an idle I/O thread.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// A feed of `n_slots` mappings over `blocks` of `file`.
pub(super) fn feed(
    file: File,
    blocks: Vec<Block>,
    n_slots: usize,
    shared: Arc<IoShared>,
) -> (MapFeed, MapIo) {
    let (credit_tx, credit_rx) = bounded(n_slots);
    let (filled_tx, filled_rx) = bounded(n_slots);
    for _ in 0..n_slots {
        // Cannot fail: the channel has room for n_slots and its receiver
        // is alive.
        let _ = credit_tx.send(None);
    }
    let slot_bytes = blocks.iter().map(|b| b.1 as usize).max().unwrap_or(0);
    let feed = MapFeed {
        filled: filled_rx,
        credits: credit_tx,
        held: VecDeque::new(),
        n_slots,
        slot_bytes,
        shared,
    };
    let io = MapIo {
        file,
        blocks,
        credits: credit_rx,
        filled: filled_tx,
    };
    (feed, io)
}

impl MapFeed {
    pub(super) fn n_slots(&self) -> usize {
        self.n_slots
    }

    pub(super) fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Waits for the next mapped block, which must be `want`.
    pub(super) fn hold_next(&mut self, want: usize) -> Result<(), WindowError> {
        match self.filled.recv() {
            Ok((l, m)) if l == want => {
                self.held.push_back(m);
                Ok(())
            }
            Ok((l, _)) => Err(WindowError::Invalid(format!(
                "I/O thread delivered block {l} where {want} was due"
            ))),
            Err(RecvError) => Err(lock(&self.shared.error)
                .clone()
                .unwrap_or(WindowError::IoThreadGone)),
        }
    }

    /// The `i`-th held block, oldest first.
    pub(super) fn held(&self, i: usize) -> Option<&[u8]> {
        self.held.get(i).map(|m| &m[..])
    }

    /// Hands the oldest held block back to the I/O thread (which unmaps it
    /// and maps the next block due). False if none is held.
    pub(super) fn release_oldest(&mut self) -> bool {
        let Some(m) = self.held.pop_front() else {
            return false;
        };
        // A gone I/O thread shows at the next `hold_next`; the mapping is
        // then simply dropped here.
        let _ = self.credits.send(Some(m));
        true
    }
}

/// Ends the I/O thread quietly (compute gone).
struct Stopped;

impl MapIo {
    /// The I/O thread: for each credit, unmap what it carries and map and
    /// populate the next block in cyclic order.
    pub(super) fn run(self, shared: &IoShared) {
        let n = self.blocks.len();
        let mut l = 0usize;
        while let Ok(used) = self.credits.recv() {
            if n == 0 {
                return;
            }
            let t0 = Instant::now();
            drop(used);
            let mapped = self.map_block(l, self.blocks[l], shared);
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            shared.busy_ns.fetch_add(ns, Ordering::Relaxed);
            match mapped {
                Ok(m) => {
                    shared.blocks_read.fetch_add(1, Ordering::Relaxed);
                    if self.filled.send((l, m)).is_err() {
                        return; // compute gone
                    }
                }
                Err(Ok(e)) => {
                    *lock(&shared.error) = Some(e);
                    return; // drops `filled`: compute wakes and sees it
                }
                Err(Err(Stopped)) => return,
            }
            l = (l + 1) % n;
        }
    }

    /// Maps block `l` and brings all its pages in.
    fn map_block(
        &self,
        l: usize,
        (offset, len): Block,
        shared: &IoShared,
    ) -> Result<Mmap, Result<WindowError, Stopped>> {
        let err = |offset: u64, e: std::io::Error| {
            Err(Ok(WindowError::Io {
                block: l,
                offset,
                source: Arc::new(e),
            }))
        };
        // A block past the end of the file would map pages that raise
        // SIGBUS when touched: refuse it as a short read instead.
        let file_len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return err(offset, e),
        };
        if offset.saturating_add(len) > file_len {
            let e = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "short file: block ends at {} but the file has {file_len} bytes",
                    offset + len
                ),
            );
            return err(offset, e);
        }
        // Sizes were checked against usize in `start_inner`.
        let len = len as usize;
        let m = match crate::sys::map_file(&self.file, Some((offset, len))) {
            Ok(m) => m,
            Err(e) => return err(offset, e),
        };
        // Start the disk reads of the whole block at once (a no-op for
        // pages already cached; a hint, refusal is harmless), then wait for
        // its pages chunk by chunk.
        let _ = m.advise(Advice::WillNeed);
        let mut done = 0usize;
        while done < len {
            if shared.stop.load(Ordering::Relaxed) {
                return Err(Err(Stopped));
            }
            let end = (done + CHUNK).min(len);
            if let Err(e) = populate(&m, done, end) {
                return err(offset + done as u64, e);
            }
            shared
                .bytes_read
                .fetch_add((end - done) as u64, Ordering::Relaxed);
            done = end;
        }
        Ok(m)
    }
}

/// Brings `m[start..end]` into the page tables. Without
/// `MADV_POPULATE_READ` (Linux < 5.14, other systems) touches one byte per
/// page instead.
fn populate(m: &Mmap, start: usize, end: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    match m.advise_range(Advice::PopulateRead, start, end - start) {
        Ok(()) => return Ok(()),
        // EINVAL: the kernel does not know the advice.
        Err(e) if e.raw_os_error() == Some(crate::sys::EINVAL) => {}
        Err(e) => return Err(e),
    }
    let mut acc = 0u8;
    for &b in m[start..end].iter().step_by(4096) {
        acc ^= b;
    }
    std::hint::black_box(acc);
    Ok(())
}
