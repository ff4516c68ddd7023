//! The safetensors header: `u64` little-endian length `N`, `N` bytes of
//! JSON `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
//! "__metadata__": {..}}`, then the data area (`data_offsets` relative to
//! it). Read through the codec's bounded cursor; every field is checked
//! against the file and the limits below before use.

use serde_json::Value;

use super::error::SafeTensorsError;
use super::Dtype;
use crate::codec::cursor::Cursor;

/// Largest accepted JSON header (same limit as the reference implementation).
pub const MAX_HEADER_BYTES: usize = 100 << 20;
/// Largest number of tensors in one file.
pub const MAX_TENSORS: usize = 1 << 20;
/// Largest tensor rank.
pub const MAX_RANK: usize = 8;
/// safetensors dtypes that exist but tpi does not compute with.
const KNOWN_UNSUPPORTED: &[&str] = &[
    "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F64", "F8_E4M3", "F8_E5M2",
    "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
];

/// One tensor's location.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index of the shard file holding it.
    pub shard: usize,
    /// Absolute byte offset in the shard file.
    pub offset: usize,
    /// Length in bytes (`product(shape) * dtype.size()`).
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.len / self.dtype.size()
    }
}

/// Parses and validates a safetensors header. Offsets in the result are
/// absolute in `file`; `shard` is 0.
pub fn parse_header(file: &[u8], origin: &str) -> Result<Vec<TensorInfo>, SafeTensorsError> {
    let file_len = file.len() as u64;
    let mut cur = Cursor::new(file);
    let header_len = cur
        .u64("header length")
        .map_err(|_| SafeTensorsError::Truncated {
            origin: origin.to_string(),
            what: "the 8-byte header length".to_string(),
            needed: 8,
            len: file_len,
        })?;
    if header_len > MAX_HEADER_BYTES as u64 {
        return Err(SafeTensorsError::HeaderTooLarge {
            origin: origin.to_string(),
            header_len,
            max: MAX_HEADER_BYTES as u64,
        });
    }
    // header_len <= 100 MiB, so this fits usize on every target we support.
    let hlen = header_len as usize;
    let header = cur
        .bytes(hlen, "header")
        .map_err(|_| SafeTensorsError::Truncated {
            origin: origin.to_string(),
            what: format!("the {header_len}-byte header"),
            needed: 8 + header_len,
            len: file_len,
        })?;
    let data_start = 8 + hlen;
    let data_len = (file.len() - data_start) as u64;

    let invalid = |tensor: Option<&str>, msg: String| SafeTensorsError::InvalidHeader {
        origin: origin.to_string(),
        tensor: tensor.map(str::to_string),
        msg,
    };
    let json: Value =
        serde_json::from_slice(header).map_err(|e| invalid(None, format!("JSON: {e}")))?;
    let Value::Object(map) = json else {
        return Err(invalid(None, "not a JSON object".to_string()));
    };
    if map.len() > MAX_TENSORS + 1 {
        return Err(SafeTensorsError::TooManyTensors {
            origin: origin.to_string(),
            count: map.len(),
            max: MAX_TENSORS,
        });
    }

    let mut out = Vec::with_capacity(map.len());
    // (begin, end, index into out) for the overlap check.
    let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(map.len());
    for (name, entry) in &map {
        if name == "__metadata__" {
            let Value::Object(meta) = entry else {
                return Err(invalid(None, "__metadata__ is not an object".to_string()));
            };
            if let Some((k, _)) = meta.iter().find(|(_, v)| !v.is_string()) {
                return Err(invalid(
                    None,
                    format!("__metadata__ value for `{k}` is not a string"),
                ));
            }
            continue;
        }
        let t = Some(name.as_str());
        let Value::Object(entry) = entry else {
            return Err(invalid(t, "not an object".to_string()));
        };
        let dtype_str = entry
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(t, "missing or non-string `dtype`".to_string()))?;
        let dtype = match Dtype::from_name(dtype_str) {
            Some(d) => d,
            None if KNOWN_UNSUPPORTED.contains(&dtype_str) => {
                return Err(SafeTensorsError::UnsupportedDtype {
                    origin: origin.to_string(),
                    tensor: name.clone(),
                    dtype: dtype_str.to_string(),
                })
            }
            None => {
                return Err(SafeTensorsError::UnknownDtype {
                    origin: origin.to_string(),
                    tensor: name.clone(),
                    dtype: dtype_str.chars().take(64).collect(),
                })
            }
        };
        let shape_v = entry
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(t, "missing or non-list `shape`".to_string()))?;
        if shape_v.len() > MAX_RANK {
            return Err(invalid(
                t,
                format!("rank {} exceeds {MAX_RANK}", shape_v.len()),
            ));
        }
        let shape64 = shape_v
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| invalid(t, "shape entries must be non-negative integers".to_string()))?;
        let offs = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(t, "missing or non-list `data_offsets`".to_string()))?;
        let (begin, end) = match offs.as_slice() {
            [b, e] => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) => (b, e),
                _ => {
                    return Err(invalid(
                        t,
                        "data_offsets must be non-negative integers".to_string(),
                    ))
                }
            },
            _ => return Err(invalid(t, "data_offsets must be [begin, end]".to_string())),
        };
        if begin > end || end > data_len {
            return Err(SafeTensorsError::OffsetOutOfBounds {
                origin: origin.to_string(),
                tensor: name.clone(),
                begin,
                end,
                data_len,
            });
        }
        let expected = shape64
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d));
        if expected != Some(end - begin) {
            return Err(SafeTensorsError::SizeMismatch {
                origin: origin.to_string(),
                tensor: name.clone(),
                shape: shape64,
                dtype,
                expected,
                actual: end - begin,
            });
        }
        // end <= data_len <= file.len(), so begin/end/len fit usize; a
        // dimension may not (zero-sized tensor on a 32-bit target).
        let shape = shape64
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| invalid(t, "dimension does not fit usize".to_string()))?;
        spans.push((begin, end, out.len()));
        out.push(TensorInfo {
            name: name.clone(),
            dtype,
            shape,
            shard: 0,
            offset: data_start + begin as usize,
            len: (end - begin) as usize,
        });
    }

    spans.sort_unstable();
    for w in spans.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.0 < a.1 {
            return Err(SafeTensorsError::Overlap {
                origin: origin.to_string(),
                first: out[a.2].name.clone(),
                second: out[b.2].name.clone(),
                offset: b.0,
            });
        }
    }
    Ok(out)
}
