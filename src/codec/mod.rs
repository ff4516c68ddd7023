//! Byte-level building blocks shared by every format tpi reads from
//! outside (wire frames, slice files): a bounded reader ([`cursor`]) and
//! the XXH64-based checksums ([`checksum`]). Nothing here knows a format.

pub mod checksum;
pub mod cursor;
