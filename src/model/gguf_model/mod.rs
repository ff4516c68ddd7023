//! What a GGUF file means as a tpi model: its metadata resolved to a
//! [`Config`], its tensors mapped to the roles tpi computes with
//! ([`Role`]), and the q/k row order llama.cpp's converter changed
//! ([`QkPermutation`]). Pure functions of a parsed [`Gguf`] header: no
//! tensor data is read here.
//!
//! Rules, cited at the checks as M1..M8:
//! - M1 `general.architecture` is `llama` (Llama, Mistral without sliding
//!   window) or `qwen2`; anything else is refused by name.
//! - M2 hyper-parameters come from `<arch>.block_count`,
//!   `.embedding_length`, `.feed_forward_length`, `.attention.head_count`,
//!   `.attention.head_count_kv` (default: head_count),
//!   `.attention.key_length` (head_dim; default embedding / heads),
//!   `.context_length`, `.rope.freq_base` (default 10000),
//!   `.attention.layer_norm_rms_epsilon`; the vocabulary size from
//!   `<arch>.vocab_size`, else the length of `tokenizer.ggml.tokens`, else
//!   `token_embd.weight`'s rows. A missing key or a value of the wrong type
//!   is the reader's error naming the file and key.
//! - M3 the values are checked by the very function that checks an HF
//!   `config.json` ([`Config::from_json`]): the same limits and
//!   divisibility rules, errors renamed to the GGUF key.
//! - M4 one head size: `.attention.value_length` and
//!   `.rope.dimension_count`, when present, equal head_dim (no partial
//!   RoPE); no experts (`.expert_count` 0 or absent); no sliding window
//!   shorter than the context (`.attention.sliding_window`, as the HF
//!   check refuses Mistral's; llama.cpp's converter writes none for
//!   Mistral, so such a file is read as full attention, as llama.cpp
//!   runs it).
//! - M5 RoPE scaling: `.rope.scaling.type` `none` or absent (a `.factor`
//!   without a type is linear, as llama.cpp applies it), `linear` with its
//!   `.rope.scaling.factor`; any other type is refused by name. Llama 3
//!   scaling has no keys: the converter writes per-frequency divisors as
//!   the tensor `rope_freqs.weight` (F32, `[head_dim / 2]`), which
//!   [`GgufModel::rope_freqs`] names and [`rope_inv_freq`] applies; the
//!   config then says [`RopeScaling::None`] for the undivided base.
//! - M6 tensors: `token_embd`, `output_norm`, `output` (absent: tied to the
//!   embedding), and per layer `blk.N.` `attn_norm`, `attn_q`, `attn_k`,
//!   `attn_v`, `attn_output`, `ffn_norm`, `ffn_gate`, `ffn_up`, `ffn_down`
//!   (`.weight`), plus `attn_q`/`attn_k`/`attn_v` `.bias` for qwen2 (all
//!   three required) or for llama (all three or none). Each must be there
//!   once: two names meaning the same tensor (`blk.1.` and `blk.01.`) are
//!   an error naming both; a name outside this list, or a layer past
//!   `block_count`, is an error naming it.
//! - M7 shapes: ggml dims are reversed (`dims[0]` is the row length), so
//!   an HF `[rows, cols]` matrix is ggml `[cols, rows]` and a vector `[n]`.
//! - M8 types: matrices F32, F16, BF16, Q8_0, Q4_0, Q4_K or Q6_K
//!   ([`WeightType`]); vectors (norms, biases) F32, F16 or BF16;
//!   `rope_freqs` F32.
//!
//! The permutation: llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.
//! permute`, applied to `q_proj` and `k_proj` weights and biases when the
//! architecture is `llama`) reshapes the rows of each head to `(2,
//! head_dim / 2)` and transposes them, so that ggml's RoPE on adjacent
//! pairs computes what HF's rotate-half computes on halves. tpi's forward
//! rotates halves, so q/k rows of a `llama` GGUF are read back in HF order
//! through [`QkPermutation::hf_row`]. `Qwen2Model` does not permute
//! (ggml runs qwen2 with NeoX-style RoPE, which is rotate-half).

use std::fmt;

use serde_json::{json, Map, Value as Json};

use super::config::{Arch, Config, ConfigError, RopeScaling};
use super::dtype::{Dtype, WeightType};
use super::gguf::{GgmlType, Gguf, GgufError, TensorInfo};
use crate::model::role::Role;

mod config;
mod tensors;
mod vocab;
pub use vocab::vocab;

pub use config::{config, config_json};
pub use tensors::*;

/// The tensor holding llama3 RoPE frequency divisors (M5).
pub const ROPE_FREQS: &str = "rope_freqs.weight";
/// The token embedding, ggml `[dim, vocab]`.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// The output projection, ggml `[dim, vocab]`; absent when tied.
pub const OUTPUT: &str = "output.weight";
/// The final RMSNorm weight, `[dim]`.
pub const OUTPUT_NORM: &str = "output_norm.weight";

