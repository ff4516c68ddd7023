//! What a rank's weights look like to the engine: matrices in their stored
//! dtype or ggml block type ([`Mat`], [`LayerMats`]; a kernel [`View`]), the small f32 vectors kept resident
//! ([`LayerVecs`], [`Resident`]), the dimensions of the rank's slice
//! ([`Dims`]) and the two traits the forward reads them through
//! ([`LayerSource`] for layer matrices, [`Head`] for embedding and lm_head
//! rows).
//!
//! Two implementations: [`in_place`] reads a whole model from the mmapped
//! safetensors (one rank, nothing copied); [`sliced`] reads a rank's slice
//! file, resident or streamed through the memory window.

pub mod error;
pub mod in_place;
pub mod sliced;

pub use error::WeightsError;

/// What reading weights returns.
pub type Result<T, E = WeightsError> = std::result::Result<T, E>;
use crate::model::config::Config;
use crate::model::dtype::WeightType;
use crate::split::plan::RankSlice;
use tpi_kernels::kquant::{dequantize_row_q4_k, dequantize_row_q6_k, BlockQ4_K, BlockQ6_K, QK_K};
use tpi_kernels::kx8::{dequantize_row_q4_k_x8, BlockQ4_Kx8, ROWS};
use tpi_kernels::quant::{dequantize_row_q4_0, dequantize_row_q8_0, QK};
use tpi_kernels::{BlockQ4_0, BlockQ8_0, Weights};

/// A matrix in its stored type: `rows x cols` weights, row-major, as raw
/// bytes (`rows * wtype.row_bytes(cols)` of them: elements for floats,
/// 32-weight blocks along each row for Q8_0 / Q4_0, 256-weight
/// super-blocks for Q4_K / Q6_K).
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

