//! Temporary: old path of `split::{cache, digest}`, kept until every caller
//! uses the new ones.

pub use crate::split::cache::*;
pub use crate::split::digest::{hash_file, lookup_digest, store_digest, DIGESTS, RACY_NS};
