//! tpi: tensor-parallel LLM inference on low-resource edge devices.
//!
//! Every rank holds a slice of every layer; the partial sums of each layer
//! meet in a star allreduce over TCP; a memory window streams layer blocks
//! from the rank's slice file so peak memory follows the window, not the
//! depth.
//!
//! # One token's data flow
//!
//! ```text
//! cli        tpi-run flags -> a session; prints what it reports
//! serve      HTTP request -> prompt ids -> queue -> the engine thread's Generator
//! session    hub: Step{ids, pos} to every worker; worker: engine::follow
//! engine     x = embed(id); for each layer l:
//!              weights.acquire(l)            (window: read ahead by its I/O thread)
//!              q,k,v of my heads, RoPE, attention over my KV cache, o_proj
//!              comm.allreduce_sum(x, l, Attention)   -> net (star: workers -> hub -> workers)
//!              silu(gate)*up of my columns, down_proj; weights.release(l)
//!              comm.allreduce_sum(x, l, Mlp)
//!            lm_head rows of my vocab slice -> comm.gather_logits -> rank 0 samples
//! weights    Mat views of the mmapped safetensors (one rank) or of slice blocks
//! split      the plan (who holds which heads, columns, vocab rows) and the
//!            slice files cut from the model, cached by fingerprint and plan
//! model      config.json, safetensors, tokenizer.json, as read from disk
//! ```
//!
//! # Modules, in the order data flows (each imports only earlier ones;
//! `tests/layers.rs` checks it)
//!
//! | module | holds |
//! |---|---|
//! | [`sys`] | the operating system, once: the audited mmap, aligned and huge-page buffers, large aligned writes, `O_DIRECT`, `/proc` readers |
//! | [`codec`] | the one bounded little-endian reader and the XXH64 checksums, for every outside format |
//! | [`progress`] | how the library reports bytes done, notes and warnings without printing |
//! | [`model`] | a HuggingFace model: config, dtypes, tensor names, safetensors shards, tokenizer, the bundled demo |
//! | [`window`] | generic I/O: byte ranges of one file streamed through a ring of W slots (pread, `O_DIRECT` or mapped), and the policy choosing W and the reads |
//! | [`split`] | the split plan, the slice file format (manifest, writer, reader), the slice cache and the model fingerprint |
//! | [`weights`] | what the forward reads: matrices in their stored dtype, resident vectors, in place or from a slice (resident or windowed) |
//! | [`engine`] | one rank's forward, its KV cache and activations, multi-threaded GEMV, the collective trait, generation and sampling |
//! | [`net`] | the wire protocol (its spec and limits), links, authentication, joining, slice transfer, both sides of the allreduce |
//! | [`session`] | what one process does: a single rank, rank 0 of a cluster, a worker |
//! | [`error`] | the crate's error: each area's error kept whole, with `source()` |
//! | [`ui`] | how the binary shows notes and progress on stderr |
//! | [`serve`] | `tpi-run serve`: the loaded model behind an OpenAI-compatible HTTP/1.1 API (limits, queue, one engine thread) and a chat page |
//! | [`cli`] | `tpi-run`'s flags, their checks, the cache commands and what it prints |
#![deny(unsafe_code)]

pub mod cli;
pub mod codec;
pub mod engine;
pub mod error;
pub mod model;
pub mod net;
pub mod progress;
pub mod serve;
pub mod session;
pub mod split;
pub mod sys;
pub mod ui;
pub mod weights;
pub mod window;

pub use error::{Error, Result};