/// A matrix typed for the kernels: floats for [`tpi_kernels::Backend::gemv`],
/// blocks for `gemv_q8_0` / `gemv_q4_0` (which take Q8_0 activations) and
/// super-blocks for `gemv_q4_k` / `gemv_q6_k` (Q8_K activations): the
/// caller quantizes `x` first ([`View::activations`]). Lengths are in
/// weights, as the float kernels count them; a block view holds
/// `len / block` blocks.
#[allow(non_camel_case_types)] // ggml's spelling: Q4_K, not Q4K
#[derive(Clone, Copy, Debug)]
pub enum View<'a> {
    Float(Weights<'a>),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
    Q4_K(&'a [BlockQ4_K]),
    Q6_K(&'a [BlockQ6_K]),
    /// Q4_K rows interleaved by 8 (`gemv_q4_k_x8`): `rows / 8 x cols / 256`
    /// blocks, group-major. Sliced only at whole groups of rows.
    Q4_Kx8(&'a [BlockQ4_Kx8]),
}

/// What a matrix multiplies: f32 inputs, or inputs quantized per block.
#[allow(non_camel_case_types)] // ggml's spelling
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    F32,
    /// 32-blocks (`quantize_row_q8_0`), for Q8_0 / Q4_0 weights.
    Q8_0,
    /// 256-blocks (`quantize_row_q8_k`), for Q4_K / Q6_K weights.
    Q8_K,
}

impl<'a> View<'a> {
    /// Number of weights.
    pub fn len(&self) -> usize {
        match self {
            View::Float(w) => w.len(),
            View::Q8_0(b) => b.len() * QK,
            View::Q4_0(b) => b.len() * QK,
            View::Q4_K(b) => b.len() * QK_K,
            View::Q6_K(b) => b.len() * QK_K,
            View::Q4_Kx8(b) => b.len() * ROWS * QK_K,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the weights (for sizing work).
    pub fn byte_len(&self) -> usize {
        match self {
            View::Float(w) => w.len() * w.elem_bytes(),
            View::Q8_0(b) => std::mem::size_of_val(*b),
            View::Q4_0(b) => std::mem::size_of_val(*b),
            View::Q4_K(b) => std::mem::size_of_val(*b),
            View::Q6_K(b) => std::mem::size_of_val(*b),
            View::Q4_Kx8(b) => std::mem::size_of_val(*b),
        }
    }

    /// Weights per block: 1 for floats, 32 or 256; 8 x 256 for Q4_Kx8.
    pub fn block(&self) -> usize {
        match self {
            View::Float(_) => 1,
            View::Q8_0(_) | View::Q4_0(_) => QK,
            View::Q4_K(_) | View::Q6_K(_) => QK_K,
            View::Q4_Kx8(_) => ROWS * QK_K,
        }
    }

    /// Rows a slice of the matrix starts and ends on: 8 for Q4_Kx8, else 1.
    pub fn row_group(&self) -> usize {
        match self {
            View::Q4_Kx8(_) => ROWS,
            _ => 1,
        }
    }

    /// Weights `start..end`; for blocks both must be multiples of the
    /// block (whole rows of whole blocks are; for Q4_Kx8, whole groups of
    /// 8 rows: the caller's `start` and `end` are `rows * cols` with
    /// `rows` a multiple of [`View::row_group`]).
    ///
    /// # Panics
    /// If the range is out of bounds or splits a block.
    pub fn slice(&self, start: usize, end: usize) -> View<'a> {
        let n = self.block();
        assert!(
            start.is_multiple_of(n) && end.is_multiple_of(n),
            "block view sliced at {start}..{end}"
        );
        let blocks = start / n..end / n;
        match self {
            View::Float(w) => View::Float(w.slice(start, end)),
            View::Q8_0(b) => View::Q8_0(&b[blocks]),
            View::Q4_0(b) => View::Q4_0(&b[blocks]),
            View::Q4_K(b) => View::Q4_K(&b[blocks]),
            View::Q6_K(b) => View::Q6_K(&b[blocks]),
            View::Q4_Kx8(b) => View::Q4_Kx8(&b[blocks]),
        }
    }

    /// Whether `x` must be quantized for this matrix.
    pub fn is_quantized(&self) -> bool {
        !matches!(self, View::Float(_))
    }

    /// The inputs this matrix multiplies.
    pub fn activations(&self) -> Activations {
        match self {
            View::Float(_) => Activations::F32,
            View::Q8_0(_) | View::Q4_0(_) => Activations::Q8_0,
            View::Q4_K(_) | View::Q6_K(_) | View::Q4_Kx8(_) => Activations::Q8_K,
        }
    }
}

impl<'a> From<Weights<'a>> for View<'a> {
    fn from(w: Weights<'a>) -> View<'a> {
        View::Float(w)
    }
}

impl<'a> Mat<'a> {
    /// Typed view for the kernels. Fails only when the bytes are misaligned
    /// or of the wrong length, which loaders rule out before building a `Mat`.
    pub fn weights(&self) -> Result<View<'a>> {
        let bad = || WeightsError::Matrix {
            bytes: self.bytes.len(),
            rows: self.rows,
            cols: self.cols,
        };
        fn cast<T: bytemuck::Pod>(b: &[u8]) -> Option<&[T]> {
            bytemuck::try_cast_slice(b).ok()
        }
        let w = match self.wtype {
            WeightType::F32 => View::Float(Weights::F32(cast(self.bytes).ok_or_else(bad)?)),
            WeightType::F16 => View::Float(Weights::F16(cast(self.bytes).ok_or_else(bad)?)),
            WeightType::BF16 => View::Float(Weights::BF16(cast(self.bytes).ok_or_else(bad)?)),
            WeightType::Q8_0 => View::Q8_0(cast(self.bytes).ok_or_else(bad)?),
            WeightType::Q4_0 => View::Q4_0(cast(self.bytes).ok_or_else(bad)?),
            WeightType::Q4_K => View::Q4_K(cast(self.bytes).ok_or_else(bad)?),
            WeightType::Q6_K => View::Q6_K(cast(self.bytes).ok_or_else(bad)?),
            WeightType::Q4_Kx8 => View::Q4_Kx8(cast(self.bytes).ok_or_else(bad)?),
        };
        let whole = match w {
            View::Q4_Kx8(_) => self.rows.is_multiple_of(ROWS) && self.cols.is_multiple_of(QK_K),
            _ => self.cols.is_multiple_of(w.block()),
        };
        if w.len() != self.rows * self.cols || !whole {
            return Err(bad());
        }
        Ok(w)
    }

    /// Row `r` widened to f32 into `out` (embedding lookups).
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let w = self.weights()?;
        if r >= self.rows || out.len() != self.cols {
            return Err(WeightsError::OutOfRange {
                what: "row",
                index: r,
                len: self.rows,
            });
        }
        if let View::Q4_Kx8(b) = w {
            dequantize_row_q4_k_x8(b, self.cols / QK_K, r, out);
            return Ok(());
        }
        let row = w.slice(r * self.cols, (r + 1) * self.cols);
        match row {
            View::Float(Weights::F32(v)) => out.copy_from_slice(v),
            View::Float(Weights::F16(v)) => {
                out.iter_mut().zip(v).for_each(|(o, x)| *o = x.to_f32())
            }
            View::Float(Weights::BF16(v)) => {
                out.iter_mut().zip(v).for_each(|(o, x)| *o = x.to_f32())
            }
            View::Q8_0(b) => dequantize_row_q8_0(b, out),
            View::Q4_0(b) => dequantize_row_q4_0(b, out),
            View::Q4_K(b) => dequantize_row_q4_k(b, out),
            View::Q6_K(b) => dequantize_row_q6_k(b, out),
            View::Q4_Kx8(_) => unreachable!("Q4_Kx8 rows are read above"),
        }
        Ok(())
    }
}

/// The matrices of one layer for this rank, kernel-ready.
#[derive(Clone, Copy, Debug)]
pub struct LayerMats<'a> {
    /// `[my_heads*head_dim][dim]`
    pub q: Mat<'a>,
    /// `[my_kv_heads*head_dim][dim]`
    pub k: Mat<'a>,
    /// `[my_kv_heads*head_dim][dim]`
    pub v: Mat<'a>,
    /// `[dim][my_heads*head_dim]` (input columns of this rank's heads)
    pub o: Mat<'a>,
    /// `[my_hidden][dim]`
    pub gate: Mat<'a>,
    /// `[my_hidden][dim]`
    pub up: Mat<'a>,
    /// `[dim][my_hidden]`
    pub down: Mat<'a>,
}

