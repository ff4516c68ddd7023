//! A model opened: an HF directory, a GGUF file or the bundled model, as
//! config, weights and tokenizer.

use super::bundled;
use super::config::Config;
use super::error::ModelError;
use super::gguf_weights::GgufWeights;
use super::safetensors::SafeTensors;
use super::source::Weights;
use super::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// An opened model.
pub struct Checkpoint {
    pub config: Config,
    pub weights: Weights,
    /// Absent when the directory has no tokenizer.json (ids-only use).
    pub tokenizer: Option<Tokenizer>,
    /// Where it came from, for messages.
    pub origin: String,
}

impl Checkpoint {
    /// Opens `path`: a GGUF file (part 1 of a split model) when it is a
    /// file, else an HF directory; the bundled demo model when `None`.
    pub fn open(path: Option<&Path>) -> Result<Checkpoint, ModelError> {
        match path {
            Some(p) if p.is_file() => Checkpoint::open_gguf(p),
            Some(dir) => Checkpoint::open_dir(dir),
            None => Checkpoint::bundled(),
        }
    }

    /// Opens a GGUF model: config from its metadata, tokenizer from its
    /// `tokenizer.ggml.*` keys (none when it has no `tokenizer.ggml.model`).
    pub fn open_gguf(path: &Path) -> Result<Checkpoint, ModelError> {
        let g = GgufWeights::open(path)?;
        let origin = path.display().to_string();
        let tokenizer = match super::gguf_model::vocab(&g.gguf)? {
            Some(v) => Some(Tokenizer::from_gguf_vocab(&v, &origin)?),
            None => None,
        };
        Ok(Checkpoint {
            config: g.config().clone(),
            weights: Weights::Gguf(Box::new(g)),
            tokenizer,
            origin,
        })
    }

    /// The weights as safetensors, or an error naming the GGUF model (for
    /// what reads safetensors in place).
    pub fn safetensors(&self) -> Result<&SafeTensors, ModelError> {
        self.weights
            .safetensors()
            .ok_or_else(|| ModelError::Tensor {
                name: "*".into(),
                origin: self.origin.clone(),
                msg: "a GGUF model is read from slice files, not in place".into(),
            })
    }

    pub fn open_dir(dir: &Path) -> Result<Checkpoint, ModelError> {
        let config = Config::from_dir(dir)?;
        let weights = SafeTensors::open_dir(dir)?;
        let tok_path: PathBuf = dir.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            Some(Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        let origin = dir.display().to_string();
        check_tensors(&config, &weights, &origin)?;
        Ok(Checkpoint {
            config,
            weights: Weights::SafeTensors(weights),
            tokenizer,
            origin,
        })
    }

    pub fn bundled() -> Result<Checkpoint, ModelError> {
        let config = Config::from_json(
            bundled::CONFIG,
            Some(bundled::GENERATION_CONFIG),
            bundled::NAME,
        )?;
        let weights = SafeTensors::from_bytes(bundled::WEIGHTS, bundled::NAME)?;
        let tokenizer = Some(Tokenizer::from_bytes(bundled::TOKENIZER, bundled::NAME)?);
        check_tensors(&config, &weights, bundled::NAME)?;
        Ok(Checkpoint {
            config,
            weights: Weights::SafeTensors(weights),
            tokenizer,
            origin: bundled::NAME.to_string(),
        })
    }
}

/// Every tensor of the weights must be one tpi reads (`names::is_read`):
/// an unread bias or norm would silently give another model's outputs.
/// The first such name, in name order, is the error.
fn check_tensors(config: &Config, weights: &SafeTensors, origin: &str) -> Result<(), ModelError> {
    let mut unread: Vec<&str> = weights
        .tensors()
        .map(|t| t.name.as_str())
        .filter(|n| !super::names::is_read(config, n))
        .collect();
    unread.sort_unstable();
    match unread.first() {
        Some(name) => Err(ModelError::UnknownTensor {
            name: name.to_string(),
            origin: origin.to_string(),
        }),
        None => Ok(()),
    }
}
