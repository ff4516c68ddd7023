//! tpi: tensor-parallel LLM inference on low-resource edge devices.
//!
//! Data flow (see README "Design"): `config` + `safetensors` + `tokenizer`
//! load a HuggingFace model directory; `plan` splits every layer across
//! ranks; `model` runs one rank's forward pass on the `tpi-kernels`; `engine`
//! drives generation; `net` carries the allreduce between ranks.
#![deny(unsafe_code)]

pub mod config;
pub mod net;
pub mod plan;
pub mod safetensors;
pub mod tokenizer;