/// Small per-layer vectors, resident in f32.
#[derive(Clone, Debug, Default)]
pub struct LayerVecs {
    /// `[dim]`
    pub attn_norm: Vec<f32>,
    /// `[dim]`
    pub ffn_norm: Vec<f32>,
    /// `[my_heads*head_dim]`, `[my_kv*head_dim]` x2 when the model has q/k/v biases.
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
}

/// Where a rank's layer matrices come from (mmapped file, window slots).
pub trait LayerSource {
    /// The matrices of layer `l`, valid until `release(l)`.
    fn acquire(&mut self, l: usize) -> Result<LayerMats<'_>>;
    /// Compute no longer needs layer `l`'s matrices.
    fn release(&mut self, _l: usize) -> Result<()> {
        Ok(())
    }
}

/// Resolved dimensions of this rank's slice.
#[derive(Clone, Debug)]
pub struct Dims {
    pub dim: usize,
    pub head_dim: usize,
    pub n_layers: usize,
    /// Query heads of this rank.
    pub n_heads: usize,
    /// KV heads of this rank.
    pub n_kv_heads: usize,
    /// Query heads per KV head (global).
    pub kv_group: usize,
    /// Global index of this rank's first query head and first KV head.
    pub first_head: usize,
    pub first_kv_head: usize,
    /// MLP columns of this rank.
    pub hidden: usize,
    /// Vocab rows of this rank and of the whole model.
    pub vocab: usize,
    pub vocab_total: usize,
    pub norm_eps: f32,
    /// Longest context the model supports (max_position_embeddings).
    pub max_seq_len: usize,
}

