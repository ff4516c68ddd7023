//! A whole model read in place from safetensors (one rank, all resident).

use super::{Result, WeightsError};
use crate::model::config::Config;
use crate::model::names::{self, layer_matrix_shapes, layer_name, lm_head_name};
use crate::model::safetensors::{SafeTensors, TensorInfo};
use crate::split::plan::RankSlice;
use crate::weights::{Dims, Head, LayerMats, LayerSource, LayerVecs, Mat, Resident};

/// Resident vectors (norms, biases, rope) for `part` of the model.
pub fn resident(cfg: &Config, st: &SafeTensors, part: &RankSlice) -> Result<Resident> {
    let hd = cfg.head_dim;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let bias = |leaf: &str, n: usize, r: &std::ops::Range<usize>| -> Result<Option<Vec<f32>>> {
            if !cfg.attention_bias {
                return Ok(None);
            }
            let all = st.vector_f32(&layer_name(l, leaf), n * hd)?;
            Ok(Some(all[r.start * hd..r.end * hd].to_vec()))
        };
        layers.push(LayerVecs {
            attn_norm: st.vector_f32(&layer_name(l, names::ATTN_NORM), cfg.dim)?,
            ffn_norm: st.vector_f32(&layer_name(l, names::FFN_NORM), cfg.dim)?,
            q_bias: bias(names::Q_BIAS, cfg.n_heads, &part.heads)?,
            k_bias: bias(names::K_BIAS, cfg.n_kv_heads, &part.kv_heads)?,
            v_bias: bias(names::V_BIAS, cfg.n_kv_heads, &part.kv_heads)?,
        });
    }
    Ok(Resident {
        dims: Dims::new(cfg, part),
        layers,
        final_norm: st.vector_f32(names::FINAL_NORM, cfg.dim)?,
        inv_freq: cfg.rope_inv_freq(),
    })
}

/// Checks that a tensor's bytes can be viewed in place as its dtype.
pub fn check_aligned(st: &SafeTensors, t: &TensorInfo) -> Result<()> {
    let addr = st.bytes(t).as_ptr() as usize;
    if !addr.is_multiple_of(t.dtype.size()) {
        return Err(WeightsError::Misaligned {
            tensor: t.name.clone(),
            file: st.shard_name(t.shard).to_string(),
            offset: t.offset,
            align: t.dtype.size(),
        });
    }
    Ok(())
}

/// All layer matrices and the embedding/lm_head of a model, in place.
pub struct InPlace<'a> {
    st: &'a SafeTensors,
    layers: Vec<[TensorInfo; 7]>,
    embed: TensorInfo,
    lm_head: TensorInfo,
}

impl<'a> InPlace<'a> {
    /// Validates every tensor's presence, shape and alignment up front.
    pub fn new(cfg: &Config, st: &'a SafeTensors) -> Result<InPlace<'a>> {
        let shapes = layer_matrix_shapes(cfg);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let mut mats = Vec::with_capacity(7);
            for (leaf, rows, cols) in shapes {
                let t = st.tensor_shaped(&layer_name(l, leaf), &[rows, cols])?;
                check_aligned(st, t)?;
                mats.push(t.clone());
            }
            let mats: [TensorInfo; 7] =
                mats.try_into()
                    .map_err(|m: Vec<_>| WeightsError::OutOfRange {
                        what: "layer matrices",
                        index: m.len(),
                        len: 7,
                    })?;
            layers.push(mats);
        }
        let embed = st
            .tensor_shaped(names::EMBED, &[cfg.vocab_size, cfg.dim])?
            .clone();
        check_aligned(st, &embed)?;
        let lm_head = st
            .tensor_shaped(lm_head_name(cfg, st), &[cfg.vocab_size, cfg.dim])?
            .clone();
        check_aligned(st, &lm_head)?;
        Ok(InPlace {
            st,
            layers,
            embed,
            lm_head,
        })
    }

    fn mat(&self, t: &TensorInfo) -> Mat<'a> {
        Mat {
            wtype: t.dtype.into(),
            rows: t.shape[0],
            cols: t.shape[1],
            bytes: self.st.bytes(t),
        }
    }
}

impl LayerSource for InPlace<'_> {
    fn acquire(&mut self, l: usize) -> Result<LayerMats<'_>> {
        let t = self.layers.get(l).ok_or(WeightsError::OutOfRange {
            what: "layer",
            index: l,
            len: self.layers.len(),
        })?;
        Ok(LayerMats {
            q: self.mat(&t[0]),
            k: self.mat(&t[1]),
            v: self.mat(&t[2]),
            o: self.mat(&t[3]),
            gate: self.mat(&t[4]),
            up: self.mat(&t[5]),
            down: self.mat(&t[6]),
        })
    }
}

impl Head for InPlace<'_> {
    fn embed(&mut self, token: u32, out: &mut [f32]) -> Result<()> {
        let rows = self.embed.shape[0];
        if token as usize >= rows {
            return Err(WeightsError::OutOfRange {
                what: "token id",
                index: token as usize,
                len: rows,
            });
        }
        self.mat(&self.embed).row_into(token as usize, out)
    }

    fn lm_head(&mut self, _part: usize) -> Result<(usize, Mat<'_>)> {
        Ok((0, self.mat(&self.lm_head)))
    }
}
