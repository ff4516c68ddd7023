//! Q4_K matrices cut into a slice interleaved by 8 rows
//! ([`WeightType::Q4_Kx8`], `tpi_kernels::kx8`): the layout whose GEMV
//! lanes are rows, about 2.5x the plain Q4_K kernel's speed from cache.
//!
//! A matrix is interleaved when it is Q4_K in the slice (a GGUF's own Q4_K
//! tensor, or `--quantize q4_k`), multiplies activations (every layer
//! matrix and the lm_head; not the embedding, which is read a row at a
//! time) and its rows on this rank are a whole number of groups of 8;
//! otherwise it stays plain Q4_K. Each group's 8 rows are made as a plain
//! Q4_K slice would hold them (the stored bytes of the columns taken, or
//! quantized by ggml's reference quantizer), then repacked: the values are
//! the same bits, only their order changes (`BlockQ4_Kx8::row` gives each
//! row back).

use std::ops::Range;

use tpi_kernels::kquant::QK_K;
use tpi_kernels::kx8::{repack_q4_k_x8, ROWS};
use tpi_kernels::{BlockQ4_K, BlockQ4_Kx8};

use super::manifest::Role;
use crate::model::dtype::WeightType;
use crate::model::source::MatrixRef;

/// The type a slice stores a matrix of `rows` rows in, given the type it
/// would have had (`to`): Q4_K becomes [`WeightType::Q4_Kx8`] where the
/// module docs say.
pub fn slice_type(to: WeightType, role: Role, rows: usize) -> WeightType {
    let interleave =
        to == WeightType::Q4_K && role != Role::Embedding && rows > 0 && rows.is_multiple_of(ROWS);
    match interleave {
        true => WeightType::Q4_Kx8,
        false => to,
    }
}

/// Rows `rows` (a multiple of 8 of them), columns `cols` (whole
/// super-blocks) of `m` as interleaved Q4_K, group by group into `put`.
/// `quantize` turns a stored row (any type but Q4_K) into the Q4_K blocks
/// of the columns taken.
pub fn write_q4_k_x8(
    m: &MatrixRef<'_>,
    rows: Range<usize>,
    cols: Range<usize>,
    mut quantize: impl FnMut(&[u8], &mut [BlockQ4_K]) -> std::io::Result<()>,
    mut put: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let bad = |what: String| std::io::Error::other(format!("{}: {what}", m.name));
    if !rows.len().is_multiple_of(ROWS) || !cols.start.is_multiple_of(QK_K) {
        return Err(bad(format!(
            "rows {rows:?} and columns {cols:?} are not whole groups of 8 rows and 256 columns"
        )));
    }
    let nb = cols.len() / QK_K;
    let (a, b) = (cols.start / QK_K * 144, cols.end / QK_K * 144);
    let mut plain = vec![BlockQ4_K::default(); ROWS * nb];
    let mut packed = vec![BlockQ4_Kx8::default(); nb];
    for g in rows.step_by(ROWS) {
        for (i, dst) in plain.chunks_exact_mut(nb.max(1)).enumerate() {
            let row = m
                .row(g + i)
                .ok_or_else(|| bad(format!("row {} is outside the tensor", g + i)))?;
            if m.wtype == WeightType::Q4_K {
                let src = row
                    .get(a..b)
                    .ok_or_else(|| bad(format!("row {} is shorter than {b} bytes", g + i)))?;
                bytemuck::cast_slice_mut::<BlockQ4_K, u8>(dst).copy_from_slice(src);
            } else {
                quantize(row, dst)?;
            }
        }
        repack_q4_k_x8(&plain, nb, &mut packed);
        put(bytemuck::cast_slice(&packed))?;
    }
    Ok(())
}
