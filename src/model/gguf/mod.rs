//! GGUF files (llama.cpp's format, versions 2 and 3): the header parsed
//! and checked ([`header`], rules G1..G10 there), metadata values with
//! typed getters ([`value`]), tensor infos and their placement
//! ([`tensor`]), the ggml tensor types ([`types`]) and errors naming the
//! file, key and tensor ([`error`]).
//!
//! [`Gguf::open`] reads only the header: a single file, or every part of a
//! split model (`name-00001-of-0000N.gguf`, found by name next to the
//! first). Tensor data stays on disk; each [`TensorInfo`] says which file,
//! at which absolute offset and how many bytes, for pread or mmap.
//!
//! Split rules (llama.cpp's `gguf-split`), cited as S1..S4:
//! - S1 a file without `split.count`, or with 1, is the whole model;
//! - S2 otherwise the opened file is part 1 (`split.no` = 0) and its name
//!   ends `-00001-of-{count:05}.gguf`; part `k` is the same name with
//!   `-{k:05}-of-{count:05}.gguf`, in the same directory;
//! - S3 every part says the same `split.count` and its own `split.no`
//!   (0-based);
//! - S4 tensor names are unique across the parts; `split.tensors.count`,
//!   when present, is the number of tensors in all parts.
//!
//! The model's metadata is part 1's; later parts carry only `split.*`.

pub mod error;
pub mod header;
pub mod tensor;
pub mod types;
pub mod value;

pub use error::GgufError;
pub use header::{
    parse, parse_prefix, Header, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_HEADER_BYTES,
    MAX_PARSED_BYTES,
};
pub use tensor::TensorInfo;
pub use types::GgmlType;
pub use value::{Array, Metadata, StringArray, Value, ValueType};

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Split metadata keys (llama.cpp `LLM_KV_SPLIT_*`).
pub const SPLIT_COUNT: &str = "split.count";
pub const SPLIT_NO: &str = "split.no";
pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// First read of a header; doubled until the header fits (G6 caps it).
const FIRST_READ_BYTES: usize = 1 << 20;

/// One file of a GGUF model: where it is and its header's framing.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    /// File length when opened.
    pub len: u64,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// A GGUF model's headers: metadata, and every tensor's file and range.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Part 1's metadata.
    metadata: Metadata,
    files: Vec<GgufFile>,
    /// All parts' tensors, part by part, each in file order.
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GgufError + '_ {
    move |source| GgufError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads and parses the header of the file at `path`: its first MiB, then
/// twice as much while the header runs past what was read (G6 stops it).
/// Returns the header and the file length.
pub fn read_header(path: &Path) -> Result<(Header, u64), GgufError> {
    let origin = path.display().to_string();
    let mut file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let limit = file_len.min(MAX_HEADER_BYTES as u64) as usize;
    let mut want = limit.min(FIRST_READ_BYTES);
    let mut buf = Vec::new();
    loop {
        let more = want - buf.len();
        buf.reserve_exact(more);
        (&mut file)
            .take(more as u64)
            .read_to_end(&mut buf)
            .map_err(io_err(path))?;
        // A file that shrank since fstat ends short: its parse is final.
        let complete = buf.len() == want;
        match parse_prefix(&buf, file_len, &origin) {
            Err(GgufError::Truncated { .. }) if complete && want < limit => {
                want = want.saturating_mul(2).min(limit);
            }
            r => return r.map(|h| (h, file_len)),
        }
    }
}

