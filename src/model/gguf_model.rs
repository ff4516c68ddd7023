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
use crate::split::manifest::Role;

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

/// `<arch>.` keys and the HF key each stands for (errors from the HF
/// check are renamed through this, M3).
const KEYS: [(&str, &str); 11] = [
    ("block_count", "num_hidden_layers"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("context_length", "max_position_embeddings"),
    ("rope.freq_base", "rope_theta"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
    ("rope.scaling.factor", "rope_scaling.factor"),
];

/// The HF key a GGUF `<arch>.` key stands for.
fn hf_key(gguf_key: &str) -> &'static str {
    KEYS.iter()
        .find(|(g, _)| *g == gguf_key)
        .map_or("?", |(_, hf)| hf)
}

const BOS: &str = "tokenizer.ggml.bos_token_id";
const EOS: &str = "tokenizer.ggml.eos_token_id";
const EOT: &str = "tokenizer.ggml.eot_token_id";
const TOKENS: &str = "tokenizer.ggml.tokens";

/// The [`Config`] a GGUF header describes (M1..M5).
pub fn config(gguf: &Gguf) -> Result<Config, GgufModelError> {
    let m = gguf.metadata();
    let origin = gguf.file_name(0).to_string();
    let unsupported = |what: String| GgufModelError::Unsupported {
        origin: origin.clone(),
        what,
    };
    // M1
    let arch_name = m.get_str("general.architecture")?;
    let (arch, hf_arch) = match arch_name {
        "llama" => (Arch::Llama, "LlamaForCausalLM"),
        "qwen2" => (Arch::Qwen2, "Qwen2ForCausalLM"),
        other => {
            return Err(GgufModelError::UnsupportedArchitecture {
                origin,
                arch: other.to_string(),
            })
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");

    // M2: presence and types through the reader's getters.
    let mut c = Map::new();
    c.insert("architectures".into(), json!([hf_arch]));
    for k in [
        "block_count",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "context_length",
    ] {
        c.insert(hf_key(k).into(), json!(m.get_u64(&key(k))?));
    }
    for k in ["attention.head_count_kv", "attention.key_length"] {
        if let Some(v) = m.opt_u64(&key(k))? {
            c.insert(hf_key(k).into(), json!(v));
        }
    }
    // JSON has no NaN or infinity (serde_json writes null, which the HF
    // check would read as absent): refused here.
    let finite = |k: &str, x: f32| -> Result<Json, GgufModelError> {
        match x.is_finite() {
            true => Ok(json!(f64::from(x))),
            false => Err(GgufModelError::Config(ConfigError::InvalidValue {
                path: origin.clone(),
                key: key(k),
                msg: format!("{x} is not finite"),
            })),
        }
    };
    let eps_key = "attention.layer_norm_rms_epsilon";
    let eps = m.get_f32(&key(eps_key))?;
    c.insert(hf_key(eps_key).into(), finite(eps_key, eps)?);
    if let Some(theta) = m.opt_f32(&key("rope.freq_base"))? {
        c.insert(
            hf_key("rope.freq_base").into(),
            finite("rope.freq_base", theta)?,
        );
    }
    let vocab = match m.opt_u64(&key("vocab_size"))? {
        Some(v) => Some(v),
        None => match m.opt_str_array(TOKENS)? {
            Some(t) => Some(t.len() as u64),
            None => gguf.get(TOKEN_EMBD).and_then(|t| t.dims.get(1).copied()),
        },
    };
    let vocab = vocab.ok_or_else(|| GgufError::MissingKey {
        origin: origin.clone(),
        key: format!(
            "{} (or {TOKENS}, or a {TOKEN_EMBD} tensor)",
            key("vocab_size")
        ),
    })?;
    c.insert("vocab_size".into(), json!(vocab));

    // M5
    let scaling_type = m.opt_str(&key("rope.scaling.type"))?;
    let factor = m.opt_f32(&key("rope.scaling.factor"))?;
    match (scaling_type, factor) {
        (None | Some("none"), None) => {}
        (Some("none"), Some(1.0)) => {}
        (Some("none"), Some(f)) => {
            return Err(unsupported(format!(
                "{} is none but {} is {f}",
                key("rope.scaling.type"),
                key("rope.scaling.factor")
            )))
        }
        (None | Some("linear"), Some(f)) => {
            let factor = finite("rope.scaling.factor", f)?;
            c.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": factor}),
            );
        }
        (Some("linear"), None) => {
            return Err(GgufError::MissingKey {
                origin,
                key: key("rope.scaling.factor"),
            }
            .into())
        }
        (Some(other), _) => {
            return Err(unsupported(format!(
                "RoPE scaling type `{other}` ({})",
                key("rope.scaling.type")
            )))
        }
    }

    // M6: ties and biases follow the tensors.
    c.insert(
        "tie_word_embeddings".into(),
        json!(gguf.get(OUTPUT).is_none()),
    );
    if arch == Arch::Llama {
        c.insert(
            "attention_bias".into(),
            json!(gguf.get("blk.0.attn_q.bias").is_some()),
        );
    }
    if let Some(b) = m.opt_u32(BOS)? {
        c.insert("bos_token_id".into(), json!(b));
    }
    let mut eos = Vec::new();
    for k in [EOS, EOT] {
        if let Some(e) = m.opt_u32(k)? {
            eos.push(e);
        }
    }
    c.insert("eos_token_id".into(), json!(eos));

    // M3
    let text = Json::Object(c).to_string();
    let cfg = Config::from_json(&text, None, &origin)
        .map_err(|e| GgufModelError::Config(rename_keys(e, arch_name)))?;

    // M4
    for k in ["attention.value_length", "rope.dimension_count"] {
        if let Some(v) = m.opt_u64(&key(k))? {
            if v != cfg.head_dim as u64 {
                return Err(unsupported(format!(
                    "{} {v} differs from head_dim {}",
                    key(k),
                    cfg.head_dim
                )));
            }
        }
    }
    if let Some(w) = m.opt_u64(&key("attention.sliding_window"))? {
        if w != 0 && w < cfg.max_seq_len as u64 {
            return Err(unsupported(format!(
                "sliding window {w} < context length {} ({})",
                cfg.max_seq_len,
                key("attention.sliding_window")
            )));
        }
    }
    if let Some(n) = m.opt_u64(&key("expert_count"))? {
        if n > 0 {
            return Err(unsupported(format!(
                "{n} experts ({})",
                key("expert_count")
            )));
        }
    }
    Ok(cfg)
}

/// M3: an HF key in a config error becomes the GGUF key it came from.
fn rename_keys(e: ConfigError, arch: &str) -> ConfigError {
    let rename = |k: String| {
        KEYS.iter()
            .find(|(_, hf)| *hf == k)
            .map(|(g, _)| format!("{arch}.{g}"))
            .or_else(|| match k.as_str() {
                "bos_token_id" => Some(BOS.to_string()),
                "eos_token_id" => Some(format!("{EOS} / {EOT}")),
                _ => None,
            })
            .unwrap_or(k)
    };
    match e {
        ConfigError::MissingKey { path, key } => ConfigError::MissingKey {
            path,
            key: rename(key),
        },
        ConfigError::InvalidValue { path, key, msg } => ConfigError::InvalidValue {
            path,
            key: rename(key),
            msg,
        },
        other => other,
    }
}

/// The role and layer a GGUF name stands for; `None` if none.
fn role_of(name: &str) -> Option<(Role, Option<usize>)> {
    match name {
        TOKEN_EMBD => return Some((Role::Embedding, None)),
        OUTPUT => return Some((Role::LmHead, None)),
        OUTPUT_NORM => return Some((Role::FinalNorm, None)),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    // Leading zeros or a `+` parse to the same layer: M6 reports those as
    // duplicates rather than as unknown names.
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit() || b == b'+') {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    LAYER_LEAVES
        .iter()
        .find(|(l, _)| *l == leaf)
        .map(|&(_, role)| (role, Some(layer)))
}

/// HF `(rows, cols)` of a role; `rows` 1 for a vector.
fn hf_shape(cfg: &Config, role: Role) -> (usize, usize) {
    // Saturating: heads x head_dim may pass the config's limits and still
    // overflow a 32-bit usize; a saturated size then fails the shape check.
    let (d, q, kv, ff) = (
        cfg.dim,
        cfg.n_heads.saturating_mul(cfg.head_dim),
        cfg.n_kv_heads.saturating_mul(cfg.head_dim),
        cfg.hidden_dim,
    );
    match role {
        Role::Q => (q, d),
        Role::K | Role::V => (kv, d),
        Role::O => (d, q),
        Role::Gate | Role::Up => (ff, d),
        Role::Down => (d, ff),
        Role::AttnNorm | Role::FfnNorm | Role::FinalNorm => (1, d),
        Role::QBias => (1, q),
        Role::KBias | Role::VBias => (1, kv),
        Role::Embedding | Role::LmHead => (cfg.vocab_size, d),
    }
}

fn is_vector(role: Role) -> bool {
    matches!(
        role,
        Role::AttnNorm | Role::FfnNorm | Role::FinalNorm | Role::QBias | Role::KBias | Role::VBias
    )
}

/// M8: the weight type of a ggml type tpi computes with.
pub fn weight_type(t: GgmlType) -> Option<WeightType> {
    Some(match t {
        GgmlType::F32 => WeightType::F32,
        GgmlType::F16 => WeightType::F16,
        GgmlType::BF16 => WeightType::BF16,
        GgmlType::Q8_0 => WeightType::Q8_0,
        GgmlType::Q4_0 => WeightType::Q4_0,
        GgmlType::Q4_K => WeightType::Q4_K,
        GgmlType::Q6_K => WeightType::Q6_K,
        _ => return None,
    })
}

type Mapping = (Vec<Mapped>, Option<TensorInfo>);

/// M6..M8: every tensor of `gguf` given its role, checked against `cfg`.
pub fn map_tensors(gguf: &Gguf, cfg: &Config) -> Result<Mapping, GgufModelError> {
    let origin = gguf.file_name(0).to_string();
    let mut slots: Vec<Option<&TensorInfo>> = vec![None; 3 + cfg.n_layers * LAYER_LEAVES.len()];
    let slot = |role: Role, layer: Option<usize>| -> Option<usize> {
        match (role, layer) {
            (Role::Embedding, None) => Some(0),
            (Role::FinalNorm, None) => Some(1),
            (Role::LmHead, None) => Some(2),
            (_, Some(l)) if l < cfg.n_layers => LAYER_LEAVES
                .iter()
                .position(|(_, r)| *r == role)
                .map(|i| 3 + l * LAYER_LEAVES.len() + i),
            _ => None,
        }
    };
    let mut rope_freqs = None;
    for t in gguf.tensors() {
        if t.name == ROPE_FREQS {
            check_rope_freqs(t, cfg, &origin)?;
            rope_freqs = Some(t.clone());
            continue;
        }
        let i = role_of(&t.name)
            .and_then(|(role, layer)| slot(role, layer))
            .ok_or_else(|| GgufModelError::UnexpectedTensor {
                origin: origin.clone(),
                tensor: t.name.clone(),
            })?;
        let Some(s) = slots.get_mut(i) else {
            continue;
        };
        if let Some(first) = s {
            return Err(GgufModelError::DuplicateTensor {
                origin,
                first: first.name.clone(),
                second: t.name.clone(),
            });
        }
        *s = Some(t);
    }

    let has_bias = |l: usize| {
        [Role::QBias, Role::KBias, Role::VBias].map(|r| {
            slot(r, Some(l))
                .and_then(|i| slots.get(i).copied().flatten())
                .is_some()
        })
    };
    let mut out = Vec::with_capacity(slots.len());
    let mut push = |role: Role, layer: Option<usize>| -> Result<(), GgufModelError> {
        let info = slot(role, layer)
            .and_then(|i| slots.get(i).copied().flatten())
            .ok_or_else(|| GgufModelError::MissingTensor {
                origin: origin.clone(),
                tensor: gguf_name(role, layer),
            })?;
        out.push(check(info, role, layer, cfg, &origin)?);
        Ok(())
    };
    push(Role::Embedding, None)?;
    for l in 0..cfg.n_layers {
        for &(_, role) in &LAYER_LEAVES[..9] {
            push(role, Some(l))?;
        }
        // M6: biases all three or none (qwen2: all three).
        if cfg.attention_bias {
            for role in [Role::QBias, Role::KBias, Role::VBias] {
                push(role, Some(l))?;
            }
        } else if let Some(i) = has_bias(l).iter().position(|&b| b) {
            return Err(GgufModelError::UnexpectedTensor {
                origin,
                tensor: gguf_name([Role::QBias, Role::KBias, Role::VBias][i], Some(l)),
            });
        }
    }
    push(Role::FinalNorm, None)?;
    if !cfg.tie_embeddings {
        push(Role::LmHead, None)?;
    }
    Ok((out, rope_freqs))
}

/// The GGUF name of a role (for messages).
pub fn gguf_name(role: Role, layer: Option<usize>) -> String {
    match (role, layer) {
        (Role::Embedding, _) => TOKEN_EMBD.to_string(),
        (Role::LmHead, _) => OUTPUT.to_string(),
        (Role::FinalNorm, _) => OUTPUT_NORM.to_string(),
        (role, l) => {
            let leaf = LAYER_LEAVES
                .iter()
                .find(|(_, r)| *r == role)
                .map_or("?", |(leaf, _)| leaf);
            format!("blk.{}.{leaf}", l.unwrap_or(0))
        }
    }
}

/// M7, M8 for one tensor.
fn check(
    info: &TensorInfo,
    role: Role,
    layer: Option<usize>,
    cfg: &Config,
    origin: &str,
) -> Result<Mapped, GgufModelError> {
    let (rows, cols) = hf_shape(cfg, role);
    let vector = is_vector(role);
    let want: Vec<u64> = if vector {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    };
    if info.dims != want {
        return Err(GgufModelError::Shape {
            origin: origin.to_string(),
            tensor: info.name.clone(),
            dims: info.dims.clone(),
            want,
        });
    }
    let wtype = weight_type(info.ggml_type)
        .filter(|w| !vector || w.float().is_some())
        .ok_or_else(|| GgufModelError::TensorType {
            origin: origin.to_string(),
            tensor: info.name.clone(),
            ggml_type: info.ggml_type,
        })?;
    let permutation = match (&cfg.arch, role) {
        (Arch::Llama, Role::Q | Role::QBias) => QkPermutation::new(cfg.n_heads, cfg.head_dim),
        (Arch::Llama, Role::K | Role::KBias) => QkPermutation::new(cfg.n_kv_heads, cfg.head_dim),
        _ => None,
    };
    Ok(Mapped {
        role,
        layer,
        info: info.clone(),
        wtype,
        rows,
        cols,
        permutation,
    })
}

/// M5, M7, M8 for `rope_freqs.weight`: F32 `[head_dim / 2]`.
fn check_rope_freqs(t: &TensorInfo, cfg: &Config, origin: &str) -> Result<(), GgufModelError> {
    let want = vec![(cfg.head_dim / 2) as u64];
    if t.dims != want {
        return Err(GgufModelError::Shape {
            origin: origin.to_string(),
            tensor: t.name.clone(),
            dims: t.dims.clone(),
            want,
        });
    }
    if t.ggml_type != GgmlType::F32 {
        return Err(GgufModelError::TensorType {
            origin: origin.to_string(),
            tensor: t.name.clone(),
            ggml_type: t.ggml_type,
        });
    }
    if cfg.rope_scaling != RopeScaling::None {
        return Err(GgufModelError::Unsupported {
            origin: origin.to_string(),
            what: format!("{ROPE_FREQS} together with {:?}", cfg.rope_scaling),
        });
    }
    Ok(())
}

/// RoPE inverse frequencies with llama3 divisors (M5): `cfg`'s base
/// frequencies, each divided by its `rope_freqs` value, as llama.cpp's
/// `ggml_rope_ext` uses them. `bytes` are the tensor's little-endian f32
/// data; `origin` names the file in errors.
pub fn rope_inv_freq(cfg: &Config, bytes: &[u8], origin: &str) -> Result<Vec<f32>, GgufModelError> {
    let base = cfg.rope_inv_freq();
    let err = |msg: String| GgufModelError::RopeFreqs {
        origin: origin.to_string(),
        msg,
    };
    if bytes.len() != base.len() * Dtype::F32.size() {
        return Err(err(format!(
            "{} bytes, expected {} f32 values",
            bytes.len(),
            base.len()
        )));
    }
    let factors = super::dtype::widen(Dtype::F32, bytes);
    base.iter()
        .zip(&factors)
        .enumerate()
        .map(|(i, (f, d))| {
            let x = f / d;
            if d.is_finite() && *d > 0.0 && x.is_finite() && x > 0.0 {
                Ok(x)
            } else {
                Err(err(format!("value {i} is {d}, not a positive divisor")))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
