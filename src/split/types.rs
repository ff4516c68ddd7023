//! What a rank's slice holds, per matrix class: the type each matrix is
//! stored in (float as in the checkpoint, or the `--quantize` block type
//! with its exceptions) and its bytes, which are the bytes the rank reads
//! per token (every layer matrix and its lm_head rows once; the embedding
//! is one row). `--dry-run` prints them; the slice writer stores by them.

use super::manifest::Role;
use super::plan::{Plan, PlanError};
use crate::model::checkpoint::Checkpoint;
use crate::model::dtype::{Dtype, Quant, WeightType};
use crate::model::error::ModelError;

/// The type a `--quantize q` slice stores a tensor in, `None` for its
/// stored dtype (norms, biases, the embedding: looked up a row per token,
/// never multiplied). Layer matrices take `q`, the lm_head Q8_0 under every
/// type: it is the largest single matrix a token reads (1/16 of
/// TinyLlama's bytes) and the logits are the last step before sampling,
/// so it gets the 8-bit type (llama.cpp keeps its output tensor at Q8_0 or
/// Q6_K for the same reason). A matrix whose rank-local `cols` or whole
/// model's `whole_cols` are not whole blocks of its type falls back, as
/// llama.cpp's quantizer does per whole tensor: a K-quant to Q8_0 when the
/// columns are whole 32-blocks (llama.cpp takes Q5_0 for Q4_K and Q8_0 for
/// Q6_K; tpi has no Q5_0 kernel and keeps the 8 bits), anything else to F16.
pub(crate) fn quantized_type(
    q: Quant,
    role: Role,
    cols: usize,
    whole_cols: usize,
) -> Option<WeightType> {
    let to = match role {
        Role::Q | Role::K | Role::V | Role::O | Role::Gate | Role::Up | Role::Down => {
            q.weight_type()
        }
        Role::LmHead => WeightType::Q8_0,
        _ => return None,
    };
    let fits = |t: WeightType| t.row_bytes(cols).is_some() && t.row_bytes(whole_cols).is_some();
    Some(
        [to, WeightType::Q8_0]
            .into_iter()
            .find(|&t| fits(t))
            .unwrap_or(WeightType::F16),
    )
}

/// The block layout a GGUF model's column-split matrices (o_proj,
/// down_proj, cut along their rows) need from the plan, as the `Quant`
/// whose unit it is: a K-quant's 256-weight super-blocks (`Q4_K`), else a
/// 32-weight block (`Q8_0`); `None` for float matrices and for HF weights.
/// Spec §6 of the plan then puts head and MLP ranges on those blocks
/// where the dimensions allow; elsewhere the writer keeps the matrix in
/// F16 for that rank.
pub fn stored_quant(ckpt: &Checkpoint) -> Result<Option<Quant>, ModelError> {
    if !ckpt.weights.is_gguf() {
        return Ok(None);
    }
    let mut q = None;
    for l in 0..ckpt.config.n_layers {
        for role in [Role::O, Role::Down] {
            match ckpt.weights.matrix(&ckpt.config, role, l)?.wtype.block() {
                Some(256) => return Ok(Some(Quant::Q4_K)),
                Some(_) => q = Some(Quant::Q8_0),
                None => {}
            }
        }
    }
    Ok(q)
}

/// One matrix class of a rank's slice: `count` matrices (one per layer,
/// or the one lm_head) of `rows x cols` weights in `wtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixClass {
    pub role: Role,
    /// HF's name of the class (`q_proj`, …, `lm_head`).
    pub name: &'static str,
    pub wtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub count: usize,
}

impl MatrixClass {
    /// Bytes of all `count` matrices (saturating).
    pub fn bytes(&self) -> u64 {
        let row = self.wtype.row_bytes(self.cols).unwrap_or(0) as u64;
        row.saturating_mul(self.rows as u64)
            .saturating_mul(self.count as u64)
    }
}

/// Rank `rank`'s matrix classes for a checkpoint stored in `stored`.
pub fn rank_matrices(
    plan: &Plan,
    rank: usize,
    stored: Dtype,
) -> Result<Vec<MatrixClass>, PlanError> {
    let r = plan.try_rank(rank)?;
    let s = &plan.shape;
    let (q, kv) = (r.heads.len() * s.head_dim, r.kv_heads.len() * s.head_dim);
    let layers = s.n_layers;
    let classes = [
        (Role::Q, q, s.dim, s.dim, layers),
        (Role::K, kv, s.dim, s.dim, layers),
        (Role::V, kv, s.dim, s.dim, layers),
        (Role::O, s.dim, q, s.n_heads * s.head_dim, layers),
        (Role::Gate, r.hidden.len(), s.dim, s.dim, layers),
        (Role::Up, r.hidden.len(), s.dim, s.dim, layers),
        (Role::Down, s.dim, r.hidden.len(), s.hidden_dim, layers),
        (Role::LmHead, r.vocab.len(), s.dim, s.dim, 1),
    ];
    Ok(classes
        .into_iter()
        .map(|(role, rows, cols, whole, count)| MatrixClass {
            role,
            name: class_name(role),
            wtype: plan
                .quant
                .and_then(|q| quantized_type(q, role, cols, whole))
                .unwrap_or(stored.into()),
            rows,
            cols,
            count,
        })
        .collect())
}

/// Weight bytes rank `rank` reads per token: its matrices and the f32
/// norms (two per layer and the final one).
pub fn bytes_per_token(plan: &Plan, rank: usize, stored: Dtype) -> Result<u64, PlanError> {
    Ok(token_bytes(plan, &rank_matrices(plan, rank, stored)?))
}

