//! Why a model could not be opened: its config, its weights or its
//! tokenizer, each error naming the file.

use super::config::ConfigError;
use super::gguf_model::GgufModelError;
use super::safetensors::SafeTensorsError;
use super::tokenizer::TokenizerError;
use std::fmt;

#[derive(Debug)]
pub enum ModelError {
    Config(ConfigError),
    SafeTensors(SafeTensorsError),
    Tokenizer(TokenizerError),
    /// A GGUF file that is not a model tpi runs.
    Gguf(GgufModelError),
    /// A tensor that is missing or not what its model says.
    Tensor {
        name: String,
        origin: String,
        msg: String,
    },
    /// A tensor tpi does not read (e.g. an `o_proj.bias`): running without
    /// it would compute another model, so the model is refused.
    UnknownTensor {
        name: String,
        origin: String,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Config(e) => write!(f, "config: {e}"),
            ModelError::SafeTensors(e) => write!(f, "weights: {e}"),
            ModelError::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            ModelError::Gguf(e) => write!(f, "GGUF model: {e}"),
            ModelError::Tensor { name, origin, msg } => {
                write!(f, "weights: {origin}: tensor {name}: {msg}")
            }
            ModelError::UnknownTensor { name, origin } => write!(
                f,
                "weights: {origin}: tensor {name} is not one tpi reads for this config \
                 (without it the model would compute something else)"
            ),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Config(e) => Some(e),
            ModelError::SafeTensors(e) => Some(e),
            ModelError::Tokenizer(e) => Some(e),
            ModelError::Gguf(e) => Some(e),
            ModelError::UnknownTensor { .. } | ModelError::Tensor { .. } => None,
        }
    }
}

impl From<ConfigError> for ModelError {
    fn from(e: ConfigError) -> Self {
        ModelError::Config(e)
    }
}

impl From<SafeTensorsError> for ModelError {
    fn from(e: SafeTensorsError) -> Self {
        ModelError::SafeTensors(e)
    }
}

impl From<TokenizerError> for ModelError {
    fn from(e: TokenizerError) -> Self {
        ModelError::Tokenizer(e)
    }
}

impl From<GgufModelError> for ModelError {
    fn from(e: GgufModelError) -> Self {
        ModelError::Gguf(e)
    }
}
