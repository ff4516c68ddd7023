//! Tensor infos: where each tensor's bytes are (file, absolute offset,
//! length), and the placement rule G10 of [`super::header`] that makes them
//! safe to pread or map: aligned, inside the file, disjoint.

use super::error::GgufError;
use super::types::GgmlType;

/// One tensor's place in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) is the contiguous row length, so a
    /// matrix of `rows x cols` in row-major (HF) terms is `[cols, rows]`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Index of the file holding it (0 for a single file; split part - 1).
    pub file: usize,
    /// Absolute byte offset of its data in that file.
    pub offset: u64,
    /// Bytes of data.
    pub len: u64,
}

impl TensorInfo {
    /// Elements (the product of `dims`; 1 for no dims). Checked not to
    /// overflow when parsed (G8); saturating for an info built by hand.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1, |a: u64, &d| a.saturating_mul(d))
    }

    /// ne0: elements per row.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Rows: the product of the dims after the first.
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1, |a: u64, &d| a.saturating_mul(d))
    }
}

/// G10: makes each tensor's relative offset (as read) absolute and checks
/// alignment, bounds and overlap.
pub(super) fn place_tensors(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    alignment: u64,
    file_len: u64,
    origin: &str,
) -> Result<(), GgufError> {
    for t in tensors.iter_mut() {
        if !t.offset.is_multiple_of(alignment) {
            return Err(GgufError::Misaligned {
                origin: origin.into(),
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let begin = data_offset.checked_add(t.offset);
        let end = begin.and_then(|b| b.checked_add(t.len));
        match (begin, end) {
            (Some(b), Some(e)) if e <= file_len => t.offset = b,
            _ => {
                return Err(GgufError::OutOfBounds {
                    origin: origin.into(),
                    tensor: t.name.clone(),
                    begin: begin.unwrap_or(t.offset),
                    end,
                    file_len,
                })
            }
        }
    }
    let mut spans: Vec<(u64, u64, usize)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.offset, t.offset + t.len, i))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        if let [(_, a_end, a), (b_begin, _, b)] = *w {
            if b_begin < a_end {
                let name = |i: usize| tensors.get(i).map(|t| t.name.clone()).unwrap_or_default();
                return Err(GgufError::Overlap {
                    origin: origin.into(),
                    first: name(a),
                    second: name(b),
                    offset: b_begin,
                });
            }
        }
    }
    Ok(())
}