impl Gguf {
    /// Opens a GGUF model: the file at `path`, and when it is part 1 of a
    /// split model, the other parts next to it (S1..S4).
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let (first, len) = read_header(path)?;
        let origin = path.display().to_string();
        let split = |msg: String| GgufError::Split {
            origin: origin.clone(),
            msg,
        };
        let count = first.metadata.opt_u32(SPLIT_COUNT)?;
        let no = first.metadata.opt_u32(SPLIT_NO)?;
        let count = match count {
            // S1
            None | Some(1) => {
                if no.is_some_and(|n| n != 0) {
                    return Err(split(format!("{SPLIT_NO} is {no:?} in a single file")));
                }
                return Gguf::assemble(vec![(path.to_path_buf(), len, first)]);
            }
            Some(0) => return Err(split(format!("{SPLIT_COUNT} is 0"))),
            Some(c) => c,
        };
        // S2
        if no != Some(0) {
            return Err(split(format!(
                "{SPLIT_NO} is {no:?}: open part 1 of the {count} split files"
            )));
        }
        let suffix = split_suffix(1, count);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(stem) = name.strip_suffix(&suffix) else {
            return Err(split(format!(
                "part 1 of {count} split files must be named NAME{suffix}"
            )));
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut parts = vec![(path.to_path_buf(), len, first)];
        for k in 2..=count {
            let p = dir.join(format!("{stem}{}", split_suffix(k, count)));
            if let Err(source) = std::fs::metadata(&p) {
                return Err(GgufError::MissingSplit {
                    path: p.display().to_string(),
                    part: k,
                    count,
                    source,
                });
            }
            let (h, len) = read_header(&p)?;
            // S3
            let (c, n) = (
                h.metadata.opt_u32(SPLIT_COUNT)?,
                h.metadata.opt_u32(SPLIT_NO)?,
            );
            if c != Some(count) || n != Some(k - 1) {
                return Err(GgufError::Split {
                    origin: p.display().to_string(),
                    msg: format!(
                        "part {k} of {count} says {SPLIT_COUNT} {c:?}, {SPLIT_NO} {n:?}; expected {count}, {}",
                        k - 1
                    ),
                });
            }
            parts.push((p, len, h));
        }
        let g = Gguf::assemble(parts)?;
        // S4
        if let Some(want) = g.metadata().opt_u64(SPLIT_TENSORS_COUNT)? {
            if want != g.tensors.len() as u64 {
                return Err(split(format!(
                    "{SPLIT_TENSORS_COUNT} is {want}, the {count} parts hold {}",
                    g.tensors.len()
                )));
            }
        }
        Ok(g)
    }

    /// One GGUF file held in memory, named `origin` in errors (split
    /// metadata is not followed).
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Gguf, GgufError> {
        let h = parse(bytes, origin)?;
        Gguf::assemble(vec![(PathBuf::from(origin), bytes.len() as u64, h)])
    }

    /// S4: the parts' tensors under one index, each tagged with its part.
    fn assemble(parts: Vec<(PathBuf, u64, Header)>) -> Result<Gguf, GgufError> {
        let mut g = Gguf {
            metadata: Metadata::default(),
            files: Vec::with_capacity(parts.len()),
            tensors: Vec::new(),
            index: HashMap::new(),
        };
        for (file, (path, len, h)) in parts.into_iter().enumerate() {
            for mut t in h.tensors {
                t.file = file;
                if let Some(&prev) = g.index.get(&t.name) {
                    let prev_file = g.tensors.get(prev).map_or(0, |p| p.file);
                    return Err(GgufError::DuplicateTensor {
                        name: t.name,
                        first: g.file_name(prev_file).to_string(),
                        second: path.display().to_string(),
                    });
                }
                g.index.insert(t.name.clone(), g.tensors.len());
                g.tensors.push(t);
            }
            g.files.push(GgufFile {
                path,
                len,
                version: h.version,
                alignment: h.alignment,
                data_offset: h.data_offset,
            });
            if file == 0 {
                g.metadata = h.metadata;
            }
        }
        Ok(g)
    }

    /// The model's metadata (part 1's).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The files, part 1 first; `TensorInfo::file` indexes this.
    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }

    /// A file's path for messages (`<no such file>` for a foreign index).
    pub fn file_name(&self, file: usize) -> std::borrow::Cow<'_, str> {
        self.files
            .get(file)
            .map_or("<no such file>".into(), |f| f.path.to_string_lossy())
    }

    /// All tensors: part by part, each in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The tensor `name`, or `MissingTensor` naming it and the files.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.get(name).ok_or_else(|| GgufError::MissingTensor {
            name: name.to_string(),
            files: self
                .files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// S2: `-{part:05}-of-{count:05}.gguf` (llama.cpp `llama_split_path`).
pub fn split_suffix(part: u32, count: u32) -> String {
    format!("-{part:05}-of-{count:05}.gguf")
}
