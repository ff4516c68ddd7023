//! Weight window: keep only `n_slots` blocks (one transformer layer's weight
//! slice each, a byte range of the per-rank slice file) resident, with an I/O
//! thread reading ahead into a ring of slots while compute works.
//!
//! Blocks are consumed in cyclic order `0, 1, .., n-1, 0, 1, ..` (one pass per
//! generated token): `acquire(l)` returns block `l`'s bytes, `release(l)`
//! hands its slot back to the I/O thread, which refills it with the next
//! block due. When `n_slots >= n_blocks` the window is *resident*: every block
//! is read once (in the background, in order) and stays; `release` is then a
//! no-op for the memory and `acquire` returns the same bytes every pass.
//!
//! The ordering contract is enforced in both modes (so a bug shows up even
//! on a device big enough to run resident).
//!
//! Blocks come in one of three ways ([`Reads`]): `pread` through the page
//! cache or with `O_DIRECT` into the slots of a lock-free ring ([`ring`]),
//! or, when the page cache can keep the slice, as mappings of the page
//! cache populated ahead by the I/O thread (`mapped`): no copy at all, which
//! from a warm cache is 3-4.5x faster than the `pread` copy.

mod mapped;
pub mod policy;
pub mod ring;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ring::{Consumer, Producer, RingError, SlotMut, SLOT_ALIGN};

use crate::sys::{EINVAL, O_DIRECT};

/// Largest single `pread` (or populate of a mapping); the I/O thread checks
/// for shutdown between chunks so dropping the window is prompt even for big
/// blocks on slow storage.
const CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowOpts {
    pub reads: Reads,
}

/// How the I/O thread brings a block in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reads {
    /// `pread` through the page cache into the ring's slots.
    #[default]
    Buffered,
    /// `pread` with `O_DIRECT` (bypassing the page cache) into the slots.
    /// Falls back to buffered reads if the file system refuses it (see
    /// [`WindowStats::direct`]).
    Direct,
    /// Map the block from the page cache and populate its page tables;
    /// compute reads the page cache in place (no copy). A resident window
    /// reads buffered instead: once read, its blocks stay in huge pages.
    Mapped,
}

/// A block: `(offset, len)` in the file.
pub type Block = (u64, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowStats {
    /// Bytes returned by `pread` (includes `O_DIRECT` alignment padding).
    pub bytes_read: u64,
    /// Block reads completed by the I/O thread.
    pub blocks_read: u64,
    /// Time compute spent blocked in `acquire`.
    pub io_wait: Duration,
    /// Time the I/O thread spent reading blocks (not waiting for a free
    /// slot). Against the wall time of the same run it tells how busy the
    /// pipeline kept the storage, whatever speed the storage had that minute.
    pub io_busy: Duration,
    /// `acquire` calls that returned bytes.
    pub acquires: u64,
    pub resident: bool,
    pub n_slots: usize,
    pub slot_bytes: usize,
    /// `O_DIRECT` actually in use (false if not asked or fallen back).
    pub direct: bool,
    /// Blocks are mappings of the page cache ([`Reads::Mapped`]).
    pub mapped: bool,
    /// Why `O_DIRECT` was asked for but is not in use.
    pub direct_fallback: Option<String>,
}

#[derive(Debug, Clone)]
pub enum WindowError {
    /// `acquire` called out of cyclic order.
    OutOfOrder { expected: usize, got: usize },
    /// `release` of a block that is not the oldest acquired one.
    NotHeld { block: usize, oldest: Option<usize> },
    /// Block index out of range.
    NoSuchBlock { block: usize, n_blocks: usize },
    /// Every slot is held; acquiring another would deadlock.
    AllSlotsHeld { block: usize, n_slots: usize },
    /// Bad arguments to `start`.
    Invalid(String),
    /// The ring's `n_slots x slot_bytes` cannot be allocated.
    Alloc { n_slots: usize, slot_bytes: usize },
    /// Opening the file.
    Open {
        path: String,
        source: Arc<io::Error>,
    },
    /// A read failed (short read = `UnexpectedEof`) in the I/O thread.
    Io {
        block: usize,
        offset: u64,
        source: Arc<io::Error>,
    },
    /// The I/O thread is gone without reporting an error (it panicked).
    IoThreadGone,
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowError::OutOfOrder { expected, got } => write!(
                f,
                "window: acquire out of order: expected block {expected}, got {got}"
            ),
            WindowError::NotHeld { block, oldest } => match oldest {
                Some(o) => write!(
                    f,
                    "window: release of block {block}, but the oldest held block is {o}"
                ),
                None => write!(f, "window: release of block {block}, but none is held"),
            },
            WindowError::NoSuchBlock { block, n_blocks } => {
                write!(f, "window: block {block} out of range ({n_blocks} blocks)")
            }
            WindowError::AllSlotsHeld { block, n_slots } => write!(
                f,
                "window: acquire of block {block} with all {n_slots} slots held (release first)"
            ),
            WindowError::Alloc { n_slots, slot_bytes } => write!(
                f,
                "window: cannot allocate {n_slots} slots of {} ({} in all); use a smaller --memory-window",
                crate::progress::human_bytes(*slot_bytes as f64),
                crate::progress::human_bytes((*n_slots as f64) * (*slot_bytes as f64))
            ),
            WindowError::Invalid(m) => write!(f, "window: {m}"),
            WindowError::Open { path, source } => write!(f, "window: open {path}: {source}"),
            WindowError::Io {
                block,
                offset,
                source,
            } => write!(
                f,
                "window: reading block {block} at offset {offset}: {source}"
            ),
            WindowError::IoThreadGone => write!(f, "window: I/O thread exited unexpectedly"),
        }
    }
}

