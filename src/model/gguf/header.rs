//! The GGUF header (versions 2 and 3), parsed through the codec's bounded
//! cursor. The layout, from ggml's `docs/gguf.md`, all little-endian, and
//! the rules each check below cites:
//!
//! ```text
//! magic      u32  "GGUF"                                          G1
//! version    u32  2 or 3                                          G2
//! n_tensors  u64                                                  G3
//! n_kv       u64                                                  G3
//! n_kv x     key: string, value_type: u32, value                  G4 G5 G6
//! n_tensors x name: string, n_dims: u32, dims: n_dims x u64,
//!            ggml_type: u32, offset: u64                          G8 G9
//! padding to general.alignment                                    G7
//! tensor data                                                     G10
//!
//! string = len: u64, len bytes of UTF-8 (no NUL)
//! array  = elem_type: u32, len: u64, len x value (arrays nest)
//! ```
//!
//! - G1 the magic is the four bytes `GGUF`.
//! - G2 only versions 2 and 3 (v1 had 32-bit counts; v2 and v3 differ only
//!   in v3 allowing big-endian files, which fail G1/G2 here).
//! - G3 every count and length read from the file is checked against the
//!   bytes the header can still occupy (each element takes at least
//!   [`ValueType::min_encoded_bytes`], a tensor info at least 24 bytes)
//!   before anything is allocated (and G6 charges what it will allocate).
//! - G4 strings are UTF-8; a key is at most 65535 bytes; keys are unique.
//! - G5 value types are 0..=12; a bool byte is 0 or 1 ("anything else is
//!   invalid"); arrays nest at most [`MAX_ARRAY_DEPTH`] deep.
//! - G6 the header (everything before the padding) is at most
//!   [`MAX_HEADER_BYTES`], and what it parses into at most
//!   [`MAX_PARSED_BYTES`], charged before each allocation.
//! - G7 `general.alignment` (default 32) is a nonzero power of two and fits
//!   u32; the data section starts at the header's end rounded up to it.
//! - G8 a tensor name is at most 64 bytes and unique; at most 4 dims, each
//!   at least 1, their product fits u64.
//! - G9 the ggml type is known ([`GgmlType`]); rows (`dims[0]`) are whole
//!   blocks; the byte size fits u64.
//! - G10 each tensor offset (relative to the data section) is a multiple
//!   of the alignment; its bytes lie inside the file; no two tensors
//!   overlap.

use std::collections::HashMap;

use super::error::GgufError;
use super::tensor::{place_tensors, TensorInfo};
use super::types::GgmlType;
use super::value::{Array, Metadata, StringArray, Value, ValueType};
use crate::codec::cursor::Cursor;

/// G6: the largest header accepted. Real headers are nearly all
/// vocabulary: Gemma 3 (262k tokens, scores, types) ~7 MB, Llama 3 (128k
/// tokens, 280k merges) ~8 MB, Llama 4 (202k tokens, ~440k merges) ~12 MB.
/// 64 MiB leaves 5x room over the largest while bounding what a crafted
/// file makes tpi read into RAM on a 1 GiB device.
pub const MAX_HEADER_BYTES: usize = 64 << 20;
/// G6: the most heap the parsed header may take (values, strings, arrays,
/// tensor infos, the key and name indexes), estimated per element from
/// the in-memory sizes and charged before allocating. A real header
/// parses into about its own size (a string array costs its text plus 8
/// bytes a string); without this bound 12-byte empty nested arrays or
/// 13-byte pairs would turn 64 MiB into ~600 MiB.
pub const MAX_PARSED_BYTES: u64 = 128 << 20;
/// G5: deepest array nesting (llama.cpp writes none; gguf-py reads any).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// G4: longest key (spec: "at most 2^16-1 bytes").
pub const MAX_KEY_BYTES: u64 = u16::MAX as u64;
/// G8: longest tensor name (spec: "at most 64 bytes").
pub const MAX_NAME_BYTES: u64 = 64;
/// G8: most dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// G7: `general.alignment` when the key is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// G3: fewest bytes of one tensor info (empty name, no dims).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// G3: fewest bytes of one key-value pair (empty key, a u8).
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// G6: heap charged per key-value pair besides its key and value: the
/// pair, the index entry and hash table slack.
const KV_HEAP_BYTES: u64 =
    (size_of::<(String, Value)>() + size_of::<(String, usize)>() + 16) as u64;
