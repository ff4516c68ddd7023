//! Splitting a model into per-rank slice files: what a slice file is, and
//! how it is made, read and cached.
//!
//! A *slice file* holds one rank's share of every layer of a model under a
//! split [`plan`], kernel-ready (matrices in their stored dtype, o_proj and
//! down_proj columns gathered into contiguous rows), so a worker with no
//! model directory can run from it alone. It carries the model's
//! config.json, the model fingerprint and the plan hash, so a stale or
//! foreign file is refused by name.
//!
//! - [`plan`]: which slice of every layer each rank holds (a pure function
//!   of the model shape, the world size and per-rank weights).
//! - [`manifest`]: the on-disk format (layout, limits, the manifest codec
//!   through the bounded [`crate::codec::cursor::Cursor`]) and the blocks
//!   and tensors a config and a rank's slice require.
//! - [`writer`]: cutting a slice from the mmapped safetensors, streamed one
//!   tensor at a time (RAM never O(model)), written to `.partial`, fsynced,
//!   renamed into place.
//! - [`reader`]: [`reader::SliceFile`] opens and validates a file step by
//!   step (preamble, manifest, expectations, block layout), verifies block
//!   checksums and hands out layer matrices from block bytes. The weights
//!   the forward reads from it are [`crate::weights::sliced`].
//! - [`cache`]: the cache directory: where a rank's slice lives
//!   ([`cache::slice_path`]), the cached-or-cut decision
//!   ([`cache::ensure_slices`]), entry records, list and prune.
//! - [`digest`]: model identity: the fingerprint over config texts and
//!   every shard's bytes, and the digest cache that spares re-hashing.
//! - [`error`]: [`SliceError`], naming file, rank, block and offset.

pub mod cache;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod plan;
pub mod reader;
pub mod writer;

#[cfg(test)]
pub(crate) mod testutil;

pub use error::SliceError;
