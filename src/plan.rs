//! Temporary: old path of `split::plan`, kept until every caller uses the
//! new one.

pub use crate::split::plan::*;
