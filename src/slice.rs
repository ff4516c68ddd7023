//! Temporary: old paths of `split::{manifest, writer, reader, digest, cache}`
//! and `weights::sliced`, kept until every caller uses the new ones.

pub use crate::split::cache::{ensure_slices, slice_path};
pub use crate::split::digest::fingerprint;
pub use crate::split::error::SliceError;
pub use crate::split::manifest::*;
pub use crate::split::reader::{Expect, SliceFile};
pub use crate::split::writer::write_slice;
pub use crate::sys::WRITE_BUF;
pub use crate::weights::sliced::{LmPart, SliceResident};
