//! Temporary: old path of `weights::in_place`, kept until every caller uses
//! the new one.

pub use crate::weights::in_place::*;
