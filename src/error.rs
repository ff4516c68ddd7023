//! The engine's error type: each area's error, with what and where.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A flag (or flag combination) that cannot be run as given.
#[derive(Debug)]
pub struct UsageError {
    pub flag: &'static str,
    pub problem: String,
}

#[derive(Debug)]
pub enum Error {
    Config(crate::model::config::ConfigError),
    SafeTensors(crate::model::safetensors::SafeTensorsError),
    Tokenizer(crate::model::tokenizer::TokenizerError),
    Net(crate::net::NetError),
    /// Writing, opening or reading a slice file.
    Slice(crate::split::SliceError),
    /// No split plan for this model and world size (or weights).
    Plan(crate::split::plan::PlanError),
    /// Bad command-line usage.
    Usage(UsageError),
    /// Opening a rank's weights.
    Weights(crate::weights::WeightsError),
    /// Generation (prompt, context, weights, exchanges, values).
    Engine(crate::engine::EngineError),
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
            Error::Usage(u) => write!(f, "usage: {}: {}", u.flag, u.problem),
            Error::Plan(e) => write!(f, "split plan: {e}"),
            Error::Engine(e) => write!(f, "{e}"),
            Error::Weights(e) => write!(f, "weights: {e}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Cache { dir, source } => write!(f, "slice cache {dir}: {source}"),
        }
    }
}

impl Error {
    /// Whether the user asked for something impossible (exit status 2),
    /// rather than something failing on the way (1).
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Usage(_) | Error::Plan(_) => true,
            Error::Engine(e) => e.is_usage(),
            _ => false,
        }
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
            Error::Plan(e) => Some(e),
            Error::Engine(e) => e.source(),
            Error::Weights(e) => e.source(),
            Error::Net(e) => Some(e),
            Error::Slice(e) => Some(e),
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

impl From<crate::engine::EngineError> for Error {
    fn from(e: crate::engine::EngineError) -> Self {
        Error::Engine(e)
    }
}

impl From<crate::model::ModelError> for Error {
    fn from(e: crate::model::ModelError) -> Self {
        use crate::model::ModelError as M;
        match e {
            M::Config(e) => Error::Config(e),
            M::SafeTensors(e) => Error::SafeTensors(e),
            M::Tokenizer(e) => Error::Tokenizer(e),
        }
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

impl From<crate::weights::WeightsError> for Error {
    fn from(e: crate::weights::WeightsError) -> Self {
        Error::Weights(e)
    }
}
