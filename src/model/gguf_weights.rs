//! A GGUF model opened to run: its header ([`Gguf`]), its meaning
//! ([`GgufModel`]), every part mapped read-only ([`ModelFiles`]), and the
//! config as the HF-style JSON a slice manifest carries. Llama 3's
//! `rope_freqs.weight` is read here (the one tensor whose values shape the
//! config) and becomes the config's [`RopeScaling::Divisors`].

use std::path::Path;

use serde_json::{json, Value as Json};

use super::config::{Config, RopeScaling};
use super::files::ModelFiles;
use super::gguf::{Gguf, GgufError, TensorInfo};
use super::gguf_model::{config_json, map_tensors, rope_inv_freq, GgufModel, GgufModelError};

/// A GGUF model with its files mapped.
pub struct GgufWeights {
    pub gguf: Gguf,
    pub model: GgufModel,
    files: ModelFiles,
    /// The config as `config.json` text (checked by [`Config::from_json`]).
    config_json: String,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWeights")
            .field("files", &self.files.names())
            .field("tensors", &self.model.tensors.len())
            .finish()
    }
}

impl GgufWeights {
    /// Opens the GGUF model at `path` (part 1 of a split model finds the
    /// others), maps its files and resolves its config and tensors.
    pub fn open(path: &Path) -> Result<GgufWeights, GgufModelError> {
        let gguf = Gguf::open(path)?;
        let mut files = ModelFiles::default();
        for f in gguf.files() {
            files.map(&f.path).map_err(|source| GgufError::Io {
                path: f.path.display().to_string(),
                source,
            })?;
        }
        let (mut config, mut obj) = config_json(&gguf)?;
        let (tensors, rope_freqs) = map_tensors(&gguf, &config)?;
        let origin = gguf.file_name(0).to_string();
        if let Some(t) = &rope_freqs {
            let bytes = tensor_bytes(&files, t)?;
            // Checks the divisors (positive, finite results) ...
            let inv = rope_inv_freq(&config, bytes, &origin)?;
            // ... stored exactly (f32 -> f64 -> f32) so that the config
            // alone gives the same frequencies.
            let divisors: Vec<f64> = super::dtype::widen(super::dtype::Dtype::F32, bytes)
                .into_iter()
                .map(f64::from)
                .collect();
            obj.insert(
                "rope_scaling".into(),
                json!({"rope_type": "freq_divisors", "divisors": divisors}),
            );
            let text = Json::Object(obj.clone()).to_string();
            config = Config::from_json(&text, None, &origin).map_err(GgufModelError::Config)?;
            if config.rope_inv_freq() != inv {
                return Err(GgufModelError::RopeFreqs {
                    origin,
                    msg: "divisors do not survive the config round trip".into(),
                });
            }
        }
        debug_assert!(matches!(
            (&rope_freqs, &config.rope_scaling),
            (Some(_), RopeScaling::Divisors(_)) | (None, _)
        ));
        let config_json = Json::Object(obj).to_string();
        let model = GgufModel {
            config,
            tensors,
            rope_freqs,
        };
        Ok(GgufWeights {
            gguf,
            model,
            files,
            config_json,
        })
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    /// The config as `config.json` text.
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// A tensor's bytes in its mapped file.
    pub fn bytes(&self, t: &TensorInfo) -> Result<&[u8], GgufModelError> {
        tensor_bytes(&self.files, t)
    }
}

/// `t`'s bytes in `files`; an error naming it when they are not all there
/// (a file that shrank after its header was read).
fn tensor_bytes<'a>(files: &'a ModelFiles, t: &TensorInfo) -> Result<&'a [u8], GgufModelError> {
    files.range(t.file, t.offset, t.len).ok_or_else(|| {
        GgufModelError::Gguf(GgufError::OutOfBounds {
            origin: files.name(t.file).to_string(),
            tensor: t.name.clone(),
            begin: t.offset,
            end: t.offset.checked_add(t.len),
            file_len: files.bytes(t.file).len() as u64,
        })
    })
}