impl std::error::Error for WindowError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WindowError::Open { source, .. } | WindowError::Io { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// State shared with the I/O thread (off the hot path except the counters).
#[derive(Default)]
struct IoShared {
    bytes_read: AtomicU64,
    /// Nanoseconds spent in `read_block`.
    busy_ns: AtomicU64,
    blocks_read: AtomicU64,
    direct: AtomicBool,
    /// Set when compute drops its end: stop at the next chunk.
    stop: AtomicBool,
    direct_fallback: Mutex<Option<String>>,
    /// Set by the I/O thread before it drops the producer.
    error: Mutex<Option<WindowError>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Joins the I/O thread on drop. Declared after `feed` in [`Window`]:
/// fields drop in declaration order, so compute's end of the feed is dropped
/// first (which wakes and stops the I/O thread) and the join is prompt.
struct Joiner(Option<JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

pub struct Window {
    // NB: drop order matters, see `Joiner`.
    feed: Feed,
    _io: Joiner,
    shared: Arc<IoShared>,
    n_blocks: usize,
    resident: bool,
    /// Next block `acquire` accepts.
    next: usize,
    /// Acquired, not yet released, oldest first.
    held: VecDeque<usize>,
    /// Resident: blocks taken from the ring so far (ring slot i = block i).
    received: usize,
    io_wait: Duration,
    acquires: u64,
    /// First fatal error, returned again by later `acquire`s.
    failed: Option<WindowError>,
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("n_blocks", &self.n_blocks)
            .field("resident", &self.resident)
            .field("next", &self.next)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// Compute's end of the block feed.
enum Feed {
    /// Slots of the lock-free ring, filled by `pread`.
    Ring(Consumer),
    /// Mappings of the file, populated ahead.
    Mapped(mapped::MapFeed),
}

impl Feed {
    fn n_slots(&self) -> usize {
        match self {
            Feed::Ring(c) => c.n_slots(),
            Feed::Mapped(m) => m.n_slots(),
        }
    }

    fn slot_bytes(&self) -> usize {
        match self {
            Feed::Ring(c) => c.slot_bytes(),
            Feed::Mapped(m) => m.slot_bytes(),
        }
    }

    /// The `i`-th held block's bytes, oldest first.
    fn held(&self, i: usize) -> Option<&[u8]> {
        match self {
            Feed::Ring(c) => c.held(i).map(|(_, b)| b),
            Feed::Mapped(m) => m.held(i),
        }
    }

    fn release_oldest(&mut self) -> bool {
        match self {
            Feed::Ring(c) => c.release_oldest(),
            Feed::Mapped(m) => m.release_oldest(),
        }
    }
}

struct IoFiles {
    buffered: File,
    direct: Option<File>,
}

fn open_direct(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(flag) = O_DIRECT else {
        return Err("O_DIRECT not supported on this target".into());
    };
    OpenOptions::new()
        .read(true)
        .custom_flags(flag)
        .open(path)
        .map_err(|e| format!("open with O_DIRECT: {e}"))
}

impl Window {
    /// Opens `path` and starts the window (see [`Window::start`]).
    pub fn open(
        path: &Path,
        blocks: Vec<Block>,
        n_slots: usize,
        opts: WindowOpts,
    ) -> Result<Window, WindowError> {
        let file = File::open(path).map_err(|e| WindowError::Open {
            path: path.display().to_string(),
            source: Arc::new(e),
        })?;
        let direct = if opts.reads == Reads::Direct {
            Some(open_direct(path))
        } else {
            None
        };
        Self::start_inner(file, direct, opts.reads, blocks, n_slots)
    }

    /// Starts the I/O thread over an open file. `blocks[l] = (offset, len)`.
    /// With `opts.direct` the file is reopened through `/proc/self/fd` with
    /// `O_DIRECT` (falling back to buffered reads if that fails).
    pub fn start(
        file: File,
        blocks: Vec<Block>,
        n_slots: usize,
        opts: WindowOpts,
    ) -> Result<Window, WindowError> {
        let direct = if opts.reads == Reads::Direct {
            use std::os::fd::AsRawFd;
            let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
            Some(open_direct(Path::new(&proc_path)))
        } else {
            None
        };
        Self::start_inner(file, direct, opts.reads, blocks, n_slots)
    }

    fn start_inner(
        file: File,
        direct: Option<Result<File, String>>,
        reads: Reads,
        blocks: Vec<Block>,
        n_slots: usize,
    ) -> Result<Window, WindowError> {
        if n_slots == 0 {
            return Err(WindowError::Invalid("n_slots must be at least 1".into()));
        }
        let n_blocks = blocks.len();
        let mut slot_bytes = 0usize;
        for (l, &(off, len)) in blocks.iter().enumerate() {
            let need = off
                .checked_add(len)
                .map(|_| (off % SLOT_ALIGN as u64) + len)
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| n.checked_next_multiple_of(SLOT_ALIGN))
                .ok_or_else(|| {
                    WindowError::Invalid(format!("block {l} ({off}+{len}) too large"))
                })?;
            slot_bytes = slot_bytes.max(need);
        }
        let resident = n_slots >= n_blocks;
        let shared = Arc::new(IoShared::default());
        let spawn = |f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name("tpi-window-io".into())
                .spawn(f)
                .map_err(|e| WindowError::Invalid(format!("spawn I/O thread: {e}")))
        };
        if reads == Reads::Mapped && !resident {
            let (feed, io) = mapped::feed(file, blocks, n_slots, Arc::clone(&shared));
            let io_shared = Arc::clone(&shared);
            let handle = spawn(Box::new(move || io.run(&io_shared)))?;
            return Ok(Window::new(
                Feed::Mapped(feed),
                handle,
                shared,
                n_blocks,
                false,
            ));
        }
        // Resident: exactly one slot per block, never recycled.
        let ring_slots = if resident { n_blocks.max(1) } else { n_slots };
        let (producer, consumer) = ring::ring(ring_slots, slot_bytes).map_err(|e| match e {
            RingError::TooLarge {
                n_slots,
                slot_bytes,
            } => WindowError::Alloc {
                n_slots,
                slot_bytes,
            },
            e => WindowError::Invalid(e.to_string()),
        })?;

        let direct_file = match direct {
            None => None,
            Some(Ok(f)) => {
                shared.direct.store(true, Ordering::Relaxed);
                Some(f)
            }
            Some(Err(why)) => {
                *lock(&shared.direct_fallback) = Some(why);
                None
            }
        };
        let files = IoFiles {
            buffered: file,
            direct: direct_file,
        };
        let io_shared = Arc::clone(&shared);
        let handle = spawn(Box::new(move || {
            io_thread(producer, files, &blocks, resident, &io_shared)
        }))?;
        Ok(Window::new(
            Feed::Ring(consumer),
            handle,
            shared,
            n_blocks,
            resident,
        ))
    }

    fn new(
        feed: Feed,
        handle: JoinHandle<()>,
        shared: Arc<IoShared>,
        n_blocks: usize,
        resident: bool,
    ) -> Window {
        Window {
            feed,
            _io: Joiner(Some(handle)),
            shared,
            n_blocks,
            resident,
            next: 0,
            held: VecDeque::new(),
            received: 0,
            io_wait: Duration::ZERO,
            acquires: 0,
            failed: None,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn is_resident(&self) -> bool {
        self.resident
    }

    /// The block the next `acquire` must ask for.
    pub fn next_block(&self) -> usize {
        self.next
    }

    /// Returns block `l`'s bytes, waiting for the I/O thread if needed.
    /// `l` must be the next block in cyclic order.
    pub fn acquire(&mut self, l: usize) -> Result<&[u8], WindowError> {
        if l >= self.n_blocks {
            return Err(WindowError::NoSuchBlock {
                block: l,
                n_blocks: self.n_blocks,
            });
        }
        if l != self.next {
            return Err(WindowError::OutOfOrder {
                expected: self.next,
                got: l,
            });
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.resident {
            while self.received <= l {
                self.take_next(self.received)?;
                self.received += 1;
            }
        } else {
            if self.held.len() == self.feed.n_slots() {
                return Err(WindowError::AllSlotsHeld {
                    block: l,
                    n_slots: self.feed.n_slots(),
                });
            }
            self.take_next(l)?;
        }
        self.held.push_back(l);
        self.next = (l + 1) % self.n_blocks;
        self.acquires += 1;
        let i = if self.resident {
            l
        } else {
            self.held.len() - 1
        };
        // The slot was taken just above; None would be a ring bug.
        let bytes = self
            .feed
            .held(i)
            .ok_or_else(|| WindowError::Invalid(format!("block {l}: slot {i} is not held")))?;
        Ok(bytes)
    }

    /// Takes the next filled slot from the ring, which must carry `want`.
    fn take_next(&mut self, want: usize) -> Result<(), WindowError> {
        let t0 = Instant::now();
        let consumer = match &mut self.feed {
            Feed::Ring(c) => c,
            Feed::Mapped(m) => {
                let r = m.hold_next(want);
                self.io_wait += t0.elapsed();
                return r.inspect_err(|e| self.failed = Some(e.clone()));
            }
        };
        let r = consumer.hold_next(None);
        self.io_wait += t0.elapsed();
        let err = match r {
            Ok(f) if f.block == want as u64 => return Ok(()),
            Ok(f) => WindowError::Invalid(format!(
                "I/O thread delivered block {} where {want} was due",
                f.block
            )),
            Err(RingError::Abandoned) => lock(&self.shared.error)
                .clone()
                .unwrap_or(WindowError::IoThreadGone),
            Err(e) => WindowError::Invalid(format!("ring: {e}")),
        };
        self.failed = Some(err.clone());
        Err(err)
    }

    /// Releases block `l`, which must be the oldest acquired block. In
    /// windowed mode its slot goes back to the I/O thread at once.
    pub fn release(&mut self, l: usize) -> Result<(), WindowError> {
        if self.held.front() != Some(&l) {
            return Err(WindowError::NotHeld {
                block: l,
                oldest: self.held.front().copied(),
            });
        }
        self.held.pop_front();
        if !self.resident {
            let released = self.feed.release_oldest();
            debug_assert!(released);
        }
        Ok(())
    }

    pub fn stats(&self) -> WindowStats {
        WindowStats {
            bytes_read: self.shared.bytes_read.load(Ordering::Relaxed),
            blocks_read: self.shared.blocks_read.load(Ordering::Relaxed),
            io_wait: self.io_wait,
            io_busy: Duration::from_nanos(self.shared.busy_ns.load(Ordering::Relaxed)),
            acquires: self.acquires,
            resident: self.resident,
            n_slots: self.feed.n_slots(),
            slot_bytes: self.feed.slot_bytes(),
            direct: self.shared.direct.load(Ordering::Relaxed),
            mapped: matches!(self.feed, Feed::Mapped(_)),
            direct_fallback: lock(&self.shared.direct_fallback).clone(),
        }
    }
}

/// Ends the I/O thread quietly (consumer gone).
struct Stopped;

fn io_thread(
    mut producer: Producer,
    mut files: IoFiles,
    blocks: &[Block],
    resident: bool,
    shared: &IoShared,
) {
    let n = blocks.len();
    if n == 0 {
        return;
    }
    let mut l = 0usize;
    let mut done = 0usize;
    loop {
        if resident && done == n {
            return; // every block read once; dropping the producer is fine
        }
        let Ok(mut slot) = producer.acquire_free(None) else {
            return; // consumer dropped
        };
        let t0 = Instant::now();
        let read = read_block(&mut files, l, blocks[l], &mut slot, shared);
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.busy_ns.fetch_add(ns, Ordering::Relaxed);
        match read {
            Ok((start, len)) => {
                // Count before publishing: the publish Release orders it, so
                // a consumer that has the block also sees it in the stats.
                shared.blocks_read.fetch_add(1, Ordering::Relaxed);
                slot.publish_range(l as u64, start, len);
            }
            Err(Ok(e)) => {
                *lock(&shared.error) = Some(e);
                return; // drops the producer: the consumer wakes and sees it
            }
            Err(Err(Stopped)) => return,
        }
        done += 1;
        l = (l + 1) % n;
    }
}

/// Reads block `l` into the slot. Returns the `(start, len)` of the block's
/// bytes within the slot. `Err(Ok(e))` is an I/O error for the consumer,
/// `Err(Err(Stopped))` means the consumer is gone.
fn read_block(
    files: &mut IoFiles,
    l: usize,
    (offset, len): Block,
    slot: &mut SlotMut<'_>,
    shared: &IoShared,
) -> Result<(usize, usize), Result<WindowError, Stopped>> {
    // Sizes were checked against usize in `start_inner`.
    let len = len as usize;
    let align = SLOT_ALIGN as u64;
    let mut direct = files.direct.is_some();
    // O_DIRECT needs offset, length and buffer aligned: read the enclosing
    // aligned range (the slot is aligned and big enough, see `start_inner`).
    let (base, skip) = if direct {
        (offset - offset % align, (offset % align) as usize)
    } else {
        (offset, 0)
    };
    let need = skip + len;
    let mut want = if direct {
        need.next_multiple_of(SLOT_ALIGN)
    } else {
        need
    };
    let mut got = 0usize;
    while got < need {
        if slot.is_abandoned() {
            return Err(Err(Stopped));
        }
        let end = (got + CHUNK).min(want);
        let file = files.direct.as_ref().unwrap_or(&files.buffered);
        let pos = base + got as u64;
        match file.read_at(&mut slot.buf()[got..end], pos) {
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read: file ends after {got} of {need} bytes"),
                );
                return Err(Ok(WindowError::Io {
                    block: l,
                    offset: pos,
                    source: Arc::new(e),
                }));
            }
            Ok(k) => {
                got += k;
                shared.bytes_read.fetch_add(k as u64, Ordering::Relaxed);
                // A short O_DIRECT read before EOF leaves `got` unaligned;
                // the next read then fails with EINVAL and falls back below.
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if direct && e.raw_os_error() == Some(EINVAL) => {
                // The file system (or a short read) refused O_DIRECT: go on
                // buffered, from where we are (buffered reads need no
                // alignment), and say so in the stats.
                files.direct = None;
                direct = false;
                want = need;
                shared.direct.store(false, Ordering::Relaxed);
                *lock(&shared.direct_fallback) =
                    Some(format!("O_DIRECT read failed at block {l}: {e}"));
            }
            Err(e) => {
                return Err(Ok(WindowError::Io {
                    block: l,
                    offset: pos,
                    source: Arc::new(e),
                }))
            }
        }
    }
    Ok((skip, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;

    const N_BLOCKS: usize = 10;

    fn byte_at(pos: u64) -> u8 {
        (pos.wrapping_mul(2_654_435_761) >> 13) as u8
    }

    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A file of 10 blocks at 4 KiB-aligned offsets with uneven lengths
    /// (gaps between some), the last block running to EOF, not a multiple
    /// of 4096. Returns the blocks.
    fn temp_file(dir: &Path, tag: &str) -> (TempFile, Vec<Block>) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = dir.join(format!(
            "tpi-window-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut blocks = Vec::new();
        let mut off = 0u64;
        for l in 0..N_BLOCKS as u64 {
            let len = if l % 3 == 0 { 8192 } else { 12288 - 100 * l };
            blocks.push((off, len));
            off = (off + len).next_multiple_of(4096);
        }
        let (last_off, last_len) = blocks[N_BLOCKS - 1];
        let size = last_off + last_len;
        let data: Vec<u8> = (0..size).map(byte_at).collect();
        let mut f = File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        (TempFile(path), blocks)
    }

    /// `/var/tmp` is usually disk-backed (tmpfs may refuse `O_DIRECT`).
    fn disk_dir() -> PathBuf {
        let dir = Path::new("/var/tmp");
        if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    }

    fn expect_block(bytes: &[u8], (off, len): Block, l: usize) {
        assert_eq!(bytes.len() as u64, len, "block {l} length");
        for (i, &b) in bytes.iter().enumerate() {
            assert_eq!(b, byte_at(off + i as u64), "block {l} byte {i}");
        }
    }

    fn run_passes(w: &mut Window, blocks: &[Block], passes: usize) {
        for _ in 0..passes {
            for (l, &blk) in blocks.iter().enumerate() {
                let bytes = w.acquire(l).unwrap();
                expect_block(bytes, blk, l);
                w.release(l).unwrap();
            }
        }
    }

    fn sum_len(blocks: &[Block]) -> u64 {
        blocks.iter().map(|b| b.1).sum()
    }

    /// The page-cache feeds: pread into the ring and mappings (miri cannot
    /// map files).
    fn page_cache_reads() -> Vec<WindowOpts> {
        let mut v = vec![WindowOpts::default()];
        if !cfg!(miri) {
            v.push(WindowOpts {
                reads: Reads::Mapped,
            });
        }
        v
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "too slow under miri; the ring's own tests cover the unsafe code"
    )]
    fn windowed_three_passes_exact_bytes() {
        let (tf, blocks) = temp_file(&std::env::temp_dir(), "win");
        for opts in page_cache_reads() {
            for w_slots in [1, 2, 3] {
                let mut w = Window::open(&tf.0, blocks.clone(), w_slots, opts).unwrap();
                assert!(!w.is_resident());
                run_passes(&mut w, &blocks, 3);
                let s = w.stats();
                assert_eq!(s.acquires, 30);
                assert_eq!(s.n_slots, w_slots);
                // The I/O thread may have read ahead into the 4th pass.
                assert!(s.blocks_read >= 30 && s.blocks_read <= 30 + w_slots as u64);
                assert!(s.bytes_read >= 3 * sum_len(&blocks));
                assert!(!s.direct && s.direct_fallback.is_none());
                assert_eq!(s.mapped, opts.reads == Reads::Mapped);
            }
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "too slow under miri; the ring's own tests cover the unsafe code"
    )]
    fn windowed_holding_two_blocks() {
        let (tf, blocks) = temp_file(&std::env::temp_dir(), "hold");
        for opts in page_cache_reads() {
            let mut w = Window::open(&tf.0, blocks.clone(), 2, opts).unwrap();
            expect_block(w.acquire(0).unwrap(), blocks[0], 0);
            for _ in 0..2 {
                for l in 0..N_BLOCKS {
                    // Hold l and l+1 at once, like a layer that peeks ahead.
                    let next = (l + 1) % N_BLOCKS;
                    expect_block(w.acquire(next).unwrap(), blocks[next], next);
                    match w.acquire((next + 1) % N_BLOCKS) {
                        Err(WindowError::AllSlotsHeld { n_slots: 2, .. }) => {}
                        r => panic!("expected AllSlotsHeld, got {r:?}"),
                    }
                    w.release(l).unwrap();
                }
            }
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "too slow under miri; the ring's own tests cover the unsafe code"
    )]
    fn resident_reads_each_block_once() {
        let (tf, blocks) = temp_file(&std::env::temp_dir(), "res");
        for w_slots in [N_BLOCKS, N_BLOCKS + 5] {
            let mut w =
                Window::open(&tf.0, blocks.clone(), w_slots, WindowOpts::default()).unwrap();
            assert!(w.is_resident());
            run_passes(&mut w, &blocks, 3);
            let s = w.stats();
            assert_eq!(s.bytes_read, sum_len(&blocks));
            assert_eq!(s.blocks_read, N_BLOCKS as u64);
            assert_eq!(s.n_slots, N_BLOCKS);
            // Same bytes (same memory) every pass.
            let p0 = w.acquire(0).unwrap().as_ptr();
            w.release(0).unwrap();
            for l in 1..N_BLOCKS {
                w.acquire(l).unwrap();
                w.release(l).unwrap();
            }
            assert_eq!(w.acquire(0).unwrap().as_ptr(), p0);
        }
    }

    #[test]
    fn ordering_errors() {
        let (tf, blocks) = temp_file(&std::env::temp_dir(), "order");
        let cases = page_cache_reads()
            .into_iter()
            .flat_map(|o| [(2, o), (N_BLOCKS, o)]);
        for (w_slots, opts) in cases {
            let mut w = Window::open(&tf.0, blocks.clone(), w_slots, opts).unwrap();
            let e = w.acquire(1).unwrap_err();
            assert!(matches!(
                e,
                WindowError::OutOfOrder {
                    expected: 0,
                    got: 1
                }
            ));
            assert!(e.to_string().contains("expected block 0, got 1"), "{e}");
            assert!(matches!(
                w.release(0),
                Err(WindowError::NotHeld {
                    block: 0,
                    oldest: None
                })
            ));
            assert!(matches!(
                w.acquire(N_BLOCKS),
                Err(WindowError::NoSuchBlock { .. })
            ));
            w.acquire(0).unwrap();
            assert!(matches!(
                w.acquire(0),
                Err(WindowError::OutOfOrder {
                    expected: 1,
                    got: 0
                })
            ));
            assert!(matches!(
                w.release(1),
                Err(WindowError::NotHeld {
                    block: 1,
                    oldest: Some(0)
                })
            ));
            w.release(0).unwrap();
            // Still usable after the errors.
            expect_block(w.acquire(1).unwrap(), blocks[1], 1);
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "too slow under miri; the ring's own tests cover the unsafe code"
    )]
    fn truncated_file_names_block() {
        for opts in page_cache_reads() {
            let (tf, blocks) = temp_file(&std::env::temp_dir(), "trunc");
            let mut w = Window::open(&tf.0, blocks.clone(), 2, opts).unwrap();
            // Cut the file in the middle of block 6 while the window runs
            // (the I/O thread is at most 2 blocks ahead, still before 6).
            let (off6, _) = blocks[6];
            let f = OpenOptions::new().write(true).open(&tf.0).unwrap();
            f.set_len(off6 + 100).unwrap();
            for (l, &blk) in blocks.iter().enumerate().take(6) {
                expect_block(w.acquire(l).unwrap(), blk, l);
                w.release(l).unwrap();
            }
            let e = w.acquire(6).unwrap_err();
            // pread fails where the file ends; a mapping is refused whole.
            let at = match opts.reads {
                Reads::Mapped => off6,
                _ => off6 + 100,
            };
            match &e {
                WindowError::Io {
                    block: 6,
                    offset,
                    source,
                } => {
                    assert_eq!(*offset, at);
                    assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
                }
                e => panic!("expected an I/O error on block 6, got {e:?}"),
            }
            assert!(e.to_string().contains("block 6"), "{e}");
            // Sticky, and no hang.
            assert!(matches!(w.acquire(7), Err(WindowError::OutOfOrder { .. })));
            assert!(matches!(
                w.acquire(6),
                Err(WindowError::Io { block: 6, .. })
            ));
        }
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "too slow under miri; the ring's own tests cover the unsafe code"
    )]
    fn truncated_before_start_resident() {
        let (tf, blocks) = temp_file(&std::env::temp_dir(), "trunc-res");
        let f = OpenOptions::new().write(true).open(&tf.0).unwrap();
        f.set_len(blocks[3].0).unwrap();
        let mut w = Window::open(&tf.0, blocks.clone(), N_BLOCKS, WindowOpts::default()).unwrap();
        for l in 0..3 {
            w.acquire(l).unwrap();
            w.release(l).unwrap();
        }
        assert!(matches!(
            w.acquire(3),
            Err(WindowError::Io { block: 3, .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri does not support the O_DIRECT open flag")]
    fn direct_io_or_fallback() {
        let (tf, blocks) = temp_file(&disk_dir(), "direct");
        let opts = WindowOpts {
            reads: Reads::Direct,
        };
        for w_slots in [3, N_BLOCKS] {
            let mut w = Window::open(&tf.0, blocks.clone(), w_slots, opts).unwrap();
            run_passes(&mut w, &blocks, 3);
            let s = w.stats();
            assert!(s.direct || s.direct_fallback.is_some(), "{s:?}");
            eprintln!("direct_io_or_fallback W={w_slots}: {s:?}");
        }
        // Through `start` (reopen via /proc/self/fd).
        let file = File::open(&tf.0).unwrap();
        let mut w = Window::start(file, blocks.clone(), 2, opts).unwrap();
        run_passes(&mut w, &blocks, 2);
        let s = w.stats();
        assert!(s.direct || s.direct_fallback.is_some(), "{s:?}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri does not support the O_DIRECT open flag")]
    fn unaligned_blocks_buffered_and_direct() {
        let (tf, blocks) = temp_file(&disk_dir(), "unaligned");
        // Shift every block by 1000 bytes and shorten: no longer aligned.
        let shifted: Vec<Block> = blocks.iter().map(|&(o, l)| (o + 1000, l - 1000)).collect();
        for reads in [Reads::Buffered, Reads::Direct, Reads::Mapped] {
            let opts = WindowOpts { reads };
            let mut w = Window::open(&tf.0, shifted.clone(), 2, opts).unwrap();
            run_passes(&mut w, &shifted, 2);
        }
    }

    #[test]
    fn drop_mid_stream_joins_promptly() {
        let (tf, blocks) = temp_file(&std::env::temp_dir(), "drop");
        let t0 = Instant::now();
        let cases = page_cache_reads()
            .into_iter()
            .flat_map(|o| [(1, o), (2, o), (N_BLOCKS, o)]);
        for (w_slots, opts) in cases {
            let mut w = Window::open(&tf.0, blocks.clone(), w_slots, opts).unwrap();
            w.acquire(0).unwrap();
            drop(w); // the I/O thread is parked on a full ring or done
            let w = Window::open(&tf.0, blocks.clone(), w_slots, opts).unwrap();
            drop(w); // possibly mid-read
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn invalid_args() {
        let (tf, blocks) = temp_file(&std::env::temp_dir(), "inv");
        assert!(matches!(
            Window::open(&tf.0, blocks, 0, WindowOpts::default()),
            Err(WindowError::Invalid(_))
        ));
        assert!(matches!(
            Window::open(
                Path::new("/nonexistent/x"),
                vec![],
                1,
                WindowOpts::default()
            ),
            Err(WindowError::Open { .. })
        ));
        let mut w = Window::open(&tf.0, vec![], 1, WindowOpts::default()).unwrap();
        assert!(matches!(w.acquire(0), Err(WindowError::NoSuchBlock { .. })));
    }

    #[test]
    fn window_is_send() {
        fn is_send<T: Send>() {}
        is_send::<Window>();
    }
}