/// G6: heap charged per tensor besides its name and dims: the info, the
/// name index entry and hash table slack.
const TENSOR_HEAP_BYTES: u64 = (size_of::<TensorInfo>() + size_of::<(&str, usize)>() + 16) as u64;

/// A parsed and checked GGUF header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: Metadata,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment` or [`DEFAULT_ALIGNMENT`].
    pub alignment: u64,
    /// Absolute offset of the data section (the header's aligned end).
    pub data_offset: u64,
}

/// Parses and checks a whole GGUF file held in memory (the fuzz entry; the
/// file reader shares [`parse_prefix`]). Tensor offsets in the result are
/// absolute; `file` is 0.
pub fn parse(bytes: &[u8], origin: &str) -> Result<Header, GgufError> {
    let limit = bytes.len().min(MAX_HEADER_BYTES);
    parse_prefix(
        bytes.get(..limit).unwrap_or(bytes),
        bytes.len() as u64,
        origin,
    )
}

/// Parses the header from the first bytes of a file of `file_len` bytes.
/// A `Truncated` error while `prefix` is shorter than both the file and
/// [`MAX_HEADER_BYTES`] means: read more and call again.
pub fn parse_prefix(prefix: &[u8], file_len: u64, origin: &str) -> Result<Header, GgufError> {
    let mut r = Reader {
        cur: Cursor::new(prefix),
        prefix_len: prefix.len() as u64,
        limit: file_len.min(MAX_HEADER_BYTES as u64),
        file_len,
        origin,
        spent: 0,
    };
    // G1
    let magic = r.array::<4>(&|| "the magic".into())?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic {
            origin: origin.into(),
            got: magic,
        });
    }
    // G2
    let version = r.u32(&|| "the version".into())?;
    if !matches!(version, 2 | 3) {
        return Err(GgufError::BadVersion {
            origin: origin.into(),
            version,
        });
    }
    let n_tensors = r.u64(&|| "the tensor count".into())?;
    let n_kv = r.u64(&|| "the metadata count".into())?;
    // G3: a tensor count no file of this length can hold fails here, before
    // the metadata is read; it is checked against the room again where the
    // tensor infos start.
    let tensor_count = || "the tensor count".to_string();
    r.count(n_tensors, MIN_TENSOR_INFO_BYTES, &tensor_count)?;
    let n_kv = r.count(n_kv, MIN_KV_BYTES, &|| "the metadata count".into())?;

    let mut metadata = Metadata::new(origin);
    r.charge(n_kv as u64 * KV_HEAP_BYTES, &|| "the metadata".into())?;
    metadata.reserve(n_kv);
    for i in 0..n_kv {
        let key = r.string(MAX_KEY_BYTES, &|| format!("metadata key {i}"))?;
        // The key is held twice: in the pair and in the index.
        r.charge(2 * key.len() as u64, &|| format!("metadata key {i}"))?;
        let type_id = r.u32(&|| format!("the value type of `{key}`"))?;
        let value = r.value(type_id, key, 0)?;
        // G4: unique keys.
        metadata
            .insert(key.to_string(), value)
            .map_err(|key| GgufError::DuplicateKey {
                origin: origin.into(),
                key,
            })?;
    }

    let n_tensors = r.count(n_tensors, MIN_TENSOR_INFO_BYTES, &tensor_count)?;
    r.charge(n_tensors as u64 * TENSOR_HEAP_BYTES, &tensor_count)?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(MAX_NAME_BYTES, &|| format!("the name of tensor {i}"))?;
        // The name and up to 4 dims (checked before they are read).
        let info = || format!("tensor `{name}`");
        r.charge(name.len() as u64 + 8 * u64::from(MAX_DIMS), &info)?;
        // G8: unique names.
        if names.insert(name, i).is_some() {
            return Err(GgufError::DuplicateTensor {
                name: name.into(),
                first: origin.into(),
                second: origin.into(),
            });
        }
        tensors.push(r.tensor_info(name)?);
    }

    // G7
    let alignment = match metadata.opt_u32("general.alignment")? {
        None => DEFAULT_ALIGNMENT,
        Some(a) if a.is_power_of_two() => u64::from(a),
        Some(a) => {
            return Err(GgufError::BadAlignment {
                origin: origin.into(),
                alignment: a.into(),
            })
        }
    };
    let header_end = r.pos();
    // header_end <= MAX_HEADER_BYTES and alignment <= 2^31: no overflow.
    let data_offset = header_end.next_multiple_of(alignment);
    place_tensors(&mut tensors, data_offset, alignment, file_len, origin)?;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Describes what is being read, for errors only (called on failure).