impl Dims {
    pub fn new(cfg: &Config, part: &RankSlice) -> Dims {
        Dims {
            dim: cfg.dim,
            head_dim: cfg.head_dim,
            n_layers: cfg.n_layers,
            n_heads: part.heads.len(),
            n_kv_heads: part.kv_heads.len(),
            kv_group: cfg.n_heads / cfg.n_kv_heads.max(1),
            first_head: part.heads.start,
            first_kv_head: part.kv_heads.start,
            hidden: part.hidden.len(),
            vocab: part.vocab.len(),
            vocab_total: cfg.vocab_size,
            norm_eps: cfg.norm_eps,
            max_seq_len: cfg.max_seq_len,
        }
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Everything of a rank's model except the layer matrices.
pub struct Resident {
    pub dims: Dims,
    pub layers: Vec<LayerVecs>,
    /// `[dim]`
    pub final_norm: Vec<f32>,
    /// `[head_dim/2]`
    pub inv_freq: Vec<f32>,
}

/// Source of embedding rows and lm_head rows (rank 0 holds no full table).
pub trait Head {
    /// Embedding row of `token` widened to f32.
    fn embed(&mut self, token: u32, out: &mut [f32]) -> Result<()>;
    /// This rank's lm_head rows `[my_vocab][dim]` come in `lm_head_parts()`
    /// parts of consecutive rows (one when resident; several when streamed
    /// through a memory window), acquired and released in order.
    fn lm_head_parts(&self) -> usize {
        1
    }
    /// Part `part`: its first row among this rank's vocab rows, and its rows.
    fn lm_head(&mut self, part: usize) -> Result<(usize, Mat<'_>)>;
    /// Compute no longer needs part `part`.
    fn release_lm_head(&mut self, _part: usize) -> Result<()> {
        Ok(())
    }
}

/// All weights a rank reads: layer matrices, embedding rows and lm_head.
pub trait RankWeights: LayerSource + Head {}
impl<T: LayerSource + Head> RankWeights for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use tpi_kernels::kquant::quantize_row_q4_k;
    use tpi_kernels::kx8::repack_q4_k_x8;

    /// An interleaved matrix's rows read back as the plain rows it was cut
    /// from, through the kernel view and `row_into`; a row count that is
    /// not whole groups of 8 is a clear error.
    #[test]
    fn interleaved_q4_k_rows_read_back_as_the_plain_rows() {
        let (rows, cols) = (16, 512);
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut plain = vec![BlockQ4_K::default(); rows * cols / QK_K];
        quantize_row_q4_k(&x, &mut plain);
        let mut packed = vec![BlockQ4_Kx8::default(); plain.len() / ROWS];
        repack_q4_k_x8(&plain, cols / QK_K, &mut packed);
        let bytes: &[u8] = bytemuck::cast_slice(&packed);
        let m = Mat {
            wtype: WeightType::Q4_Kx8,
            rows,
            cols,
            bytes,
        };
        assert!(matches!(m.weights(), Ok(View::Q4_Kx8(b)) if b.len() == packed.len()));
        for r in [0, 7, 8, 15] {
            let (mut got, mut want) = (vec![0.0; cols], vec![1.0; cols]);
            m.row_into(r, &mut got).unwrap();
            dequantize_row_q4_k(&plain[r * 2..r * 2 + 2], &mut want);
            assert_eq!(got, want, "row {r}");
        }
        let odd = Mat { rows: 12, ..m };
        assert!(odd.weights().is_err());
    }
}