/// Weight bytes a rank storing `classes` reads per token: those and the
/// f32 norms (two per layer and the final one).
pub fn token_bytes(plan: &Plan, classes: &[MatrixClass]) -> u64 {
    let s = &plan.shape;
    let norms = (2 * s.n_layers as u64 + 1).saturating_mul(4 * s.dim as u64);
    classes
        .iter()
        .fold(norms, |sum, m| sum.saturating_add(m.bytes()))
}

/// HF's name of a matrix class.
pub fn class_name(role: Role) -> &'static str {
    match role {
        Role::Q => "q_proj",
        Role::K => "k_proj",
        Role::V => "v_proj",
        Role::O => "o_proj",
        Role::Gate => "gate_proj",
        Role::Up => "up_proj",
        Role::Down => "down_proj",
        Role::LmHead => "lm_head",
        Role::Embedding => "embed_tokens",
        _ => "vector",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::plan::{split_for, Shape, TINYLLAMA};

    #[test]
    fn tinyllama_bytes_per_token_by_type() {
        let bytes = |q, n| {
            let p = split_for(&TINYLLAMA, n, None, q).unwrap();
            (0..n)
                .map(|r| bytes_per_token(&p, r, Dtype::F16).unwrap())
                .sum::<u64>()
        };
        // 22 x (2 x 2048^2 + 2 x 256 x 2048 + 3 x 5632 x 2048) layer weights,
        // 32000 x 2048 lm_head, 45 norms of 2048 f32.
        let layer = 22 * (2 * 2048 * 2048 + 2 * 256 * 2048 + 3 * 5632 * 2048u64);
        let lm = 32000 * 2048u64;
        let norms = 45 * 2048 * 4;
        assert_eq!(bytes(None, 1), 2 * (layer + lm) + norms);
        assert_eq!(bytes(Some(Quant::Q8_0), 1), (layer + lm) / 32 * 34 + norms);
        assert_eq!(
            bytes(Some(Quant::Q4_0), 1),
            layer / 32 * 18 + lm / 32 * 34 + norms
        );
        // Split over ranks, the same bytes (norms on every rank).
        assert_eq!(
            bytes(Some(Quant::Q4_0), 2),
            bytes(Some(Quant::Q4_0), 1) + norms
        );
        let p = split_for(&TINYLLAMA, 2, None, None).unwrap();
        let per_layer = 2 * 1024 * 2048 + 2 * 128 * 2048 + 3 * 2816 * 2048u64;
        let rank0 = bytes_per_token(&p, 0, Dtype::F16).unwrap();
        assert_eq!(rank0, 2 * (22 * per_layer + 16000 * 2048) + norms);
        assert_eq!(rank0, bytes_per_token(&p, 1, Dtype::F16).unwrap());
    }

    #[test]
    fn k_quants_store_whole_super_blocks_and_fall_back_to_q8_0_then_f16() {
        // TinyLlama at 2 ranks: every column count a multiple of 256.
        let p = split_for(&TINYLLAMA, 2, None, Some(Quant::Q4_K)).unwrap();
        for m in rank_matrices(&p, 1, Dtype::F16).unwrap() {
            let want = match m.role {
                Role::LmHead => WeightType::Q8_0,
                _ => WeightType::Q4_K,
            };
            assert_eq!(m.wtype, want, "{}", m.name);
        }
        // 144 bytes per 256 weights; 1 rank: the lm_head Q8_0.
        let layer = 22 * (2 * 2048 * 2048 + 2 * 256 * 2048 + 3 * 5632 * 2048u64);
        let p1 = split_for(&TINYLLAMA, 1, None, Some(Quant::Q6_K)).unwrap();
        assert_eq!(
            bytes_per_token(&p1, 0, Dtype::F16).unwrap(),
            layer / 256 * 210 + 32000 * 2048 / 32 * 34 + 45 * 2048 * 4
        );
        // 96 columns: whole 32-blocks only -> Q8_0; 100: neither -> F16.
        assert_eq!(
            quantized_type(Quant::Q4_K, Role::Down, 96, 96),
            Some(WeightType::Q8_0)
        );
        assert_eq!(
            quantized_type(Quant::Q6_K, Role::O, 512, 100),
            Some(WeightType::F16)
        );
        assert_eq!(quantized_type(Quant::Q6_K, Role::Embedding, 512, 512), None);
    }

    #[test]
    fn unaligned_columns_fall_back_to_f16() {
        // mha fixture shape: 8 heads of 8, MLP 176 (not whole blocks).
        let shape = Shape {
            dim: 64,
            hidden_dim: 176,
            n_heads: 8,
            n_kv_heads: 8,
            head_dim: 8,
            vocab_size: 512,
            n_layers: 4,
        };
        let types = |n, r| {
            let p = split_for(&shape, n, None, Some(Quant::Q4_0)).unwrap();
            rank_matrices(&p, r, Dtype::F32)
                .unwrap()
                .iter()
                .map(|m| (m.name, m.wtype))
                .collect::<Vec<_>>()
        };
        let one = types(1, 0);
        assert!(one.contains(&("down_proj", WeightType::F16)), "{one:?}");
        assert!(one.contains(&("o_proj", WeightType::Q4_0)), "{one:?}");
        assert!(one.contains(&("lm_head", WeightType::Q8_0)), "{one:?}");
        // World size 3: 8 heads cannot make 3 ranges of 4-head units.
        assert!(types(3, 0).contains(&("o_proj", WeightType::F16)));
        assert!(types(2, 1).contains(&("o_proj", WeightType::Q4_0)));
    }
}