type What<'w> = &'w dyn Fn() -> String;

/// The bounded cursor over the header prefix, with the file's length and
/// the header limit, turning codec errors into [`GgufError`]s that name
/// the file, what was read and where.
struct Reader<'a> {
    cur: Cursor<'a>,
    prefix_len: u64,
    /// Bytes the header may occupy: `min(file_len, MAX_HEADER_BYTES)`.
    limit: u64,
    file_len: u64,
    origin: &'a str,
    /// Heap charged so far against [`MAX_PARSED_BYTES`].
    spent: u64,
}

impl<'a> Reader<'a> {
    /// G6: charges `bytes` of parsed form before they are allocated.
    fn charge(&mut self, bytes: u64, what: What) -> Result<(), GgufError> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > MAX_PARSED_BYTES {
            return Err(GgufError::ParsedTooLarge {
                origin: self.origin.into(),
                what: what(),
                max: MAX_PARSED_BYTES,
            });
        }
        Ok(())
    }

    fn pos(&self) -> u64 {
        self.prefix_len - self.cur.remaining() as u64
    }

    /// Bytes the header can still occupy (G6).
    fn room(&self) -> u64 {
        self.limit.saturating_sub(self.pos())
    }

    /// The error for `n` bytes more than [`Self::room`]: past the header
    /// limit when the file has them, else truncated.
    fn short(&self, n: u64, what: What) -> GgufError {
        let left = self.file_len.saturating_sub(self.pos());
        if n <= left {
            GgufError::HeaderTooLarge {
                origin: self.origin.into(),
                max: MAX_HEADER_BYTES as u64,
            }
        } else {
            GgufError::Truncated {
                origin: self.origin.into(),
                what: what(),
                offset: self.pos(),
                need: n,
                have: left,
            }
        }
    }

    fn take(&mut self, n: u64, what: What) -> Result<&'a [u8], GgufError> {
        if n > self.room() {
            return Err(self.short(n, what));
        }
        // n <= room <= MAX_HEADER_BYTES: fits usize. A prefix shorter than
        // the room fails here too, as truncated; the file reader then reads
        // more (see `parse_prefix`).
        let pos = self.pos();
        self.cur
            .bytes(n as usize, "gguf")
            .map_err(|_| GgufError::Truncated {
                origin: self.origin.into(),
                what: what(),
                offset: pos,
                need: n,
                have: self.prefix_len - pos,
            })
    }

    fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: What) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// G3: `n` elements of at least `each` bytes must fit the room; the
    /// result fits usize.
    fn count(&self, n: u64, each: u64, what: What) -> Result<usize, GgufError> {
        let max = self.room() / each;
        if n <= max {
            return Ok(n as usize);
        }
        match n.checked_mul(each) {
            Some(bytes) if bytes <= self.file_len.saturating_sub(self.pos()) => {
                Err(self.short(bytes, what))
            }
            _ => Err(GgufError::TooLong {
                origin: self.origin.into(),
                what: what(),
                count: n,
                max,
            }),
        }
    }

    /// G4: a string of at most `max` bytes, borrowed from the header.
    fn string(&mut self, max: u64, what: What) -> Result<&'a str, GgufError> {
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > max {
            return Err(GgufError::OverLimit {
                origin: self.origin.into(),
                what: what(),
                len,
                max,
            });
        }
        let n = self.count(len, 1, &|| format!("the length of {}", what()))?;
        let bytes = self.take(n as u64, what)?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::NotUtf8 {
            origin: self.origin.into(),
            what: what(),
        })
    }

    fn value_type(&self, type_id: u32, key: &str) -> Result<ValueType, GgufError> {
        ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            origin: self.origin.into(),
            key: key.into(),
            type_id,
        })
    }

    /// G5: one value of type `type_id` for `key`.
    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        let what = || format!("the value of `{key}`");
        Ok(match self.value_type(type_id, key)? {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => {
                let [byte] = self.array(&what)?;
                Value::Bool(self.bool(byte, key)?)
            }
            ValueType::String => {
                let s = self.string(u64::MAX, &what)?;
                self.charge(s.len() as u64, &what)?;
                Value::String(s.to_string())
            }
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
        })
    }

    fn bool(&self, byte: u8, key: &str) -> Result<bool, GgufError> {
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(GgufError::BadBool {
                origin: self.origin.into(),
                key: key.into(),
                byte,
            }),
        }
    }

    /// G5: an array (element type, length, elements) at nesting `depth`.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array, GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep {
                origin: self.origin.into(),
                key: key.into(),
                max: MAX_ARRAY_DEPTH,
            });
        }
        let type_id = self.u32(&|| format!("the element type of array `{key}`"))?;
        let ty = self.value_type(type_id, key)?;
        let len_what = || format!("the length of array `{key}`");
        let len = self.u64(&len_what)?;
        let n = self.count(len, ty.min_encoded_bytes(), &len_what)?;
        let what = || format!("the {n} elements of array `{key}`");
        // Bytes of one element in memory (a string's text is charged as
        // it is read).
        let each = match ty {
            ValueType::String => size_of::<usize>() as u64,
            ValueType::Array => size_of::<Array>() as u64,
            fixed => fixed.min_encoded_bytes(),
        };
        self.charge(n as u64 * each, &what)?;
        // Fixed-size elements: one bounded read, then decoded.
        let fixed = |r: &mut Self| r.take(n as u64 * ty.min_encoded_bytes(), &what);
        Ok(match ty {
            ValueType::U8 => Array::U8(fixed(self)?.to_vec()),
            ValueType::I8 => Array::I8(le_vec(fixed(self)?, i8::from_le_bytes)),
            ValueType::U16 => Array::U16(le_vec(fixed(self)?, u16::from_le_bytes)),
            ValueType::I16 => Array::I16(le_vec(fixed(self)?, i16::from_le_bytes)),
            ValueType::U32 => Array::U32(le_vec(fixed(self)?, u32::from_le_bytes)),
            ValueType::I32 => Array::I32(le_vec(fixed(self)?, i32::from_le_bytes)),
            ValueType::F32 => Array::F32(le_vec(fixed(self)?, f32::from_le_bytes)),
            ValueType::U64 => Array::U64(le_vec(fixed(self)?, u64::from_le_bytes)),
            ValueType::I64 => Array::I64(le_vec(fixed(self)?, i64::from_le_bytes)),
            ValueType::F64 => Array::F64(le_vec(fixed(self)?, f64::from_le_bytes)),
            ValueType::Bool => Array::Bool(
                fixed(self)?
                    .iter()
                    .map(|&b| self.bool(b, key))
                    .collect::<Result<_, _>>()?,
            ),
            ValueType::String => {
                let mut a = StringArray::new();
                a.reserve(n, 0);
                for i in 0..n {
                    let elem = || format!("element {i} of array `{key}`");
                    let s = self.string(u64::MAX, &elem)?;
                    self.charge(s.len() as u64, &elem)?;
                    a.push(s);
                }
                Array::String(a)
            }
            ValueType::Array => {
                let mut a = Vec::with_capacity(n);
                for _ in 0..n {
                    a.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(a)
            }
        })
    }

    /// G8, G9: the rest of tensor info `name` (offset still relative).
    fn tensor_info(&mut self, name: &str) -> Result<TensorInfo, GgufError> {
        let what = || format!("the info of tensor `{name}`");
        let origin = self.origin;
        let bad = |dims: Vec<u64>, why| GgufError::BadDims {
            origin: origin.into(),
            tensor: name.into(),
            dims,
            why,
        };
        let n_dims = self.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(bad(Vec::new(), "more than 4 dimensions"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&what)?);
        }
        if dims.contains(&0) {
            return Err(bad(dims, "a dimension is 0"));
        }
        let Some(n_elements) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
            return Err(bad(dims, "the element count overflows u64"));
        };
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownType {
                origin: self.origin.into(),
                tensor: name.into(),
                type_id,
            });
        };
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(ggml_type.block_len()) {
            return Err(GgufError::NotWholeBlocks {
                origin: self.origin.into(),
                tensor: name.into(),
                ggml_type: ggml_type.name(),
                ne0,
                block: ggml_type.block_len(),
            });
        }
        let Some(len) = ggml_type.bytes_for(n_elements) else {
            return Err(bad(dims, "the byte size overflows u64"));
        };
        Ok(TensorInfo {
            name: name.into(),
            dims,
            ggml_type,
            file: 0,
            offset,
            len,
        })
    }
}