/// Per-layer tensors: (leaf under `blk.N.`, role).
const LAYER_LEAVES: [(&str, Role); 12] = [
    ("attn_norm.weight", Role::AttnNorm),
    ("attn_q.weight", Role::Q),
    ("attn_k.weight", Role::K),
    ("attn_v.weight", Role::V),
    ("attn_output.weight", Role::O),
    ("ffn_norm.weight", Role::FfnNorm),
    ("ffn_gate.weight", Role::Gate),
    ("ffn_up.weight", Role::Up),
    ("ffn_down.weight", Role::Down),
    ("attn_q.bias", Role::QBias),
    ("attn_k.bias", Role::KBias),
    ("attn_v.bias", Role::VBias),
];

/// Why a GGUF file is not a model tpi runs. Every variant names the file.
#[derive(Debug)]
pub enum GgufModelError {
    /// A metadata key missing or of the wrong type (the reader's error).
    Gguf(GgufError),
    /// A value the HF config check refuses (M3); keys renamed to GGUF's.
    Config(ConfigError),
    UnsupportedArchitecture {
        origin: String,
        arch: String,
    },
    /// A feature of a supported architecture tpi does not run (M4, M5).
    Unsupported {
        origin: String,
        what: String,
    },
    MissingTensor {
        origin: String,
        tensor: String,
    },
    /// Two names meaning the same tensor (M6).
    DuplicateTensor {
        origin: String,
        first: String,
        second: String,
    },
    /// A tensor tpi has no role for (M6).
    UnexpectedTensor {
        origin: String,
        tensor: String,
    },
    /// ggml dims other than the config implies (M7).
    Shape {
        origin: String,
        tensor: String,
        dims: Vec<u64>,
        want: Vec<u64>,
    },
    /// A ggml type tpi cannot compute with here (M8).
    TensorType {
        origin: String,
        tensor: String,
        ggml_type: GgmlType,
    },
    /// `rope_freqs` values that are not positive finite divisors.
    RopeFreqs {
        origin: String,
        msg: String,
    },
}

impl fmt::Display for GgufModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufModelError as E;
        match self {
            E::Gguf(e) => write!(f, "{e}"),
            E::Config(e) => write!(f, "{e}"),
            E::UnsupportedArchitecture { origin, arch } => write!(
                f,
                "{origin}: unsupported general.architecture `{arch}` (supported: llama, qwen2)"
            ),
            E::Unsupported { origin, what } => write!(f, "{origin}: unsupported: {what}"),
            E::MissingTensor { origin, tensor } => {
                write!(f, "{origin}: tensor `{tensor}` missing")
            }
            E::DuplicateTensor {
                origin,
                first,
                second,
            } => write!(
                f,
                "{origin}: tensors `{first}` and `{second}` are the same tensor"
            ),
            E::UnexpectedTensor { origin, tensor } => write!(
                f,
                "{origin}: tensor `{tensor}` is not part of a model tpi runs"
            ),
            E::Shape {
                origin,
                tensor,
                dims,
                want,
            } => write!(
                f,
                "{origin}: tensor `{tensor}` has ggml dims {dims:?}, the config implies {want:?}"
            ),
            E::TensorType {
                origin,
                tensor,
                ggml_type,
            } => write!(
                f,
                "{origin}: tensor `{tensor}` is {ggml_type}, which tpi does not run here \
                 (matrices: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K; vectors: F32, F16, BF16)"
            ),
            E::RopeFreqs { origin, msg } => write!(f, "{origin}: `{ROPE_FREQS}`: {msg}"),
        }
    }
}

impl std::error::Error for GgufModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GgufModelError::Gguf(e) => Some(e),
            GgufModelError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GgufError> for GgufModelError {
    fn from(e: GgufError) -> Self {
        GgufModelError::Gguf(e)
    }
}

/// The reordering of q or k rows by llama.cpp's converter for `llama`
/// (`LlamaModel.permute`): within each head of `head_dim` rows, HF row
/// `j * head_dim / 2 + i` (half `j`, pair `i`) is GGUF row `2 * i + j`.
/// Whole rows move, so it holds for block types too; for a bias it maps
/// elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkPermutation {
    n_heads: usize,
    head_dim: usize,
}

impl QkPermutation {
    /// `None` unless `head_dim` is even and positive and `n_heads *
    /// head_dim` fits.
    pub fn new(n_heads: usize, head_dim: usize) -> Option<QkPermutation> {
        (head_dim > 0 && head_dim.is_multiple_of(2) && n_heads.checked_mul(head_dim).is_some())
            .then_some(QkPermutation { n_heads, head_dim })
    }

    /// Rows: `n_heads * head_dim`.
    pub fn n_rows(self) -> usize {
        self.n_heads * self.head_dim
    }

    /// The HF row stored at GGUF row `gguf_row`; `None` past the rows.
    pub fn hf_row(self, gguf_row: usize) -> Option<usize> {
        if gguf_row >= self.n_rows() {
            return None;
        }
        let (head, r) = (gguf_row / self.head_dim, gguf_row % self.head_dim);
        let (pair, half) = (r / 2, r % 2);
        Some(head * self.head_dim + half * (self.head_dim / 2) + pair)
    }

