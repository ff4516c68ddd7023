//! M1..M5 of [`super`]: the `<arch>.*` metadata of a GGUF file resolved
//! to a [`Config`] through the same checks as an HF `config.json`.

use super::*;

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
    config_json(gguf).map(|(cfg, _)| cfg)
}

/// [`config`] and the HF-style `config.json` object it was checked as
/// (what a slice manifest carries).
pub fn config_json(gguf: &Gguf) -> Result<(Config, Map<String, Json>), GgufModelError> {
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
    let text = Json::Object(c.clone()).to_string();
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
    Ok((cfg, c))
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
