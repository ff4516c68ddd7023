//! Errors reading safetensors files, naming the file, the tensor and the
//! offset.

use std::fmt;

use super::Dtype;

/// Errors reading safetensors files. `origin` is the file path (or the
/// name given to `SafeTensors::from_bytes`).
#[derive(Debug)]
pub enum SafeTensorsError {
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file is shorter than what its header says.
    Truncated {
        origin: String,
        what: String,
        needed: u64,
        len: u64,
    },
    HeaderTooLarge {
        origin: String,
        header_len: u64,
        max: u64,
    },
    /// Invalid JSON or invalid header structure.
    InvalidHeader {
        origin: String,
        tensor: Option<String>,
        msg: String,
    },
    /// A real safetensors dtype that tpi does not compute with.
    UnsupportedDtype {
        origin: String,
        tensor: String,
        dtype: String,
    },
    /// Not a safetensors dtype at all.
    UnknownDtype {
        origin: String,
        tensor: String,
        dtype: String,
    },
    OffsetOutOfBounds {
        origin: String,
        tensor: String,
        begin: u64,
        end: u64,
        data_len: u64,
    },
    /// `end - begin` does not match shape x dtype size.
    SizeMismatch {
        origin: String,
        tensor: String,
        shape: Vec<u64>,
        dtype: Dtype,
        expected: Option<u64>,
        actual: u64,
    },
    Overlap {
        origin: String,
        first: String,
        second: String,
        offset: u64,
    },
    TooManyTensors {
        origin: String,
        count: usize,
        max: usize,
    },
    MissingTensor {
        name: String,
        files: String,
    },
    ShapeMismatch {
        name: String,
        file: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A tensor name appears in two shards.
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    /// Problem with `model.safetensors.index.json`.
    Index {
        origin: String,
        msg: String,
    },
    /// Neither `model.safetensors` nor `model.safetensors.index.json`.
    NoModelFile {
        dir: String,
    },
}

impl fmt::Display for SafeTensorsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SafeTensorsError as E;
        match self {
            E::Io { path, source } => write!(f, "{path}: {source}"),
            E::Truncated {
                origin,
                what,
                needed,
                len,
            } => write!(
                f,
                "{origin}: truncated: {what} needs {needed} bytes but the file has {len}"
            ),
            E::HeaderTooLarge {
                origin,
                header_len,
                max,
            } => write!(
                f,
                "{origin}: header length {header_len} at offset 0 exceeds the limit {max}"
            ),
            E::InvalidHeader {
                origin,
                tensor: Some(t),
                msg,
            } => write!(f, "{origin}: invalid header entry for tensor `{t}`: {msg}"),
            E::InvalidHeader {
                origin,
                tensor: None,
                msg,
            } => write!(f, "{origin}: invalid header: {msg}"),
            E::UnsupportedDtype {
                origin,
                tensor,
                dtype,
            } => write!(
                f,
                "{origin}: tensor `{tensor}` has unsupported dtype {dtype} (supported: F32, F16, BF16)"
            ),
            E::UnknownDtype {
                origin,
                tensor,
                dtype,
            } => write!(f, "{origin}: tensor `{tensor}` has unknown dtype `{dtype}`"),
            E::OffsetOutOfBounds {
                origin,
                tensor,
                begin,
                end,
                data_len,
            } => write!(
                f,
                "{origin}: tensor `{tensor}` data_offsets [{begin}, {end}] outside the data area of {data_len} bytes"
            ),
            E::SizeMismatch {
                origin,
                tensor,
                shape,
                dtype,
                expected,
                actual,
            } => match expected {
                Some(x) => write!(
                    f,
                    "{origin}: tensor `{tensor}` shape {shape:?} {} needs {x} bytes but data_offsets span {actual}",
                    dtype.name()
                ),
                None => write!(
                    f,
                    "{origin}: tensor `{tensor}` shape {shape:?} {} overflows the byte size",
                    dtype.name()
                ),
            },
            E::Overlap {
                origin,
                first,
                second,
                offset,
            } => write!(
                f,
                "{origin}: tensors `{first}` and `{second}` overlap at data offset {offset}"
            ),
            E::TooManyTensors { origin, count, max } => {
                write!(f, "{origin}: {count} tensors, more than the limit {max}")
            }
            E::MissingTensor { name, files } => write!(f, "tensor `{name}` not found in {files}"),
            E::ShapeMismatch {
                name,
                file,
                expected,
                actual,
            } => write!(
                f,
                "{file}: tensor `{name}` has shape {actual:?}, expected {expected:?}"
            ),
            E::Duplicate {
                name,
                first,
                second,
            } => write!(f, "tensor `{name}` is present in both {first} and {second}"),
            E::Index { origin, msg } => write!(f, "{origin}: {msg}"),
            E::NoModelFile { dir } => write!(
                f,
                "{dir}: neither model.safetensors nor model.safetensors.index.json found"
            ),
        }
    }
}

impl std::error::Error for SafeTensorsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SafeTensorsError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
