//! What a rank's weights look like to the engine: matrices in their stored
//! dtype ([`Mat`], [`LayerMats`]), the small f32 vectors kept resident
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
use crate::model::safetensors::Dtype;
use crate::split::plan::RankSlice;
use tpi_kernels::Weights;

/// A matrix in its stored dtype: `rows x cols`, row-major, as raw bytes.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

impl<'a> Mat<'a> {
    /// Typed view for the kernels. Fails only when the bytes are misaligned
    /// or of the wrong length, which loaders rule out before building a `Mat`.
    pub fn weights(&self) -> Result<Weights<'a>> {
        let bad = || WeightsError::Matrix {
            bytes: self.bytes.len(),
            rows: self.rows,
            cols: self.cols,
        };
        let w = match self.dtype {
            Dtype::F32 => Weights::F32(bytemuck::try_cast_slice(self.bytes).map_err(|_| bad())?),
            Dtype::F16 => Weights::F16(bytemuck::try_cast_slice(self.bytes).map_err(|_| bad())?),
            Dtype::BF16 => Weights::BF16(bytemuck::try_cast_slice(self.bytes).map_err(|_| bad())?),
        };
        if w.len() != self.rows * self.cols {
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
        let row = w.slice(r * self.cols, (r + 1) * self.cols);
        match row {
            Weights::F32(v) => out.copy_from_slice(v),
            Weights::F16(v) => out.iter_mut().zip(v).for_each(|(o, x)| *o = x.to_f32()),
            Weights::BF16(v) => out.iter_mut().zip(v).for_each(|(o, x)| *o = x.to_f32()),
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
