//! A HuggingFace model as tpi reads it: `config.json` resolved to the
//! dimensions tpi computes with ([`config`]), the safetensors shards mapped
//! in place ([`safetensors`], element types in [`dtype`], tensor names in
//! [`names`]), `tokenizer.json` ([`tokenizer`]), all opened together by
//! [`checkpoint`]; [`bundled`] is the demo model built into the binary.
//! Everything here only reads: splitting comes next, in `crate::split`.

pub mod bundled;
/// A model's Jinja chat template rendered as HF transformers renders it.
pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod config_error;
pub mod dtype;
pub mod error;
/// A model's files, mapped, with their identities and digests.
pub mod files;
/// GGUF files (llama.cpp's format): the header parser, read-only.
pub mod gguf;
/// A GGUF file as a tpi model: config, tensor roles, q/k row order.
pub mod gguf_model;
/// A tokenizer from GGUF `tokenizer.ggml.*` metadata.
pub mod gguf_vocab;
/// A GGUF model opened to run: header, meaning and mapped files.
pub mod gguf_weights;
pub mod names;
/// What a tensor is (q, k, ..., lm_head).
pub mod role;
pub mod safetensors;
/// Tensors by role from safetensors or GGUF, as the split reads them.
pub mod source;
/// llama.cpp's SentencePiece encoder, for "llama" GGUF vocabularies.
pub mod spm;
pub mod tokenizer;
/// What can be wrong with a GGUF tokenizer vocabulary.
pub mod vocab_error;

pub use checkpoint::Checkpoint;
pub use config::Config;
pub use dtype::Dtype;
pub use error::ModelError;
