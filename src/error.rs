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
    /// A model refused as a whole (a tensor tpi does not read).
    Model(crate::model::ModelError),
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
    /// A cluster session that ended earlier (why) was asked to generate.
    SessionEnded(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "config: {e}"),
            Error::SafeTensors(e) => write!(f, "weights: {e}"),
            Error::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Error::Model(e) => write!(f, "{e}"),
            Error::Net(e) => write!(f, "network: {e}"),
            Error::SessionEnded(why) => write!(f, "the cluster session has ended: {why}"),
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
    /// The lines `tpi-run` prints for this error: the error, then each
    /// cause that adds something (each error's text already includes its
    /// cause's, so a cause it repeats is left out).
    pub fn chain(&self) -> Vec<String> {
        let mut lines = vec![self.to_string()];
        let mut shown = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            let text = s.to_string();
            if !shown.contains(&text) {
                lines.push(text.clone());
                shown = text;
            }
            src = s.source();
        }
        lines
    }

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
            Error::Model(e) => e.source(),
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
            e @ (M::UnknownTensor { .. } | M::Gguf(_) | M::Tensor { .. }) => Error::Model(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::testutil::{copy_with, stories_slice, TempDir};

    fn printed(e: &Error) -> String {
        e.chain().join("\n  caused by: ")
    }

    #[test]
    fn a_corrupted_slice_block_is_named_by_file_rank_and_layer() {
        let tmp = TempDir::new("chain");
        let (_, _, path) = stories_slice(&tmp, 2, 1);
        let slice = crate::split::reader::SliceFile::open(&path, Default::default()).unwrap();
        let layer1 = slice.layer_block(1).unwrap().offset as usize;
        drop(slice);
        let bad = tmp.0.join("bad.slice");
        copy_with(&path, &bad, |b| b[layer1 + 100] ^= 1);
        let slice = crate::split::reader::SliceFile::open(&bad, Default::default()).unwrap();
        let e: Error = slice.verify().unwrap_err().into();
        let text = printed(&e);
        for want in [bad.display().to_string(), "rank 1".into(), "layer 1".into()] {
            assert!(text.contains(&want), "{want:?} missing from: {text}");
        }
    }

    #[test]
    fn a_plan_that_cannot_be_made_says_why() {
        let shape = crate::split::plan::Shape {
            dim: 64,
            hidden_dim: 128,
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 8,
            vocab_size: 100,
            n_layers: 2,
        };
        let e: Error = crate::split::plan::split(&shape, 9, None)
            .unwrap_err()
            .into();
        assert!(e.is_usage());
        let text = printed(&e);
        assert!(text.contains("split plan") && text.contains('9'), "{text}");
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_window_that_cannot_be_allocated_is_an_error_naming_the_slice_and_size() {
        // Two slots of 64 TiB: more than any address space, so the
        // allocation fails with any overcommit setting; an error, no abort.
        let tmp = TempDir::new("alloc");
        let file = tmp.0.join("blocks");
        std::fs::write(&file, [0u8; 4096]).unwrap();
        let big = 1u64 << 46;
        let blocks = vec![(0, big), (big, big), (2 * big, big)];
        let f = std::fs::File::open(&file).unwrap();
        let w = crate::window::Window::start(f, blocks, 2, Default::default());
        let source = match w {
            Err(e) => e,
            Ok(_) => panic!("a 128 TiB ring was allocated"),
        };
        assert!(
            matches!(source, crate::window::WindowError::Alloc { .. }),
            "{source}"
        );
        let e: Error = crate::split::SliceError::Window {
            path: file.display().to_string(),
            what: "layer 0".into(),
            source,
        }
        .into();
        let text = printed(&e);
        for want in [
            file.display().to_string(),
            "layer 0".into(),
            "2 slots of 64.0 TiB".into(),
        ] {
            assert!(text.contains(&want), "{want:?} missing from: {text}");
        }
    }
}
