//! tpi: tensor-parallel LLM inference on low-resource edge devices.
//!
//! Data flow (see README "Design"): `checkpoint` opens a HuggingFace model
//! (`config`, `safetensors`, `tokenizer`); `plan` splits every layer across
//! ranks; `model` runs one rank's forward pass on the `tpi-kernels` with
//! `par` threads; `engine` drives generation; `net` carries the allreduce
//! between ranks.
#![deny(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod codec;
pub mod engine;
pub mod error;
pub mod load;
pub mod model;
pub mod net;
pub mod plan;
pub mod progress;
pub mod session;
pub mod slice;
pub mod ui;
pub mod weights;
pub mod window;

pub use error::{Error, Result};
