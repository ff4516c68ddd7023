//! One rank's computation, the same on every rank: the forward pass over
//! its slice (`forward`), the exchanges with the other ranks behind the
//! [`Collective`] trait ([`collective`]), multi-threaded GEMV ([`par`]),
//! and, on rank 0, generation (`generate`: prefill, sampling, the KV
//! cache's context) with the [`sampler`].
//!
//! The engine reads weights through `crate::weights` and knows nothing of
//! sockets: the network implements [`Collective`] above it.

pub mod collective;
pub mod error;
pub mod forward;
pub mod generate;
pub mod par;
pub mod sampler;

pub use collective::{Collective, CommError, Op, Solo, Step};
pub use error::EngineError;
pub use forward::{forward, State, Timing};
pub use generate::{
    check_context, follow, generate, generate_in, peak_rss_bytes, Context, Finish, Flow,
    GenOptions, GenOutput, OnText, Rank, PREFILL_BATCH,
};
pub use par::Par;
pub use sampler::{Sampler, SamplerConfig};
