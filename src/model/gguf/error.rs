//! Errors reading GGUF files, naming the file (`origin`: its path, or the
//! name given to [`super::parse`]) and the field, key or tensor.

use std::fmt;

/// Errors reading GGUF files.
#[derive(Debug)]
pub enum GgufError {
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file ends inside `what`, which starts or continues at `offset`.
    Truncated {
        origin: String,
        what: String,
        offset: u64,
        need: u64,
        have: u64,
    },
    /// The header (metadata and tensor infos) runs past [`super::MAX_HEADER_BYTES`].
    HeaderTooLarge {
        origin: String,
        max: u64,
    },
    /// The parsed header would take more than [`super::header::MAX_PARSED_BYTES`].
    ParsedTooLarge {
        origin: String,
        what: String,
        max: u64,
    },
    BadMagic {
        origin: String,
        got: [u8; 4],
    },
    /// Only versions 2 and 3 are read (v1 had 32-bit counts and sizes).
    BadVersion {
        origin: String,
        version: u32,
    },
    /// A count or length read from the file that the bytes left cannot
    /// hold (or above its constant maximum): refused before allocating.
    TooLong {
        origin: String,
        what: String,
        count: u64,
        max: u64,
    },
    /// A key or tensor name longer than the spec allows.
    OverLimit {
        origin: String,
        what: String,
        len: u64,
        max: u64,
    },
    NotUtf8 {
        origin: String,
        what: String,
    },
    UnknownValueType {
        origin: String,
        key: String,
        type_id: u32,
    },
    /// A bool byte other than 0 or 1.
    BadBool {
        origin: String,
        key: String,
        byte: u8,
    },
    ArrayTooDeep {
        origin: String,
        key: String,
        max: usize,
    },
    DuplicateKey {
        origin: String,
        key: String,
    },
    /// `general.alignment` zero or not a power of two.
    BadAlignment {
        origin: String,
        alignment: u64,
    },
    /// Dimension count, a zero dimension, or an element count overflow.
    BadDims {
        origin: String,
        tensor: String,
        dims: Vec<u64>,
        why: &'static str,
    },
    UnknownType {
        origin: String,
        tensor: String,
        type_id: u32,
    },
    /// Rows (ne0) not a whole number of the type's blocks.
    NotWholeBlocks {
        origin: String,
        tensor: String,
        ggml_type: &'static str,
        ne0: u64,
        block: u64,
    },
    Misaligned {
        origin: String,
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    /// `[begin, end)` absolute in the file; `end` `None` on overflow.
    OutOfBounds {
        origin: String,
        tensor: String,
        begin: u64,
        end: Option<u64>,
        file_len: u64,
    },
    Overlap {
        origin: String,
        first: String,
        second: String,
        offset: u64,
    },
    /// A tensor name twice, in one file or in two split files.
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },
    MissingKey {
        origin: String,
        key: String,
    },
    /// A metadata value of another type, or out of the wanted range.
    WrongType {
        origin: String,
        key: String,
        expected: &'static str,
        found: String,
    },
    MissingTensor {
        name: String,
        files: String,
    },
    /// Split metadata or file names that do not fit together.
    Split {
        origin: String,
        msg: String,
    },
    /// A split part that is not there.
    MissingSplit {
        path: String,
        part: u32,
        count: u32,
        source: std::io::Error,
    },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError as E;
        match self {
            E::Io { path, source } => write!(f, "{path}: {source}"),
            E::Truncated {
                origin,
                what,
                offset,
                need,
                have,
            } => write!(
                f,
                "{origin}: truncated: {what} at offset {offset} needs {need} bytes, {have} left"
            ),
            E::HeaderTooLarge { origin, max } => write!(
                f,
                "{origin}: GGUF header (metadata and tensor infos) longer than the limit of {max} bytes"
            ),
            E::ParsedTooLarge { origin, what, max } => write!(
                f,
                "{origin}: {what} would take the parsed header past its limit of {max} bytes"
            ),
            E::BadMagic { origin, got } => write!(
                f,
                "{origin}: not a GGUF file (magic {got:02x?}, expected \"GGUF\")"
            ),
            E::BadVersion { origin, version } => {
                write!(f, "{origin}: GGUF version {version} (only 2 and 3 are read)")?;
                if matches!(version.swap_bytes(), 2 | 3) {
                    write!(f, "; a big-endian GGUF file?")?;
                }
                Ok(())
            }
            E::TooLong {
                origin,
                what,
                count,
                max,
            } => write!(
                f,
                "{origin}: {what} is {count}, more than the bytes left can hold (at most {max}): truncated or corrupt"
            ),
            E::OverLimit {
                origin,
                what,
                len,
                max,
            } => write!(f, "{origin}: {what} is {len} bytes, the limit is {max}"),
            E::NotUtf8 { origin, what } => write!(f, "{origin}: {what} is not valid UTF-8"),
            E::UnknownValueType {
                origin,
                key,
                type_id,
            } => write!(f, "{origin}: metadata `{key}` has unknown value type {type_id}"),
            E::BadBool { origin, key, byte } => {
                write!(f, "{origin}: metadata `{key}`: bool byte {byte} is neither 0 nor 1")
            }
            E::ArrayTooDeep { origin, key, max } => write!(
                f,
                "{origin}: metadata `{key}` nests arrays deeper than {max} levels"
            ),
            E::DuplicateKey { origin, key } => {
                write!(f, "{origin}: metadata key `{key}` appears twice")
            }
            E::BadAlignment { origin, alignment } => write!(
                f,
                "{origin}: general.alignment {alignment} is not a nonzero power of two"
            ),
            E::BadDims {
                origin,
                tensor,
                dims,
                why,
            } => write!(f, "{origin}: tensor `{tensor}` dims {dims:?}: {why}"),
            E::UnknownType {
                origin,
                tensor,
                type_id,
            } => write!(f, "{origin}: tensor `{tensor}` has unknown ggml type {type_id}"),
            E::NotWholeBlocks {
                origin,
                tensor,
                ggml_type,
                ne0,
                block,
            } => write!(
                f,
                "{origin}: tensor `{tensor}` rows of {ne0} elements are not whole {ggml_type} blocks of {block}"
            ),
            E::Misaligned {
                origin,
                tensor,
                offset,
                alignment,
            } => write!(
                f,
                "{origin}: tensor `{tensor}` data offset {offset} is not a multiple of the alignment {alignment}"
            ),
            E::OutOfBounds {
                origin,
                tensor,
                begin,
                end,
                file_len,
            } => match end {
                Some(end) => write!(
                    f,
                    "{origin}: tensor `{tensor}` data [{begin}, {end}) lies outside the file of {file_len} bytes"
                ),
                None => write!(
                    f,
                    "{origin}: tensor `{tensor}` data at {begin} overflows a 64-bit offset"
                ),
            },
            E::Overlap {
                origin,
                first,
                second,
                offset,
            } => write!(
                f,
                "{origin}: tensors `{first}` and `{second}` overlap at byte {offset}"
            ),
            E::DuplicateTensor {
                name,
                first,
                second,
            } => {
                if first == second {
                    write!(f, "{first}: tensor `{name}` appears twice")
                } else {
                    write!(f, "tensor `{name}` is in both {first} and {second}")
                }
            }
            E::MissingKey { origin, key } => write!(f, "{origin}: metadata `{key}` missing"),
            E::WrongType {
                origin,
                key,
                expected,
                found,
            } => write!(f, "{origin}: metadata `{key}`: expected {expected}, found {found}"),
            E::MissingTensor { name, files } => write!(f, "tensor `{name}` not found in {files}"),
            E::Split { origin, msg } => write!(f, "{origin}: {msg}"),
            E::MissingSplit {
                path,
                part,
                count,
                ..
            } => write!(f, "{path}: split part {part} of {count} cannot be opened"),
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GgufError::Io { source, .. } | GgufError::MissingSplit { source, .. } => Some(source),
            _ => None,
        }
    }
}
