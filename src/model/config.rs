//! HuggingFace `config.json` (+ optional `generation_config.json`) for the
//! decoder-only architectures tpi runs: Llama (and Mistral without sliding
//! window) and Qwen2.
//!
//! Both the classic keys (`rope_theta`, `rope_scaling`, `torch_dtype`) and the
//! newer transformers-5 layout (`rope_parameters`, `dtype`) are accepted. All
//! parsing goes through `serde_json::Value`; bad input is an error naming the
//! file and key, never a panic.

use std::path::Path;

use serde_json::{Map, Value};

pub use super::config_error::ConfigError;

/// Largest accepted `config.json` / `generation_config.json` (they are a few KiB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Upper bound for hidden / intermediate / head dimensions.
const MAX_DIM: usize = 1 << 20;
/// Upper bound for the number of layers.
const MAX_LAYERS: usize = 1024;
/// Upper bound for the number of attention heads.
const MAX_HEADS: usize = 1 << 14;
/// Upper bound for the vocabulary size.
const MAX_VOCAB: usize = 1 << 22;
/// Upper bound for `max_position_embeddings`.
const MAX_POSITIONS: usize = 1 << 24;

/// Model family (decides tensor names and q/k/v biases).
#[derive(Debug, Clone, PartialEq)]
pub enum Arch {
    Llama,
    Qwen2,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Each base frequency divided by its own factor: llama.cpp's
    /// `rope_freqs.weight` of a GGUF file (Llama 3 scaling as the converter
    /// precomputed it). tpi's own `rope_type` `freq_divisors` with
    /// `divisors`, `head_dim / 2` positive finite values.
    Divisors(Vec<f32>),
}

/// The model hyper-parameters the engine needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub dim: usize,
    /// `intermediate_size`
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// `max_position_embeddings`
    pub max_seq_len: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub tie_embeddings: bool,
    /// q/k/v biases: Qwen2 always true; Llama from `attention_bias`.
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub torch_dtype: Option<String>,
}

/// Reads a small text file, bounded by `MAX_CONFIG_BYTES`.
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ConfigError::Io {
        path: name.clone(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| ConfigError::Io {
            path: name.clone(),
            source,
        })?
        .len();
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: name,
            len,
            max: MAX_CONFIG_BYTES,
        });
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| ConfigError::Io {
            path: name.clone(),
            source,
        })?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: name,
            len: text.len() as u64,
            max: MAX_CONFIG_BYTES,
        });
    }
    Ok(text)
}

/// Typed accessors over one JSON object, carrying the file name for errors.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
    /// Key prefix for nested objects, e.g. `rope_parameters.`.
    prefix: &'a str,
}

impl<'a> Obj<'a> {
    fn parse(text: &str, path: &str) -> Result<Value, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            path: path.to_string(),
            msg: e.to_string(),
        })?;
        if !v.is_object() {
            return Err(ConfigError::Json {
                path: path.to_string(),
                msg: "top level is not a JSON object".to_string(),
            });
        }
        Ok(v)
    }

    /// The value of `key`, treating JSON null as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn invalid(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.to_string(),
            key: format!("{}{key}", self.prefix),
            msg: msg.into(),
        }
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingKey {
            path: self.path.to_string(),
            key: format!("{}{key}", self.prefix),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    self.invalid(key, format!("expected a non-negative integer, got {v}"))
                })?;
                usize::try_from(n)
                    .map(Some)
                    .map_err(|_| self.invalid(key, format!("{n} does not fit in usize")))
            }
        }
    }

    fn usize_req(&self, key: &str) -> Result<usize, ConfigError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let x = v
                    .as_f64()
                    .ok_or_else(|| self.invalid(key, format!("expected a number, got {v}")))?;
                if !x.is_finite() {
                    return Err(self.invalid(key, "not finite"));
                }
                Ok(Some(x))
            }
        }
    }

    /// A positive finite number that is also finite and positive as f32.
    fn positive_f32(&self, key: &str, value: f64) -> Result<f32, ConfigError> {
        let x = value as f32;
        if !(x.is_finite() && x > 0.0) {
            return Err(self.invalid(key, format!("{value} must be a positive finite f32")));
        }
        Ok(x)
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected true/false, got {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a string, got {v}"))),
        }
    }

    /// A token id or list of token ids (`eos_token_id` may be either).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>, ConfigError> {
        let one = |v: &Value| -> Result<u32, ConfigError> {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.invalid(key, format!("expected a token id (u32), got {v}")))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                if items.len() > 1024 {
                    return Err(self.invalid(key, "more than 1024 token ids"));
                }
                items.iter().map(one).collect()
            }
            Some(v) => Ok(vec![one(v)?]),
        }
    }

    fn sub(&self, key: &str, prefix: &'a str) -> Result<Option<Obj<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                map,
                path: self.path,
                prefix,
            })),
            Some(v) => Err(self.invalid(key, format!("expected an object, got {v}"))),
        }
    }
}

