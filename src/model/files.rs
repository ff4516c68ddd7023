//! A model's weight files as tpi holds them while it runs: each mapped
//! read-only through the one audited mapping ([`crate::sys::map_file`]),
//! or held as an aligned in-memory copy (the bundled model), with the
//! file's identity when it was opened and its whole-file digest once
//! computed. Safetensors shards and GGUF parts are both [`ModelFiles`];
//! the split fingerprints them alike (`crate::split::digest`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Identity of a model file as it was opened (`fstat` of the mapped file
/// descriptor, canonical path): the key under which its digest may be
/// cached. Any rewrite in place changes `mtime_ns` (and usually `size`); a
/// replacement by rename changes `ino`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileId {
    /// Canonical path (symlinks resolved).
    pub path: PathBuf,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file whose canonical path is `path`.
    pub fn of(file: &File, path: PathBuf) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(FileId {
            path,
            size: m.len(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A mapped file: the mapping, the descriptor it was mapped from (so
/// digests read the very inode that is mapped) and its identity then.
struct Mapped {
    map: memmap2::Mmap,
    file: File,
    id: FileId,
}

/// Where a file's bytes live.
enum Backing {
    Mmap(Box<Mapped>),
    /// 8-byte aligned copy and its length in bytes.
    Owned(Vec<u64>, usize),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => &m.map,
            Backing::Owned(v, len) => bytemuck::cast_slice::<u64, u8>(v)
                .get(..*len)
                .unwrap_or(&[]),
        }
    }
}

/// A model's files, in the order their format lists them.
#[derive(Default)]
pub struct ModelFiles {
    files: Vec<Backing>,
    names: Vec<String>,
    /// Each file's whole-file digest once computed (the mapped bytes are
    /// immutable while tpi runs, see [`crate::sys::map_file`]).
    digests: Vec<OnceLock<u64>>,
}

impl ModelFiles {
    /// Maps the file at `path` read-only and appends it; returns its index.
    pub fn map(&mut self, path: &Path) -> std::io::Result<usize> {
        let file = File::open(path)?;
        let canonical = std::fs::canonicalize(path)?;
        let id = FileId::of(&file, canonical)?;
        let map = crate::sys::map_file(&file, None)?;
        Ok(self.push(
            Backing::Mmap(Box::new(Mapped { map, file, id })),
            path.display().to_string(),
        ))
    }

    /// Appends an aligned copy of `bytes` named `name`; returns its index.
    pub fn copy(&mut self, bytes: &[u8], name: &str) -> usize {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        if let Some(dst) = bytemuck::cast_slice_mut::<u64, u8>(&mut words).get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.push(Backing::Owned(words, bytes.len()), name.to_string())
    }

    fn push(&mut self, b: Backing, name: String) -> usize {
        self.files.push(b);
        self.names.push(name);
        self.digests.push(OnceLock::new());
        self.files.len() - 1
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The whole file (empty for an unknown index).
    pub fn bytes(&self, i: usize) -> &[u8] {
        self.files.get(i).map_or(&[], Backing::bytes)
    }

    /// `len` bytes at `offset` of file `i`; `None` when they are not all
    /// inside it.
    pub fn range(&self, i: usize, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.bytes(i).get(start..end)
    }

    /// The file's path (or origin), for messages.
    pub fn name(&self, i: usize) -> &str {
        self.names.get(i).map_or("<no such file>", |s| s)
    }

    /// All names, comma-separated (for messages).
    pub fn names(&self) -> String {
        self.names.join(", ")
    }

    /// The open file behind a mapped file and its identity when opened
    /// (`None` for in-memory bytes or an unknown index).
    pub fn file(&self, i: usize) -> Option<(&File, &FileId)> {
        match self.files.get(i)? {
            Backing::Mmap(m) => Some((&m.file, &m.id)),
            Backing::Owned(..) => None,
        }
    }

    /// The file's memoised whole-file digest cell (`None` for an unknown
    /// index).
    pub fn digest_cell(&self, i: usize) -> Option<&OnceLock<u64>> {
        self.digests.get(i)
    }

    /// Releases the resident pages of `len` bytes at `offset` of file `i`
    /// in this process (see `crate::sys::release_range`); the bytes stay
    /// readable. A no-op for in-memory files. Used after a tensor has been
    /// copied out (slicing), so the source model does not accumulate in
    /// the resident set.
    pub fn release(&self, i: usize, offset: usize, len: usize) -> std::io::Result<()> {
        match self.files.get(i) {
            Some(Backing::Mmap(m)) => crate::sys::release_range(&m.map, offset, len),
            _ => Ok(()),
        }
    }
}
