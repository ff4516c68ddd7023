//! What a tensor is in a Llama-family model, whichever file it comes from
//! (safetensors names in `names`, GGUF names in `gguf_model`); the slice
//! manifest stores it as a code (`split::manifest`).

use super::config::Config;

/// What a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    AttnNorm,
    FfnNorm,
    QBias,
    KBias,
    VBias,
    FinalNorm,
    Embedding,
    LmHead,
}

impl Role {
    /// HF `(rows, cols)` of the tensor under `cfg`; `rows` 1 for a vector.
    pub fn shape(self, cfg: &Config) -> (usize, usize) {
        // Saturating: heads x head_dim may pass the config's limits and
        // still overflow a 32-bit usize; a saturated size then fails every
        // shape check.
        let (d, q, kv, ff) = (
            cfg.dim,
            cfg.n_heads.saturating_mul(cfg.head_dim),
            cfg.n_kv_heads.saturating_mul(cfg.head_dim),
            cfg.hidden_dim,
        );
        match self {
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

    /// Norms and biases: vectors, kept in f32.
    pub fn is_vector(self) -> bool {
        matches!(
            self,
            Role::AttnNorm
                | Role::FfnNorm
                | Role::FinalNorm
                | Role::QBias
                | Role::KBias
                | Role::VBias
        )
    }

    /// Its HF (safetensors) name in layer `layer` (ignored for the
    /// embedding, final norm and lm_head; the lm_head's name is
    /// `names::LM_HEAD` even when tied, see `names::lm_head_name`).
    pub fn hf_name(self, layer: usize) -> String {
        use super::names::*;
        let leaf = match self {
            Role::Embedding => return EMBED.to_string(),
            Role::LmHead => return LM_HEAD.to_string(),
            Role::FinalNorm => return FINAL_NORM.to_string(),
            Role::Q => "self_attn.q_proj.weight",
            Role::K => "self_attn.k_proj.weight",
            Role::V => "self_attn.v_proj.weight",
            Role::O => "self_attn.o_proj.weight",
            Role::Gate => "mlp.gate_proj.weight",
            Role::Up => "mlp.up_proj.weight",
            Role::Down => "mlp.down_proj.weight",
            Role::AttnNorm => ATTN_NORM,
            Role::FfnNorm => FFN_NORM,
            Role::QBias => Q_BIAS,
            Role::KBias => K_BIAS,
            Role::VBias => V_BIAS,
        };
        layer_name(layer, leaf)
    }
}
