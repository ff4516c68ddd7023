//! The operating system, once: the one audited file mapping (`map_file`,
//! `release_range`), aligned and huge-page buffers ([`AlignedBuf`]), the
//! large-write file writer (`LargeWriter`), the `O_DIRECT` and `EINVAL`
//! constants (from the `libc` crate, per architecture) and the `/proc`
//! readers ([`available_memory`], [`peak_rss_bytes`]).
//!
//! Besides the window ring and the kernels this is the only file with
//! `unsafe` code; every block says which invariant makes it sound and where
//! that invariant is established.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::File;
use std::io::Write;
use std::ptr::NonNull;

// ---------------------------------------------------------------------------
// The audited file mapping

/// Maps a file read-only: all of it, or `len` bytes from `offset` (the
/// memory window maps one block at a time). The project's one call into
/// memmap2's unsafe file mapping.
pub(crate) fn map_file(file: &File, range: Option<(u64, usize)>) -> std::io::Result<memmap2::Mmap> {
    let mut opts = memmap2::MmapOptions::new();
    if let Some((offset, len)) = range {
        opts.offset(offset).len(len);
    }
    // SAFETY: the file was opened read-only and the mapping is read-only; we
    // never write through it. The remaining risk is another process
    // truncating or rewriting the file while it is mapped: a truncation makes
    // later reads of the vanished pages raise SIGBUS, a rewrite changes the
    // weights under us. Model files and slice files are treated as immutable
    // while tpi runs (a slice is replaced by renaming a new file over it,
    // which leaves existing mappings on the old inode), the same contract
    // every mmap-based model loader relies on.
    unsafe { opts.map(file) }
}

/// Drops this process's page-table entries for `len` bytes of `map` from
/// `offset` (widened to whole pages, clipped to the mapping), so pages
/// already read stop counting in the resident set. The page cache keeps
/// the data; a later read faults it back in. Part of the audited mapping
/// above: the only other unsafe call on a [`map_file`] mapping.
pub(crate) fn release_range(map: &memmap2::Mmap, offset: usize, len: usize) -> std::io::Result<()> {
    let start = offset;
    let end = offset.saturating_add(len).min(map.len());
    if start >= end {
        return Ok(());
    }
    // SAFETY: `map` comes from `map_file`: a read-only, shared file mapping
    // that no one writes through. MADV_DONTNEED on such a mapping discards
    // only page-table entries; the next access re-reads the same file pages
    // from the page cache (it zero-fills only private anonymous or written
    // copy-on-write pages, and this mapping has neither). So every `&[u8]`
    // borrowed from `map`, now or later, keeps seeing the file's bytes.
    // memmap2 widens `start` down to the page size of the host (4 KiB to
    // 64 KiB); `start..end` is inside the mapping.
    unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) }
}

// ---------------------------------------------------------------------------
// Aligned and huge-page buffers

/// Buffers from this size on are anonymous mappings advised to use huge
/// pages (unless `TPI_NO_HUGEPAGES` is set).
pub const HUGE_FROM: usize = 2 << 20;

/// Owned, zeroed bytes at a fixed alignment, allocated once: the window
/// ring's slot memory and a slice's resident blocks.
///
/// From [`HUGE_FROM`] bytes on, an anonymous page-aligned mapping advised to
/// use transparent huge pages (else, or when the mapping fails, the heap).
/// Why: a window slot is the destination of `O_DIRECT` reads, whose
/// requests the block layer splits at every break in physical contiguity.
/// On 4 KiB pages that is a segment per page, and the read speed then
/// depends on how fragmented memory was when the buffer was allocated (on a
/// virtio disk, measured 0.7x between two rings of one process). 2 MiB
/// pages make each request a few large segments, whatever the allocation
/// order; the GEMV reading the bytes also takes fewer TLB misses.
///
/// Zeroed, so handing out `&[u8]` never exposes uninitialised bytes.
#[derive(Debug)]
pub struct AlignedBuf {
    mem: Mem,
    len: usize,
}

#[derive(Debug)]
enum Mem {
    /// `alloc_zeroed(layout)` (`layout.size() >= max(len, 1)`), freed in
    /// `Drop for AlignedBuf`.
    Heap { ptr: NonNull<u8>, layout: Layout },
    /// An anonymous mapping, unmapped when dropped.
    Map(memmap2::MmapMut),
}