fn check_range(obj: &Obj<'_>, key: &str, value: usize, max: usize) -> Result<usize, ConfigError> {
    if value == 0 || value > max {
        return Err(obj.invalid(key, format!("{value} is outside 1..={max}")));
    }
    Ok(value)
}

/// Parses a RoPE scaling object (`rope_parameters` or `rope_scaling`).
fn parse_rope_scaling(obj: &Obj<'_>) -> Result<RopeScaling, ConfigError> {
    let kind = match obj.opt_str("rope_type")? {
        Some(t) => t,
        None => obj.opt_str("type")?.unwrap_or("default"),
    };
    let factor = |o: &Obj<'_>| -> Result<f32, ConfigError> {
        let f = o.opt_f64("factor")?.ok_or_else(|| o.missing("factor"))?;
        // A scaling factor divides frequencies: keep it where the result
        // stays finite (real models use 1..64).
        if !(1e-3..=1e6).contains(&f) {
            return Err(o.invalid("factor", format!("{f} is outside [0.001, 1e6]")));
        }
        o.positive_f32("factor", f)
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: factor(obj)?,
        }),
        "llama3" => {
            let factor = factor(obj)?;
            let low = obj
                .opt_f64("low_freq_factor")?
                .ok_or_else(|| obj.missing("low_freq_factor"))?;
            let high = obj
                .opt_f64("high_freq_factor")?
                .ok_or_else(|| obj.missing("high_freq_factor"))?;
            let low_freq_factor = obj.positive_f32("low_freq_factor", low)?;
            let high_freq_factor = obj.positive_f32("high_freq_factor", high)?;
            if high_freq_factor <= low_freq_factor {
                return Err(obj.invalid(
                    "high_freq_factor",
                    format!("{high} must be larger than low_freq_factor {low}"),
                ));
            }
            let orig = obj.usize_req("original_max_position_embeddings")?;
            let orig = check_range(obj, "original_max_position_embeddings", orig, MAX_POSITIONS)?;
            Ok(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: orig,
            })
        }
        "freq_divisors" => {
            let v = obj.get("divisors").ok_or_else(|| obj.missing("divisors"))?;
            let list = v
                .as_array()
                .ok_or_else(|| obj.invalid("divisors", "not an array"))?;
            let mut out = Vec::with_capacity(list.len().min(MAX_DIM));
            for (i, x) in list.iter().enumerate() {
                let d = x.as_f64().filter(|d| d.is_finite() && *d > 0.0);
                match d {
                    Some(d) if out.len() < MAX_DIM => out.push(obj.positive_f32("divisors", d)?),
                    _ => {
                        return Err(obj.invalid(
                            "divisors",
                            format!("value {i} is not a positive finite number (or too many)"),
                        ))
                    }
                }
            }
            Ok(RopeScaling::Divisors(out))
        }
        other => Err(ConfigError::Unsupported {
            path: obj.path.to_string(),
            what: format!("rope scaling type `{other}`"),
        }),
    }
}

