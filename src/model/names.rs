//! HuggingFace tensor names of the Llama family, spelled once: every
//! loader, slicer and generator asks here.

use super::config::Config;
use super::safetensors::SafeTensors;

/// The token embedding table `[vocab][dim]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The output projection `[vocab][dim]` (absent when tied to [`EMBED`]).
pub const LM_HEAD: &str = "lm_head.weight";
/// The final RMSNorm weight `[dim]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// Per-layer RMSNorm weights (leaves under `model.layers.N.`).
pub const ATTN_NORM: &str = "input_layernorm.weight";
pub const FFN_NORM: &str = "post_attention_layernorm.weight";
/// Per-layer q/k/v biases (Qwen2; Llama with `attention_bias`).
pub const Q_BIAS: &str = "self_attn.q_proj.bias";
pub const K_BIAS: &str = "self_attn.k_proj.bias";
pub const V_BIAS: &str = "self_attn.v_proj.bias";

/// HF tensor names of layer `l`.
pub fn layer_name(l: usize, leaf: &str) -> String {
    format!("model.layers.{l}.{leaf}")
}

/// The matrices of a layer: (leaf name, rows, cols).
pub fn layer_matrix_shapes(cfg: &Config) -> [(&'static str, usize, usize); 7] {
    let (d, hd) = (cfg.dim, cfg.head_dim);
    [
        ("self_attn.q_proj.weight", cfg.n_heads * hd, d),
        ("self_attn.k_proj.weight", cfg.n_kv_heads * hd, d),
        ("self_attn.v_proj.weight", cfg.n_kv_heads * hd, d),
        ("self_attn.o_proj.weight", d, cfg.n_heads * hd),
        ("mlp.gate_proj.weight", cfg.hidden_dim, d),
        ("mlp.up_proj.weight", cfg.hidden_dim, d),
        ("mlp.down_proj.weight", d, cfg.hidden_dim),
    ]
}

/// Name of the output projection: `lm_head.weight`, or the embedding when tied.
pub fn lm_head_name(cfg: &Config, st: &SafeTensors) -> &'static str {
    if cfg.tie_embeddings || st.get(LM_HEAD).is_none() {
        EMBED
    } else {
        LM_HEAD
    }
}

/// Every tensor name tpi reads for `cfg`, and whether `name` is one of them
/// or a buffer HF saves but tpi recomputes (`rotary_emb.inv_freq`).
pub fn is_read(cfg: &Config, name: &str) -> bool {
    if [EMBED, LM_HEAD, FINAL_NORM].contains(&name) || name.ends_with(".rotary_emb.inv_freq") {
        return true;
    }
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return false;
    };
    let Some((l, leaf)) = rest.split_once('.') else {
        return false;
    };
    // A canonical layer index below n_layers ("01" is not HF's spelling).
    let layer_ok = l
        .parse::<usize>()
        .is_ok_and(|i| i < cfg.n_layers && i.to_string() == l);
    let biases = [Q_BIAS, K_BIAS, V_BIAS];
    layer_ok
        && (leaf == ATTN_NORM
            || leaf == FFN_NORM
            || layer_matrix_shapes(cfg).iter().any(|m| m.0 == leaf)
            || (cfg.attention_bias && biases.contains(&leaf)))
}