// SAFETY: `Mem::Heap` is a uniquely owned allocation, reached only through
// `&self` / `&mut self` (or through `as_ptr` by an owner that partitions the
// bytes between threads itself, as the window ring does), like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: as for `Send`: `&AlignedBuf` only gives out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two, at most 4096:
    /// a mapping is page-aligned). `None` when `len` rounded up to `align`
    /// overflows the address space or the memory cannot be had (the caller
    /// names what it wanted; no allocation here aborts the process).
    pub fn zeroed(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        if let Some(map) = huge_page_map(len) {
            return Some(AlignedBuf {
                mem: Mem::Map(map),
                len,
            });
        }
        // SAFETY: `layout` has non-zero size (`len.max(1)`) as `alloc_zeroed`
        // requires; null is handled below.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)?;
        Some(AlignedBuf {
            mem: Mem::Heap { ptr, layout },
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes live in an anonymous (huge-page advised) mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.mem, Mem::Map(_))
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.mem {
            // SAFETY: `ptr` is a live allocation of `layout.size() >= len`
            // zeroed (so initialised) bytes owned by `self` (see `Mem::Heap`);
            // the shared borrow of `self` keeps it alive and unwritten.
            Mem::Heap { ptr, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), self.len) },
            Mem::Map(m) => &m[..self.len],
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            // SAFETY: as in `bytes`, and the unique borrow of `self` makes
            // this the only access to the bytes.
            Mem::Heap { ptr, .. } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), self.len)
            },
            Mem::Map(m) => &mut m[..self.len],
        }
    }

    /// The first byte, for an owner that hands the bytes out itself (the
    /// window ring). Valid for `len()` bytes while `self` lives; taken once,
    /// before any `&[u8]` of the buffer, and not mixed with `bytes*`.
    pub fn as_ptr(&mut self) -> NonNull<u8> {
        match &mut self.mem {
            Mem::Heap { ptr, .. } => *ptr,
            Mem::Map(m) => NonNull::from(&mut m[..]).cast::<u8>(),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Mem::Heap { ptr, layout } = self.mem {
            // SAFETY: `ptr` was returned by `alloc_zeroed(layout)` in
            // `zeroed` and is freed exactly once, here; no borrow of the
            // bytes outlives `self`.
            unsafe { dealloc(ptr.as_ptr(), layout) }
        }
        // A mapping is unmapped when `mem` drops, after this body.
    }
}

/// An anonymous, zeroed, page-aligned mapping of `len` bytes advised to use
/// transparent huge pages, or `None` (small, miri, `TPI_NO_HUGEPAGES`, or the
/// mapping failed: the heap is used instead).
fn huge_page_map(len: usize) -> Option<memmap2::MmapMut> {
    if cfg!(miri) || len < HUGE_FROM || std::env::var_os("TPI_NO_HUGEPAGES").is_some() {
        return None;
    }
    let map = memmap2::MmapMut::map_anon(len).ok()?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Some(map)
}

// ---------------------------------------------------------------------------
// Large writes

/// Write size and alignment for slice files (see `LargeWriter`).
pub const WRITE_BUF: usize = 4 << 20;

/// Sequential file writer that hands the file system writes of
/// [`WRITE_BUF`] bytes at multiples of [`WRITE_BUF`], always from its own
/// buffer. The file then sits in the page cache in large (up to 2 MiB)
/// folios where the file system supports them, and a mapped memory window
/// maps a block with a few hundred page-table operations instead of tens
/// of thousands. Both parts matter, as measured (populating a 4.1 GB pass):
/// 110 ms after `BufWriter`, which hands large writes straight from the
/// mmapped safetensors to the kernel (whose write path appears to shrink
/// its folios at each fault on a source page not yet in memory); 41 ms
/// after unaligned 4 MiB writes from memory; 13-14 ms after aligned ones.
pub(crate) struct LargeWriter {
    file: File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
}

impl LargeWriter {
    /// A writer appending at `at`, the file's current length.
    pub(crate) fn new(file: File, at: u64) -> LargeWriter {
        LargeWriter {
            file,
            buf: Vec::with_capacity(WRITE_BUF),
            at,
        }
    }

    fn write_buf(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// The file, to seek and write in place once everything buffered is
    /// written ([`Write::flush`] first).
    pub(crate) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// The file, with everything written to it.
    pub(crate) fn into_file(mut self) -> std::io::Result<File> {
        self.write_buf()?;
        Ok(self.file)
    }
}

impl Write for LargeWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let end = self.at + self.buf.len() as u64;
        let room = WRITE_BUF - (end % WRITE_BUF as u64) as usize;
        let n = b.len().min(room);
        self.buf.extend_from_slice(&b[..n]);
        if n == room {
            self.write_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_buf()
    }
}

// ---------------------------------------------------------------------------
// Constants from libc

/// The `O_DIRECT` open flag (its value differs per architecture: on
/// `aarch64`/`arm` the x86 value means `O_DIRECTORY`), `None` where there is
/// none.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const O_DIRECT: Option<i32> = Some(libc::O_DIRECT);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub const O_DIRECT: Option<i32> = None;

/// `EINVAL`: a refused `O_DIRECT` read, or advice the kernel does not know.
pub const EINVAL: i32 = libc::EINVAL;

// ---------------------------------------------------------------------------
// /proc readers

/// MemAvailable from /proc/meminfo, in bytes.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of this process (VmHWM), in bytes, where known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::testutil::TempDir;

    #[test]
    fn large_writer_writes_whole_aligned_pieces_and_every_byte() {
        let tmp = TempDir::new("large-writer");
        let path = tmp.0.join("f");
        let head = vec![7u8; 100];
        std::fs::write(&path, &head).unwrap();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut w = LargeWriter::new(file, 100);
        // A write never crosses a WRITE_BUF boundary of the file, and
        // reaching one hands the piece to the file.
        let big: Vec<u8> = (0..2 * WRITE_BUF + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        assert_eq!(w.write(&big).unwrap(), WRITE_BUF - 100);
        assert!(w.buf.is_empty() && w.at == WRITE_BUF as u64);
        w.write_all(&big[WRITE_BUF - 100..]).unwrap();
        assert_eq!(w.at, 2 * WRITE_BUF as u64);
        assert_eq!(w.buf.len(), 12345 + 100);
        for chunk in [&[1u8, 2, 3][..], &[], &[4]] {
            w.write_all(chunk).unwrap();
        }
        w.into_file().unwrap();
        let got = std::fs::read(&path).unwrap();
        let mut want = head;
        want.extend_from_slice(&big);
        want.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "file contents differ");
    }
}
