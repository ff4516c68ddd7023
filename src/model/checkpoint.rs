//! A model directory (or the bundled model) opened: config, weights, tokenizer.

use super::bundled;
use super::config::Config;
use super::error::ModelError;
use super::safetensors::SafeTensors;
use super::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// An opened HuggingFace model.
pub struct Checkpoint {
    pub config: Config,
    pub weights: SafeTensors,
    /// Absent when the directory has no tokenizer.json (ids-only use).
    pub tokenizer: Option<Tokenizer>,
    /// Where it came from, for messages.
    pub origin: String,
}

impl Checkpoint {
    /// Opens `dir`, or the bundled demo model when `dir` is `None`.
    pub fn open(dir: Option<&Path>) -> Result<Checkpoint, ModelError> {
        match dir {
            Some(dir) => Checkpoint::open_dir(dir),
            None => Checkpoint::bundled(),
        }
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
            weights,
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
            weights,
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