impl Config {
    /// Reads `dir/config.json` and, if present, `dir/generation_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Config, ConfigError> {
        let config_path = dir.join("config.json");
        let config_text = read_bounded(&config_path)?;
        let gen_path = dir.join("generation_config.json");
        let gen_text = if gen_path.exists() {
            Some(read_bounded(&gen_path)?)
        } else {
            None
        };
        let origin = config_path.display().to_string();
        let gen_origin = gen_path.display().to_string();
        Self::parse(&config_text, gen_text.as_deref(), &origin, &gen_origin)
    }

    /// Parses config JSON text; `origin` names the config file in errors
    /// (the generation config is named `<origin dir>/generation_config.json`).
    pub fn from_json(
        config_json: &str,
        generation_config_json: Option<&str>,
        origin: &str,
    ) -> Result<Config, ConfigError> {
        let gen_origin = match Path::new(origin).parent() {
            Some(p) if !p.as_os_str().is_empty() => {
                p.join("generation_config.json").display().to_string()
            }
            _ => "generation_config.json".to_string(),
        };
        Self::parse(config_json, generation_config_json, origin, &gen_origin)
    }

    fn parse(
        config_json: &str,
        gen_json: Option<&str>,
        origin: &str,
        gen_origin: &str,
    ) -> Result<Config, ConfigError> {
        let root = Obj::parse(config_json, origin)?;
        let Some(map) = root.as_object() else {
            return Err(ConfigError::Json {
                path: origin.to_string(),
                msg: "top level is not a JSON object".to_string(),
            });
        };
        let c = Obj {
            map,
            path: origin,
            prefix: "",
        };

        // Architecture.
        let arch_name: String = match c.get("architectures") {
            Some(Value::Array(list)) => match list.first() {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(c.invalid("architectures", "expected a non-empty list of strings")),
            },
            Some(v) => return Err(c.invalid("architectures", format!("expected a list, got {v}"))),
            None => match c.opt_str("model_type")? {
                Some("llama") => "LlamaForCausalLM".to_string(),
                Some("mistral") => "MistralForCausalLM".to_string(),
                Some("qwen2") => "Qwen2ForCausalLM".to_string(),
                Some(other) => other.to_string(),
                None => return Err(c.missing("architectures")),
            },
        };

        let dim = check_range(&c, "hidden_size", c.usize_req("hidden_size")?, MAX_DIM)?;
        let hidden_dim = check_range(
            &c,
            "intermediate_size",
            c.usize_req("intermediate_size")?,
            MAX_DIM,
        )?;
        let n_layers = check_range(
            &c,
            "num_hidden_layers",
            c.usize_req("num_hidden_layers")?,
            MAX_LAYERS,
        )?;
        let n_heads = check_range(
            &c,
            "num_attention_heads",
            c.usize_req("num_attention_heads")?,
            MAX_HEADS,
        )?;
        let n_kv_heads = match c.opt_usize("num_key_value_heads")? {
            Some(n) => check_range(&c, "num_key_value_heads", n, MAX_HEADS)?,
            None => n_heads,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(c.invalid(
                "num_key_value_heads",
                format!("num_attention_heads {n_heads} is not a multiple of {n_kv_heads}"),
            ));
        }
        let head_dim = match c.opt_usize("head_dim")? {
            Some(h) => check_range(&c, "head_dim", h, MAX_DIM)?,
            None => {
                if dim % n_heads != 0 {
                    return Err(c.invalid(
                        "num_attention_heads",
                        format!("hidden_size {dim} is not a multiple of {n_heads} and no head_dim is given"),
                    ));
                }
                dim / n_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(c.invalid("head_dim", format!("{head_dim} must be even for RoPE")));
        }
        let vocab_size = check_range(&c, "vocab_size", c.usize_req("vocab_size")?, MAX_VOCAB)?;
        let max_seq_len = check_range(
            &c,
            "max_position_embeddings",
            c.usize_req("max_position_embeddings")?,
            MAX_POSITIONS,
        )?;
        let norm_eps = match c.opt_f64("rms_norm_eps")? {
            Some(e) => c.positive_f32("rms_norm_eps", e)?,
            None => 1e-6,
        };

        if let Some(act) = c.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(ConfigError::Unsupported {
                    path: origin.to_string(),
                    what: format!("hidden_act `{act}` (only silu)"),
                });
            }
        }
        if c.opt_bool("mlp_bias")? == Some(true) {
            return Err(ConfigError::Unsupported {
                path: origin.to_string(),
                what: "mlp_bias = true".to_string(),
            });
        }

        let arch = match arch_name.as_str() {
            "LlamaForCausalLM" => Arch::Llama,
            "MistralForCausalLM" => {
                if let Some(w) = c.opt_usize("sliding_window")? {
                    if w < max_seq_len {
                        return Err(ConfigError::Unsupported {
                            path: origin.to_string(),
                            what: format!(
                                "sliding window {w} < max_position_embeddings {max_seq_len}"
                            ),
                        });
                    }
                }
                Arch::Llama
            }
            "Qwen2ForCausalLM" => {
                if c.opt_bool("use_sliding_window")? == Some(true) {
                    return Err(ConfigError::Unsupported {
                        path: origin.to_string(),
                        what: "sliding window (use_sliding_window = true)".to_string(),
                    });
                }
                Arch::Qwen2
            }
            other => {
                return Err(ConfigError::UnsupportedArchitecture {
                    path: origin.to_string(),
                    arch: other.to_string(),
                })
            }
        };
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Llama => c.opt_bool("attention_bias")?.unwrap_or(false),
        };
        let tie_embeddings = c.opt_bool("tie_word_embeddings")?.unwrap_or(false);

        // RoPE: the newer `rope_parameters` wins over `rope_theta`/`rope_scaling`.
        let rope_params = c.sub("rope_parameters", "rope_parameters.")?;
        let theta = match rope_params.as_ref() {
            Some(p) => match p.opt_f64("rope_theta")? {
                Some(t) => Some(("rope_parameters.rope_theta", t)),
                None => c.opt_f64("rope_theta")?.map(|t| ("rope_theta", t)),
            },
            None => c.opt_f64("rope_theta")?.map(|t| ("rope_theta", t)),
        };
        let rope_theta = match theta {
            Some((key, t)) => {
                let x = t as f32;
                if !(x.is_finite() && x > 1.0) {
                    return Err(c.invalid(key, format!("{t} must be a finite number > 1")));
                }
                x
            }
            None => 10000.0,
        };
        let rope_scaling = match rope_params.as_ref() {
            Some(p) => parse_rope_scaling(p)?,
            None => match c.sub("rope_scaling", "rope_scaling.")? {
                Some(s) => parse_rope_scaling(&s)?,
                None => RopeScaling::None,
            },
        };
        if let RopeScaling::Divisors(d) = &rope_scaling {
            if d.len() != head_dim / 2 {
                return Err(c.invalid(
                    "rope_scaling.divisors",
                    format!("{} values, head_dim / 2 is {}", d.len(), head_dim / 2),
                ));
            }
        }

        let torch_dtype = match c.opt_str("torch_dtype")? {
            Some(s) => Some(s.to_string()),
            None => c.opt_str("dtype")?.map(str::to_string),
        };

        // Special tokens: config.json, then generation_config.json.
        let mut bos_token_id = c.token_ids("bos_token_id")?.first().copied();
        let mut eos_token_ids = c.token_ids("eos_token_id")?;
        if let Some(text) = gen_json {
            let gv = Obj::parse(text, gen_origin)?;
            if let Some(gmap) = gv.as_object() {
                let g = Obj {
                    map: gmap,
                    path: gen_origin,
                    prefix: "",
                };
                if let Some(b) = g.token_ids("bos_token_id")?.first().copied() {
                    bos_token_id = Some(b);
                }
                eos_token_ids.extend(g.token_ids("eos_token_id")?);
            }
        }
        let mut seen = std::collections::HashSet::new();
        eos_token_ids.retain(|id| seen.insert(*id));

        Ok(Config {
            arch,
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            max_seq_len,
            norm_eps,
            rope_theta,
            rope_scaling,
            tie_embeddings,
            attention_bias,
            bos_token_id,
            eos_token_ids,
            torch_dtype,
        })
    }

    /// RoPE inverse frequencies (`head_dim / 2` values), computed in f32 the
    /// way transformers does (`_compute_default_rope_parameters`, linear and
    /// `_compute_llama3_parameters`).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let hd = self.head_dim as f32;
        let base: Vec<f32> = (0..self.head_dim / 2)
            .map(|i| 1.0f32 / self.rope_theta.powf((2 * i) as f32 / hd))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Divisors(d) => base.iter().zip(d).map(|(f, d)| f / d).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // transformers computes these scalars in f64 and compares /
                // combines them with the f32 tensor, i.e. rounded to f32.
                let (factor, low_freq_factor) = (*factor, *low_freq_factor);
                let old = *original_max_position_embeddings as f64;
                let low = low_freq_factor as f64;
                let high = *high_freq_factor as f64;
                let low_freq_wavelen = (old / low) as f32;
                let high_freq_wavelen = (old / high) as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let old32 = old as f32;
                let span = (high - low) as f32;
                base.into_iter()
                    .map(|f| {
                        let wavelen = two_pi / f;
                        let scaled = if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            f
                        };
                        // transformers: ~(wavelen < high) * ~(wavelen > low)
                        // (wavelen is finite: inv_freq is positive).
                        let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                        if medium {
                            let smooth = (old32 / wavelen - low_freq_factor) / span;
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn stories260k() {
        let c = Config::from_dir(&fixture("stories260K")).unwrap();
        assert_eq!(
            c,
            Config {
                arch: Arch::Llama,
                dim: 64,
                hidden_dim: 172,
                n_layers: 5,
                n_heads: 8,
                n_kv_heads: 4,
                head_dim: 8,
                vocab_size: 512,
                max_seq_len: 512,
                norm_eps: 1e-5,
                rope_theta: 10000.0,
                rope_scaling: RopeScaling::None,
                tie_embeddings: true,
                attention_bias: false,
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
                torch_dtype: Some("float32".into()),
            }
        );
    }

    #[test]
    fn llama_mha_f32() {
        let c = Config::from_dir(&fixture("llama-mha-f32")).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!((c.dim, c.hidden_dim, c.n_layers), (64, 176, 4));
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (8, 8, 8));
        assert_eq!((c.vocab_size, c.max_seq_len), (512, 256));
        assert!(!c.tie_embeddings);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.bos_token_id, Some(1));
    }

    #[test]
    fn llama_gqa_bf16() {
        let c = Config::from_dir(&fixture("llama-gqa-bf16")).unwrap();
        assert_eq!((c.dim, c.hidden_dim, c.n_layers), (128, 352, 3));
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (8, 2, 16));
        assert_eq!((c.vocab_size, c.max_seq_len), (1000, 512));
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64
            }
        );
        assert!(c.tie_embeddings);
        assert!(!c.attention_bias);
        assert_eq!(c.bos_token_id, Some(997));
        assert_eq!(c.eos_token_ids, vec![998, 999]);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    }

    /// Independent f64 evaluation of transformers' llama3 rule.
    fn llama3_ref(theta: f64, hd: usize, factor: f64, low: f64, high: f64, old: f64) -> Vec<f64> {
        (0..hd / 2)
            .map(|i| {
                let f = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
                let wl = 2.0 * std::f64::consts::PI / f;
                if wl < old / high {
                    f
                } else if wl > old / low {
                    f / factor
                } else {
                    let s = (old / wl - low) / (high - low);
                    (1.0 - s) * f / factor + s * f
                }
            })
            .collect()
    }

    #[test]
    fn llama3_inv_freq() {
        let c = Config::from_dir(&fixture("llama-gqa-bf16")).unwrap();
        let got = c.rope_inv_freq();
        let want = llama3_ref(500000.0, 16, 8.0, 1.0, 4.0, 64.0);
        assert_eq!(got.len(), 8);
        for (g, w) in got.iter().zip(&want) {
            assert!(((*g as f64) - w).abs() <= 2e-6 * w.abs(), "{g} vs {w}");
        }
        // As the fixture README says: one kept, one smoothed, six divided by 8.
        let plain: Vec<f64> = (0..8)
            .map(|i| 1.0 / 500000f64.powf((2 * i) as f64 / 16.0))
            .collect();
        let kept = want.iter().zip(&plain).filter(|(w, p)| w == p).count();
        let divided = want
            .iter()
            .zip(&plain)
            .filter(|(w, p)| **w == **p / 8.0)
            .count();
        assert_eq!((kept, divided), (1, 6));
    }

    #[test]
    fn default_and_linear_inv_freq() {
        let mut c = Config::from_dir(&fixture("stories260K")).unwrap();
        let f = c.rope_inv_freq();
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[1] as f64 - 0.1).abs() < 1e-7);
        c.rope_scaling = RopeScaling::Linear { factor: 4.0 };
        let g = c.rope_inv_freq();
        assert_eq!(g[0], 0.25);
    }

    const MIN: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,
        "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
        "vocab_size":100,"max_position_embeddings":128"#;

    fn with(extra: &str) -> String {
        format!("{MIN}{extra}}}")
    }

    #[test]
    fn classic_keys_and_defaults() {
        let c = Config::from_json(
            &with(r#","rope_theta":1e6,"rope_scaling":{"type":"linear","factor":2.0},"eos_token_id":[5,6]"#),
            Some(r#"{"eos_token_id":[6,7],"bos_token_id":3}"#),
            "x/config.json",
        )
        .unwrap();
        assert_eq!(c.n_kv_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.eos_token_ids, vec![5, 6, 7]);
        assert_eq!(c.bos_token_id, Some(3));
        assert!(!c.tie_embeddings);
        assert_eq!(c.norm_eps, 1e-6);
        assert_eq!(c.torch_dtype, None);
    }

    #[test]
    fn qwen2_and_mistral() {
        let q = MIN.replace("LlamaForCausalLM", "Qwen2ForCausalLM");
        let c = Config::from_json(&format!("{q}}}"), None, "q/config.json").unwrap();
        assert_eq!(c.arch, Arch::Qwen2);
        assert!(c.attention_bias);
        let e = Config::from_json(
            &format!("{q},\"use_sliding_window\":true}}"),
            None,
            "q/config.json",
        )
        .unwrap_err();
        assert!(e.to_string().contains("sliding window"), "{e}");

        let m = MIN.replace("LlamaForCausalLM", "MistralForCausalLM");
        let c = Config::from_json(&format!("{m},\"sliding_window\":null}}"), None, "m").unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert!(Config::from_json(&format!("{m},\"sliding_window\":128}}"), None, "m").is_ok());
        let e = Config::from_json(&format!("{m},\"sliding_window\":64}}"), None, "m").unwrap_err();
        assert!(e.to_string().contains("unsupported: sliding window"), "{e}");
    }

    #[test]
    fn errors() {
        let e = Config::from_dir(Path::new("/nonexistent/dir")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/dir/config.json"),
            "{e}"
        );

        let e = Config::from_json("{not json", None, "m/config.json").unwrap_err();
        assert!(matches!(e, ConfigError::Json { .. }));
        assert!(e.to_string().contains("m/config.json"), "{e}");
        assert!(Config::from_json("[1,2]", None, "m").is_err());

        let gpt2 = format!("{}}}", MIN.replace("LlamaForCausalLM", "GPT2LMHeadModel"));
        let e = Config::from_json(&gpt2, None, "m/config.json").unwrap_err();
        assert!(
            matches!(e, ConfigError::UnsupportedArchitecture { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");

        let no_dim = format!("{}}}", MIN.replace("\"hidden_size\":64,", ""));
        let e = Config::from_json(&no_dim, None, "m/config.json").unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");

        for bad in [
            r#","num_key_value_heads":3"#,
            r#","num_key_value_heads":0"#,
            r#","hidden_act":"gelu""#,
            r#","head_dim":-1"#,
            r#","head_dim":7"#,
            r#","rms_norm_eps":"x""#,
            r#","rope_scaling":{"rope_type":"yarn","factor":4}"#,
            r#","rope_scaling":{"rope_type":"llama3","factor":8}"#,
            r#","eos_token_id":-1"#,
            r#","eos_token_id":4294967296"#,
            r#","mlp_bias":true"#,
        ] {
            let e = Config::from_json(&with(bad), None, "m/config.json");
            assert!(e.is_err(), "{bad} accepted");
        }
        let big = MIN.replace("\"num_hidden_layers\":2", "\"num_hidden_layers\":100000");
        assert!(Config::from_json(&format!("{big}}}"), None, "m").is_err());
        let e = Config::from_json(&with(""), Some("nope"), "d/config.json").unwrap_err();
        assert!(e.to_string().contains("d/generation_config.json"), "{e}");
    }
}
