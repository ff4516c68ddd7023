//! [`SliceError`]: what went wrong writing, opening or reading a slice
//! file, naming the file and, where known, the rank, block and offset.
//! Causes (I/O, manifest decoding, plan, cache, memory window) are chained
//! through `source()`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::manifest::{BlockKind, ManifestError};
use super::plan::PlanError;
use crate::window::WindowError;

/// Errors writing, opening or reading a slice file; each names the file and,
/// where known, the rank, block and offset.
#[derive(Debug)]
pub enum SliceError {
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    /// The file ends before `need` bytes.
    Truncated {
        path: String,
        what: &'static str,
        need: u64,
        file_len: u64,
    },
    BadMagic {
        path: String,
    },
    Version {
        path: String,
        found: u32,
        supported: u32,
    },
    ManifestTooLarge {
        path: String,
        len: u64,
        max: u64,
    },
    ManifestChecksum {
        path: String,
        stored: u64,
        computed: u64,
    },
    /// The manifest bytes (or the preamble flags) do not decode.
    Manifest {
        path: String,
        source: ManifestError,
    },
    /// The file is for another model, plan, rank or world size.
    Mismatch {
        path: String,
        what: &'static str,
        expected: u64,
        found: u64,
    },
    /// A block reaches past the end of the file.
    BlockOutOfFile {
        path: String,
        rank: usize,
        block: BlockKind,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    BlockChecksum {
        path: String,
        rank: usize,
        block: BlockKind,
        offset: u64,
        stored: u64,
        computed: u64,
    },
    /// Blocks or tensors do not match the embedded config and part.
    Layout {
        path: String,
        rank: usize,
        block: Option<BlockKind>,
        msg: String,
    },
    /// The embedded config does not parse.
    Config {
        path: String,
        msg: String,
    },
    /// The checkpoint a slice is written from is unusable.
    Source {
        origin: String,
        msg: String,
    },
    Plan(PlanError),
    /// Hashing a model file or recording a cache entry failed.
    Cache(CacheError),
    /// The memory window streaming this file's blocks failed (`what`: the
    /// step, e.g. `layer 3`).
    Window {
        path: String,
        what: String,
        source: WindowError,
    },
    /// A layer index, token id or buffer outside its range.
    OutOfRange {
        path: String,
        rank: usize,
        what: &'static str,
        index: u64,
        len: u64,
    },
}

impl fmt::Display for SliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SliceError::Io { path, what, source } => write!(f, "slice {path}: {what}: {source}"),
            SliceError::Truncated {
                path,
                what,
                need,
                file_len,
            } => write!(
                f,
                "slice {path}: truncated: {what} needs {need} bytes, file has {file_len}"
            ),
            SliceError::BadMagic { path } => {
                write!(f, "slice {path}: not a slice file (bad magic)")
            }
            SliceError::Version {
                path,
                found,
                supported,
            } => write!(
                f,
                "slice {path}: format version {found}, this build reads {supported}"
            ),
            SliceError::ManifestTooLarge { path, len, max } => {
                write!(f, "slice {path}: manifest of {len} bytes exceeds {max}")
            }
            SliceError::ManifestChecksum {
                path,
                stored,
                computed,
            } => write!(
                f,
                "slice {path}: manifest checksum {computed:016x} != stored {stored:016x} (corrupt)"
            ),
            SliceError::Manifest { path, source } => {
                write!(f, "slice {path}: manifest: {source}")
            }
            SliceError::Window { path, what, source } => {
                write!(f, "slice {path}: {what}: {source}")
            }
            SliceError::Mismatch {
                path,
                what,
                expected,
                found,
            } => write!(
                f,
                "slice {path}: {what} is {found:#x}, expected {expected:#x} (stale or foreign slice)"
            ),
            SliceError::BlockOutOfFile {
                path,
                rank,
                block,
                offset,
                len,
                file_len,
            } => write!(
                f,
                "slice {path} (rank {rank}): {block} at offset {offset} length {len} \
                 ends past the file end {file_len} (truncated)"
            ),
            SliceError::BlockChecksum {
                path,
                rank,
                block,
                offset,
                stored,
                computed,
            } => write!(
                f,
                "slice {path} (rank {rank}): {block} at offset {offset}: checksum \
                 {computed:016x} != stored {stored:016x} (corrupt)"
            ),
            SliceError::Layout {
                path,
                rank,
                block,
                msg,
            } => match block {
                Some(b) => write!(f, "slice {path} (rank {rank}): {b}: {msg}"),
                None => write!(f, "slice {path} (rank {rank}): {msg}"),
            },
            SliceError::Config { path, msg } => {
                write!(f, "slice {path}: embedded config: {msg}")
            }
            SliceError::Source { origin, msg } => write!(f, "checkpoint {origin}: {msg}"),
            SliceError::Plan(e) => write!(f, "{e}"),
            SliceError::Cache(e) => write!(f, "{e}"),
            SliceError::OutOfRange {
                path,
                rank,
                what,
                index,
                len,
            } => write!(
                f,
                "slice {path} (rank {rank}): {what} {index} outside 0..{len}"
            ),
        }
    }
}

impl std::error::Error for SliceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SliceError::Io { source, .. } => Some(source),
            SliceError::Manifest { source, .. } => Some(source),
            SliceError::Window { source, .. } => Some(source),
            SliceError::Plan(e) => Some(e),
            SliceError::Cache(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CacheError> for SliceError {
    fn from(e: CacheError) -> Self {
        SliceError::Cache(e)
    }
}

impl From<PlanError> for SliceError {
    fn from(e: PlanError) -> Self {
        SliceError::Plan(e)
    }
}

/// Maps an I/O error on `path` during `what` to [`SliceError::Io`].
pub(crate) fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> SliceError + 'a {
    move |source| SliceError::Io {
        path: path.display().to_string(),
        what,
        source,
    }
}

// ---------------------------------------------------------------------------

/// Errors reading or changing the cache directory.
#[derive(Debug)]
pub enum CacheError {
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// A model file changed (size, mtime or inode) while it was hashed, or
    /// is shorter than when it was opened.
    Changed { path: PathBuf, what: String },
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Io { path, what, source } => {
                write!(f, "cache {}: {what}: {source}", path.display())
            }
            CacheError::Changed { path, what } => write!(
                f,
                "model file {} changed while tpi read it ({what}); \
                 model files must not change while tpi runs",
                path.display()
            ),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheError::Io { source, .. } => Some(source),
            CacheError::Changed { .. } => None,
        }
    }
}

pub(crate) fn cache_io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}
