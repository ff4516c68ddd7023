//! tpi: tensor-parallel LLM inference on low-resource edge devices.
//!
//! Data flow (see README "Design"): `model` opens a HuggingFace model
//! (`config`, `safetensors`, `tokenizer`); `split` plans every layer across
//! ranks and cuts, reads and caches per-rank slice files; `window` streams
//! layer blocks and `weights` is what the forward reads; `engine` runs a
//! rank's forward on the `tpi-kernels` and drives generation; `net` carries
//! the allreduce between ranks. `sys` is the operating system, once.
//!
//! `cache`, `load`, `plan` and `slice` are temporary re-exports of old paths.
#![deny(unsafe_code)]

pub mod cli;
pub mod codec;
pub mod engine;
pub mod error;
pub mod model;
pub mod net;
pub mod progress;
pub mod session;
pub mod split;
pub mod sys;
pub mod ui;
pub mod weights;
pub mod window;

pub use error::{Error, Result};
