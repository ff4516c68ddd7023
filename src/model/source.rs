//! Where a model's tensors come from: HF safetensors shards or a GGUF
//! model, seen the same way by the split: a matrix by [`Role`] as HF's
//! row-major `[rows, cols]` in its stored [`WeightType`] (float, or ggml
//! blocks along each row), its rows in HF order through an optional
//! [`QkPermutation`] (llama GGUF q/k), and a vector widened to f32 in HF
//! order. Nothing is copied here; the bytes are the mapped files'.

use super::config::Config;
use super::dtype::{widen, WeightType};
use super::error::ModelError;
use super::files::ModelFiles;
use super::gguf_model::QkPermutation;
use super::gguf_weights::GgufWeights;
use super::names::lm_head_name;
use super::role::Role;
use super::safetensors::SafeTensors;

/// A model's weights.
#[derive(Debug)]
pub enum Weights {
    SafeTensors(SafeTensors),
    Gguf(Box<GgufWeights>),
}

/// One matrix as stored: `rows` rows of `cols` weights of `wtype`, row
/// `order.gguf_row(r)` (or `r`) holding HF row `r`.
#[derive(Debug, Clone)]
pub struct MatrixRef<'a> {
    /// The tensor's name in its file (for messages).
    pub name: String,
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    /// Every row, `rows * row_bytes` bytes.
    pub bytes: &'a [u8],
    pub order: Option<QkPermutation>,
    /// Its file and byte range there (to release its pages).
    file: usize,
    offset: usize,
}

impl MatrixRef<'_> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.bytes.len() / self.rows.max(1)
    }

    /// HF row `r`; `None` past the rows.
    pub fn row(&self, r: usize) -> Option<&[u8]> {
        let stored = match self.order {
            Some(p) => p.gguf_row(r)?,
            None => r,
        };
        let n = self.row_bytes();
        self.bytes
            .get(stored.checked_mul(n)?..stored.checked_add(1)?.checked_mul(n)?)
    }
}

impl Weights {
    /// The files the weights live in.
    pub fn files(&self) -> &ModelFiles {
        match self {
            Weights::SafeTensors(st) => st.files(),
            Weights::Gguf(g) => g.files(),
        }
    }

    /// The safetensors, when the model is one.
    pub fn safetensors(&self) -> Option<&SafeTensors> {
        match self {
            Weights::SafeTensors(st) => Some(st),
            Weights::Gguf(_) => None,
        }
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self, Weights::Gguf(_))
    }

    /// The matrix of `role` (in `layer` for per-layer roles; the lm_head
    /// is the embedding when tied), checked to be `role.shape(cfg)`.
    pub fn matrix(
        &self,
        cfg: &Config,
        role: Role,
        layer: usize,
    ) -> Result<MatrixRef<'_>, ModelError> {
        let (rows, cols) = role.shape(cfg);
        match self {
            Weights::SafeTensors(st) => {
                let name = match role {
                    Role::LmHead => lm_head_name(cfg, st).to_string(),
                    r => r.hf_name(layer),
                };
                let t = st.tensor_shaped(&name, &[rows, cols])?;
                let bytes = st.bytes(t);
                if bytes.len() != t.len {
                    return Err(ModelError::Tensor {
                        name,
                        origin: st.shard_name(t.shard).to_string(),
                        msg: "its bytes are outside its file".into(),
                    });
                }
                Ok(MatrixRef {
                    name,
                    wtype: t.dtype.into(),
                    rows,
                    cols,
                    bytes,
                    order: None,
                    file: t.shard,
                    offset: t.offset,
                })
            }
            Weights::Gguf(g) => {
                let m = gguf_tensor(g, cfg, role, layer)?;
                let bytes = g.bytes(&m.info)?;
                Ok(MatrixRef {
                    name: m.info.name.clone(),
                    wtype: m.wtype,
                    rows: m.rows,
                    cols: m.cols,
                    bytes,
                    order: m.permutation,
                    file: m.info.file,
                    offset: usize::try_from(m.info.offset).unwrap_or(usize::MAX),
                })
            }
        }
    }

    /// The vector of `role` (a norm or bias of `layer`) widened to f32, in
    /// HF order.
    pub fn vector(&self, cfg: &Config, role: Role, layer: usize) -> Result<Vec<f32>, ModelError> {
        let (_, len) = role.shape(cfg);
        match self {
            Weights::SafeTensors(st) => Ok(st.vector_f32(&role.hf_name(layer), len)?),
            Weights::Gguf(g) => {
                let m = gguf_tensor(g, cfg, role, layer)?;
                let bad = |msg: &str| ModelError::Tensor {
                    name: m.info.name.clone(),
                    origin: g.files().name(m.info.file).to_string(),
                    msg: msg.to_string(),
                };
                let dtype = m
                    .wtype
                    .float()
                    .ok_or_else(|| bad("a vector must be a float type"))?;
                let v = widen(dtype, g.bytes(&m.info)?);
                if v.len() != len {
                    return Err(bad("length differs from the config"));
                }
                match m.permutation {
                    Some(p) => (0..len)
                        .map(|r| p.gguf_row(r).and_then(|i| v.get(i)).copied())
                        .collect::<Option<Vec<f32>>>()
                        .ok_or_else(|| bad("q/k order does not fit its length")),
                    None => Ok(v),
                }
            }
        }
    }

    /// Releases `m`'s pages from this process's resident set once it has
    /// been copied out (the page cache keeps them). Failing to advise
    /// costs memory, not correctness.
    pub fn release(&self, m: &MatrixRef<'_>) {
        let _ = self.files().release(m.file, m.offset, m.bytes.len());
    }
}

/// The GGUF tensor of `role` in `layer` (the embedding for a tied
/// lm_head).
fn gguf_tensor<'a>(
    g: &'a GgufWeights,
    cfg: &Config,
    role: Role,
    layer: usize,
) -> Result<&'a super::gguf_model::Mapped, ModelError> {
    let per_layer = !matches!(role, Role::Embedding | Role::LmHead | Role::FinalNorm);
    let role = match role {
        Role::LmHead if cfg.tie_embeddings => Role::Embedding,
        r => r,
    };
    let layer = per_layer.then_some(layer);
    g.model.get(role, layer).ok_or_else(|| ModelError::Tensor {
        name: super::gguf_model::gguf_name(role, layer),
        origin: g.files().name(0).to_string(),
        msg: "missing".into(),
    })
}
