//! The one bounded little-endian reader for outside bytes: wire payloads
//! (`net::msg`) and slice manifests (`split::manifest`) decode through a
//! [`Cursor`] that cannot over-read; every read names its field, so an
//! error says which field was short, too long or not UTF-8.

use std::fmt;

/// Payload decode/encode errors, naming the field and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes left than the field needs.
    Truncated {
        field: &'static str,
        need: usize,
        have: usize,
    },
    /// Bytes left after the last field.
    Trailing { extra: usize },
    /// A count or length above its constant maximum.
    TooLong {
        field: &'static str,
        len: u64,
        max: u64,
    },
    /// Reason text is not UTF-8.
    NotUtf8 { field: &'static str },
    /// Undefined flag bits set.
    UnknownFlags {
        field: &'static str,
        flags: u32,
        known: u32,
    },
    /// A field value outside its allowed range.
    Invalid {
        field: &'static str,
        value: u64,
        why: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { field, need, have } => {
                write!(f, "message: {field} needs {need} bytes, {have} left")
            }
            DecodeError::Trailing { extra } => write!(f, "message: {extra} trailing bytes"),
            DecodeError::TooLong { field, len, max } => {
                write!(f, "message: {field} is {len}, maximum {max}")
            }
            DecodeError::NotUtf8 { field } => write!(f, "message: {field} is not valid UTF-8"),
            DecodeError::UnknownFlags {
                field,
                flags,
                known,
            } => {
                write!(f, "message: {field} {flags:#x} has bits outside {known:#x}")
            }
            DecodeError::Invalid { field, value, why } => {
                write!(f, "message: {field} = {value}: {why}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Bounded little-endian reader over a payload.
#[derive(Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or `Truncated` naming `field`.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let have = self.remaining();
        if n > have {
            return Err(DecodeError::Truncated {
                field,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N, field)?);
        Ok(a)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing { extra }),
        }
    }
}
