//! What can be wrong with a model's `config.json` or
//! `generation_config.json` ([`ConfigError`]), each variant naming the file.

use std::fmt;

/// Errors while reading a model configuration. Every variant names the file.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file is larger than any sane config.
    TooLarge { path: String, len: u64, max: u64 },
    /// Not valid JSON (or not a JSON object).
    Json { path: String, msg: String },
    /// A required key is absent (or null).
    MissingKey { path: String, key: String },
    /// A key has the wrong type or an out-of-range value.
    InvalidValue {
        path: String,
        key: String,
        msg: String,
    },
    /// The architecture is not one tpi implements.
    UnsupportedArchitecture { path: String, arch: String },
    /// A feature of a supported architecture that tpi does not implement.
    Unsupported { path: String, what: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, source } => write!(f, "{path}: cannot read: {source}"),
            ConfigError::TooLarge { path, len, max } => {
                write!(
                    f,
                    "{path}: file is {len} bytes, more than the {max} allowed for a config"
                )
            }
            ConfigError::Json { path, msg } => write!(f, "{path}: invalid JSON: {msg}"),
            ConfigError::MissingKey { path, key } => write!(f, "{path}: missing key `{key}`"),
            ConfigError::InvalidValue { path, key, msg } => {
                write!(f, "{path}: invalid value for `{key}`: {msg}")
            }
            ConfigError::UnsupportedArchitecture { path, arch } => write!(
                f,
                "{path}: unsupported architecture `{arch}` (supported: LlamaForCausalLM, \
                 MistralForCausalLM without sliding window, Qwen2ForCausalLM)"
            ),
            ConfigError::Unsupported { path, what } => write!(f, "{path}: unsupported: {what}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