/// Little-endian elements of `N` bytes each (`bytes.len()` a multiple of
/// `N`, as [`Reader::array_value`] reads them).
fn le_vec<const N: usize, T>(bytes: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from_le(a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// gguf-py's fixture (tools/gguf_fixture.py): its header is the first
    /// 1600 bytes.
    const MIXED: &[u8] = include_bytes!("../../../tests/fixtures/gguf/mixed.gguf");

    #[test]
    fn fixture_parses_and_every_prefix_is_an_error_or_asks_for_more() {
        let h = parse(MIXED, "mixed.gguf").unwrap();
        assert_eq!((h.version, h.alignment, h.data_offset), (3, 64, 1600));
        assert_eq!(h.tensors.len(), 10);
        // The file ends in padding after its last tensor.
        let data_end = h.tensors.iter().map(|t| t.offset + t.len).max().unwrap();
        for n in (0..MIXED.len()).step_by(7) {
            let cut = &MIXED[..n];
            assert_eq!(parse(cut, "cut").is_ok(), n as u64 >= data_end, "{n}");
            match parse_prefix(cut, MIXED.len() as u64, "p") {
                Ok(p) => assert_eq!(p.tensors, h.tensors, "{n}"),
                Err(e) => assert!(matches!(e, GgufError::Truncated { .. }), "{n}: {e}"),
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut f = b"GGUF\x03\0\0\0".to_vec();
            f.extend_from_slice(&bytes);
            let _ = parse(&f, "p");
            let _ = parse(&bytes, "p");
        }

        #[test]
        fn never_panics_on_mutated_header(
            muts in proptest::collection::vec((0usize..1600, any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut f = MIXED.to_vec();
            for (pos, b) in muts {
                f[pos] = b;
            }
            if let Ok(h) = parse(&f, "p") {
                for t in &h.tensors {
                    prop_assert!(t.offset + t.len <= f.len() as u64);
                    prop_assert_eq!(t.offset % h.alignment, 0);
                }
            }
            let n = cut % (f.len() + 1);
            let _ = parse(&f[..n], "p");
        }
    }
}