    /// The GGUF row holding HF row `hf_row`; `None` past the rows.
    pub fn gguf_row(self, hf_row: usize) -> Option<usize> {
        if hf_row >= self.n_rows() {
            return None;
        }
        let (head, r) = (hf_row / self.head_dim, hf_row % self.head_dim);
        let (half, pair) = (r / (self.head_dim / 2), r % (self.head_dim / 2));
        Some(head * self.head_dim + 2 * pair + half)
    }
}

/// One GGUF tensor with its meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub role: Role,
    /// The layer, for per-layer roles.
    pub layer: Option<usize>,
    /// Name, type, dims, file and byte range, as the reader found them.
    pub info: TensorInfo,
    pub wtype: WeightType,
    /// HF shape: `[rows, cols]`; a vector is `1 x n`.
    pub rows: usize,
    pub cols: usize,
    /// Set when the rows (elements, for a bias) are in GGUF q/k order:
    /// HF row `r` is at [`QkPermutation::gguf_row`]`(r)`.
    pub permutation: Option<QkPermutation>,
}

/// A GGUF file as a tpi model.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufModel {
    pub config: Config,
    /// Embedding, then each layer (norm, q, k, v, o, norm, gate, up,
    /// down, then q/k/v biases when present), the final norm, and
    /// `output` unless tied.
    pub tensors: Vec<Mapped>,
    /// `rope_freqs.weight` (M5): divide the base inverse frequencies by
    /// its values ([`rope_inv_freq`]) when present.
    pub rope_freqs: Option<TensorInfo>,
}

impl GgufModel {
    /// Resolves `gguf`'s config (M1..M5) and maps its tensors (M6..M8).
    pub fn from_gguf(gguf: &Gguf) -> Result<GgufModel, GgufModelError> {
        let config = config(gguf)?;
        let (tensors, rope_freqs) = map_tensors(gguf, &config)?;
        Ok(GgufModel {
            config,
            tensors,
            rope_freqs,
        })
    }

    /// The tensor of `role` (in `layer`, for per-layer roles).
    pub fn get(&self, role: Role, layer: Option<usize>) -> Option<&Mapped> {
        self.tensors
            .iter()
            .find(|m| m.role == role && m.layer == layer)
    }
}

#[cfg(test)]
mod tests {
    use super::tensors::role_of;
    use super::*;

    #[test]
    fn permutation_matches_the_converter_on_one_head() {
        // LlamaModel.permute on 8 rows, one head: reshape (1, 2, 4),
        // swap axes 1 and 2 -> rows 0 4 1 5 2 6 3 7.
        let p = QkPermutation::new(1, 8).unwrap();
        let hf: Vec<usize> = (0..8).map(|r| p.hf_row(r).unwrap()).collect();
        assert_eq!(hf, [0, 4, 1, 5, 2, 6, 3, 7]);
        let back: Vec<usize> = hf.iter().map(|&r| p.gguf_row(r).unwrap()).collect();
        assert_eq!(back, (0..8).collect::<Vec<_>>());
        assert_eq!(p.hf_row(8), None);
        assert_eq!(p.gguf_row(8), None);
    }

    #[test]
    fn permutation_stays_within_each_head() {
        let p = QkPermutation::new(3, 4).unwrap();
        let hf: Vec<usize> = (0..12).map(|r| p.hf_row(r).unwrap()).collect();
        assert_eq!(hf, [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11]);
    }

    #[test]
    fn permutation_needs_an_even_head_dim() {
        assert!(QkPermutation::new(2, 7).is_none());
        assert!(QkPermutation::new(2, 0).is_none());
        assert!(QkPermutation::new(usize::MAX, 4).is_none());
        assert_eq!(QkPermutation::new(0, 2).map(QkPermutation::n_rows), Some(0));
    }

    #[test]
    fn names_parse_to_roles() {
        assert_eq!(role_of("token_embd.weight"), Some((Role::Embedding, None)));
        assert_eq!(role_of("blk.3.ffn_up.weight"), Some((Role::Up, Some(3))));
        assert_eq!(role_of("blk.03.attn_q.bias"), Some((Role::QBias, Some(3))));
        assert_eq!(role_of("blk.-1.ffn_up.weight"), None);
        assert_eq!(role_of("blk..ffn_up.weight"), None);
        assert_eq!(role_of("blk.0.attn_q_norm.weight"), None);
        assert_eq!(role_of("rope_freqs.weight"), None);
        for (leaf, role) in LAYER_LEAVES {
            assert_eq!(gguf_name(role, Some(2)), format!("blk.2.{leaf}"));
            assert_eq!(role_of(&gguf_name(role, Some(2))), Some((role, Some(2))));
        }
    }

    #[test]
    fn weight_types_are_the_seven_tpi_runs() {
        let run: Vec<GgmlType> = GgmlType::all()
            .filter(|t| weight_type(*t).is_some())
            .collect();
        assert_eq!(run.len(), 7);
        for t in run {
            assert_eq!(weight_type(t).map(WeightType::name), Some(t.name()));
        }
    }
}
