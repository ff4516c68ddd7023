//! The engine's error type: each area's error, with what and where.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    Config(crate::model::config::ConfigError),
    SafeTensors(crate::model::safetensors::SafeTensorsError),
    Tokenizer(crate::model::tokenizer::TokenizerError),
    Net(crate::net::NetError),
    /// Writing, opening or reading a slice file.
    Slice(crate::split::SliceError),
    /// A split plan that cannot be made.
    Plan(crate::split::plan::PlanError),
    /// A model whose tensors do not fit its config, or a step out of range.
    Model(String),
    /// Bad command-line usage.
    Usage(String),
    /// A prompt plus the tokens to generate run past the model's context.
    Context {
        prompt: usize,
        length: usize,
        limit: usize,
    },
    /// NaN or infinity in the activations (`stage`: a layer's output, the
    /// logits) at a prompt or generated position.
    NonFinite {
        stage: String,
        pos: usize,
    },
    /// A buffer sized by the run (the KV cache) that cannot be had.
    Memory {
        what: String,
        bytes: u64,
    },
    /// Listing or pruning the slice cache in `dir`.
    Cache {
        dir: String,
        source: crate::split::cache::CacheError,
    },
    /// An I/O error on a named file.
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "config: {e}"),
            Error::SafeTensors(e) => write!(f, "weights: {e}"),
            Error::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Error::Net(e) => write!(f, "network: {e}"),
            Error::Slice(e) => write!(f, "model: {e}"),
            Error::Plan(e) => write!(f, "plan: {e}"),
            Error::Model(m) => write!(f, "model: {m}"),
            Error::Usage(m) => write!(f, "usage: {m}"),
            Error::Context {
                prompt,
                length,
                limit,
            } => write!(
                f,
                "the prompt ({prompt} tokens) plus {length} tokens to generate is {} positions, beyond the model's context of {limit} (max_position_embeddings); generate at most {} tokens",
                prompt.saturating_add(*length),
                limit.saturating_sub(*prompt)
            ),
            Error::NonFinite { stage, pos } => write!(
                f,
                "non-finite values (NaN or infinity) in {stage} at position {pos}: the weights hold NaN/inf or the activations overflowed"
            ),
            Error::Memory { what, bytes } => write!(
                f,
                "{what} needs {} and cannot be allocated",
                crate::progress::human_bytes(*bytes as f64)
            ),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Cache { dir, source } => write!(f, "slice cache {dir}: {source}"),
        }
    }
}

impl Error {
    /// Whether the user asked for something impossible (exit status 2),
    /// rather than something failing on the way (1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Usage(_) | Error::Context { .. } | Error::Plan(_)
        )
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::SafeTensors(e) => Some(e),
            Error::Tokenizer(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            Error::Cache { source, .. } => Some(source),
            Error::Net(e) => Some(e),
            Error::Slice(e) => Some(e),
            Error::Plan(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::model::config::ConfigError> for Error {
    fn from(e: crate::model::config::ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<crate::model::safetensors::SafeTensorsError> for Error {
    fn from(e: crate::model::safetensors::SafeTensorsError) -> Self {
        Error::SafeTensors(e)
    }
}

impl From<crate::model::tokenizer::TokenizerError> for Error {
    fn from(e: crate::model::tokenizer::TokenizerError) -> Self {
        Error::Tokenizer(e)
    }
}

impl From<crate::net::NetError> for Error {
    fn from(e: crate::net::NetError) -> Self {
        Error::Net(e)
    }
}

impl From<crate::split::SliceError> for Error {
    fn from(e: crate::split::SliceError) -> Self {
        Error::Slice(e)
    }
}

impl From<crate::split::plan::PlanError> for Error {
    fn from(e: crate::split::plan::PlanError) -> Self {
        Error::Plan(e)
    }
}
