//! Typed payloads (spec M1..M5 in [`crate::net`]). Decoding goes through a
//! bounded [`Cursor`]: every read is length-checked, integers are
//! little-endian, counts are checked against constant maxima before any
//! allocation, and trailing bytes are an error.

use super::wire::WireDtype;
use super::{MAX_MESSAGE, MAX_PAYLOAD};
/// Payload errors are the codec's (the same bounded reader decodes slice
/// manifests).
pub use crate::codec::cursor::{Cursor, DecodeError as MsgError};

/// The payload limits (spec M2, M3), defined with the spec.
pub use super::{MAX_REASON, MAX_STEP_IDS};
/// Step flag bit 0: the hub wants logits after this step.
pub const STEP_WANT_LOGITS: u32 = 1;
/// Step flag bit 1: this step is (part of) the prompt prefill.
pub const STEP_PREFILL: u32 = 2;
/// All defined step flags; others must be 0 (spec M3).
pub const STEP_KNOWN_FLAGS: u32 = STEP_WANT_LOGITS | STEP_PREFILL;
/// Encoded size of [`Hello`] (spec M1).
pub const HELLO_LEN: usize = 2 + 2 + 2 + 8 + 8 + 1 + 32;
/// Encoded size of [`FileRequest`] (spec M4).
pub const FILE_REQUEST_LEN: usize = 16;

/// Handshake: worker -> hub (`Hello`), hub -> worker (`HelloAck`, same
/// layout, nonce echoed). Spec M1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u16,
    pub world_size: u16,
    pub rank: u16,
    pub model_fingerprint: u64,
    pub plan_hash: u64,
    /// Allreduce payload type (spec W1): in a HelloAck rank 0's; in a
    /// Hello the one the worker was started with, `None` to follow rank 0.
    pub wire_dtype: Option<WireDtype>,
    pub nonce: [u8; 32],
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..2].copy_from_slice(&self.protocol_version.to_le_bytes());
        b[2..4].copy_from_slice(&self.world_size.to_le_bytes());
        b[4..6].copy_from_slice(&self.rank.to_le_bytes());
        b[6..14].copy_from_slice(&self.model_fingerprint.to_le_bytes());
        b[14..22].copy_from_slice(&self.plan_hash.to_le_bytes());
        b[22] = self.wire_dtype.map_or(0, WireDtype::code);
        b[23..55].copy_from_slice(&self.nonce);
        b
    }

    pub fn decode(payload: &[u8]) -> Result<Hello, MsgError> {
        let mut c = Cursor::new(payload);
        let h = Hello {
            protocol_version: c.u16("hello.protocol_version")?,
            world_size: c.u16("hello.world_size")?,
            rank: c.u16("hello.rank")?,
            model_fingerprint: c.u64("hello.model_fingerprint")?,
            plan_hash: c.u64("hello.plan_hash")?,
            wire_dtype: match c.u8("hello.wire_dtype")? {
                0 => None,
                // spec M1: 0 (not stated), 1 f32, 2 f16, 3 q8_0.
                code => Some(WireDtype::from_code(code).ok_or(MsgError::Invalid {
                    field: "hello.wire_dtype",
                    value: u64::from(code),
                    why: "must be 0 (not stated), 1 f32, 2 f16 or 3 q8_0",
                })?),
            },
            nonce: c.array("hello.nonce")?,
        };
        // spec M1: exactly HELLO_LEN bytes.
        c.finish()?;
        // spec M1: world_size >= 1.
        if h.world_size == 0 {
            return Err(MsgError::Invalid {
                field: "hello.world_size",
                value: 0,
                why: "must be >= 1",
            });
        }
        // spec M1: rank < world_size.
        if h.rank >= h.world_size {
            return Err(MsgError::Invalid {
                field: "hello.rank",
                value: u64::from(h.rank),
                why: "must be < world_size",
            });
        }
        Ok(h)
    }
}

/// Refusal (`Reject`) or fatal error (`Error`) with a human reason. Spec M2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: String,
}

impl Reject {
    /// `u16 len` + UTF-8 bytes; errors if the reason exceeds [`MAX_REASON`].
    pub fn encode(&self) -> Result<Vec<u8>, MsgError> {
        let r = self.reason.as_bytes();
        if r.len() > MAX_REASON {
            return Err(MsgError::TooLong {
                field: "reject.reason",
                len: r.len() as u64,
                max: MAX_REASON as u64,
            });
        }
        let mut b = Vec::with_capacity(2 + r.len());
        b.extend_from_slice(&(r.len() as u16).to_le_bytes());
        b.extend_from_slice(r);
        Ok(b)
    }

    /// Build one, cutting `reason` at a char boundary to fit [`MAX_REASON`].
    pub fn truncated(reason: &str) -> Reject {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Reject {
            reason: reason[..end].to_string(),
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Reject, MsgError> {
        let mut c = Cursor::new(payload);
        let len = c.u16("reject.len")? as usize;
        // spec M2: len <= MAX_REASON.
        if len > MAX_REASON {
            return Err(MsgError::TooLong {
                field: "reject.reason",
                len: len as u64,
                max: MAX_REASON as u64,
            });
        }
        let bytes = c.bytes(len, "reject.reason")?;
        // spec M2: UTF-8.
        let reason = std::str::from_utf8(bytes).map_err(|_| MsgError::NotUtf8 {
            field: "reject.reason",
        })?;
        // spec M2: no trailing bytes.
        c.finish()?;
        Ok(Reject {
            reason: reason.to_string(),
        })
    }
}

/// One generation step, hub -> workers. Spec M3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Position of `ids[0]` in the sequence.
    pub pos: u32,
    /// Token ids to process (1 in decode, many in prefill).
    pub ids: Vec<u32>,
    /// `STEP_*` bits.
    pub flags: u32,
}

impl Step {
    /// `pos u32, flags u32, count u32, ids u32 * count`.
    pub fn encode(&self) -> Result<Vec<u8>, MsgError> {
        if self.ids.len() > MAX_STEP_IDS {
            return Err(MsgError::TooLong {
                field: "step.ids",
                len: self.ids.len() as u64,
                max: MAX_STEP_IDS as u64,
            });
        }
        if self.flags & !STEP_KNOWN_FLAGS != 0 {
            return Err(MsgError::UnknownFlags {
                field: "step.flags",
                flags: self.flags,
                known: STEP_KNOWN_FLAGS,
            });
        }
        let mut b = Vec::with_capacity(12 + 4 * self.ids.len());
        b.extend_from_slice(&self.pos.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for id in &self.ids {
            b.extend_from_slice(&id.to_le_bytes());
        }
        Ok(b)
    }

    pub fn decode(payload: &[u8]) -> Result<Step, MsgError> {
        let mut c = Cursor::new(payload);
        let pos = c.u32("step.pos")?;
        let flags = c.u32("step.flags")?;
        // spec M3: undefined flag bits are 0.
        if flags & !STEP_KNOWN_FLAGS != 0 {
            return Err(MsgError::UnknownFlags {
                field: "step.flags",
                flags,
                known: STEP_KNOWN_FLAGS,
            });
        }
        let count = c.u32("step.count")?;
        // spec M3: count <= MAX_STEP_IDS, checked before allocating.
        if count as usize > MAX_STEP_IDS {
            return Err(MsgError::TooLong {
                field: "step.ids",
                len: u64::from(count),
                max: MAX_STEP_IDS as u64,
            });
        }
        let raw = c.bytes(count as usize * 4, "step.ids")?;
        // spec M3: no trailing bytes.
        c.finish()?;
        let ids = raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        Ok(Step { pos, ids, flags })
    }
}

/// Worker -> hub: send bytes `offset..offset + len` of this worker's slice
/// file; answered by one `FileChunk` message of `len` bytes. Spec M4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRequest {
    pub offset: u64,
    pub len: u64,
}

impl FileRequest {
    pub fn encode(&self) -> [u8; FILE_REQUEST_LEN] {
        let mut b = [0u8; FILE_REQUEST_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(payload: &[u8]) -> Result<FileRequest, MsgError> {
        let mut c = Cursor::new(payload);
        let offset = c.u64("file_request.offset")?;
        let len = c.u64("file_request.len")?;
        // spec M4: exactly 16 bytes.
        c.finish()?;
        // spec M4: 1 <= len <= MAX_MESSAGE (the answer is one message).
        if len == 0 {
            return Err(MsgError::Invalid {
                field: "file_request.len",
                value: 0,
                why: "must be >= 1",
            });
        }
        if len > MAX_MESSAGE {
            return Err(MsgError::TooLong {
                field: "file_request.len",
                len,
                max: MAX_MESSAGE,
            });
        }
        // spec M4: offset + len fits in u64.
        if offset.checked_add(len).is_none() {
            return Err(MsgError::Invalid {
                field: "file_request.offset",
                value: offset,
                why: "offset + len overflows",
            });
        }
        Ok(FileRequest { offset, len })
    }
}

/// Spec M5: kinds whose payload must be empty (`Stop`, `Heartbeat`).
pub fn expect_empty(payload: &[u8]) -> Result<(), MsgError> {
    Cursor::new(payload).finish()
}

// Every single-frame message fits in one frame.
const _: () = assert!(HELLO_LEN <= MAX_PAYLOAD);
const _: () = assert!(2 + MAX_REASON <= MAX_PAYLOAD);
const _: () = assert!(12 + 4 * MAX_STEP_IDS <= MAX_PAYLOAD);

/// Length of an [`Auth`] payload.
pub const AUTH_LEN: usize = 64;

/// Pre-shared-key challenge (tag all zero) or proof. Spec M6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    pub nonce: [u8; 32],
    pub tag: [u8; 32],
}

impl Auth {
    pub fn encode(&self) -> [u8; AUTH_LEN] {
        let mut b = [0u8; AUTH_LEN];
        b[..32].copy_from_slice(&self.nonce);
        b[32..].copy_from_slice(&self.tag);
        b
    }

    pub fn decode(payload: &[u8]) -> Result<Auth, MsgError> {
        let mut c = Cursor::new(payload);
        let nonce = c.array::<32>("auth.nonce")?;
        let tag = c.array::<32>("auth.tag")?;
        // spec M6: exactly 64 bytes.
        c.finish()?;
        Ok(Auth { nonce, tag })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::net::frame::PROTOCOL_VERSION;
    use crate::net::MAX_MESSAGE;

    // ---------- messages ----------

    #[test]
    fn cursor_bounds() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16("a"), Ok(0x0201));
        assert_eq!(
            c.u16("b"),
            Err(MsgError::Truncated {
                field: "b",
                need: 2,
                have: 1
            })
        );
        assert_eq!(
            c.bytes(usize::MAX, "c"),
            Err(MsgError::Truncated {
                field: "c",
                need: usize::MAX,
                have: 1
            })
        );
        assert_eq!(c.u8("d"), Ok(3));
        assert_eq!(c.finish(), Ok(()));
        let mut c = Cursor::new(&[0; 9]);
        c.u64("x").unwrap();
        assert_eq!(c.finish(), Err(MsgError::Trailing { extra: 1 }));
    }

    fn hello() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            world_size: 4,
            rank: 3,
            model_fingerprint: 0x0123_4567_89ab_cdef,
            plan_hash: 42,
            wire_dtype: Some(WireDtype::Q8_0),
            nonce: [7; 32],
        }
    }

    #[test]
    fn hello_rejections() {
        let b = hello().encode();
        assert_eq!(Hello::decode(&b), Ok(hello()));
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(Hello::decode(&long), Err(MsgError::Trailing { extra: 1 }));
        assert!(matches!(
            Hello::decode(&b[..HELLO_LEN - 1]),
            Err(MsgError::Truncated {
                field: "hello.nonce",
                ..
            })
        ));
        let mut h = hello();
        h.rank = 4;
        assert!(matches!(
            Hello::decode(&h.encode()),
            Err(MsgError::Invalid {
                field: "hello.rank",
                value: 4,
                ..
            })
        ));
        h.world_size = 0;
        h.rank = 0;
        assert!(matches!(
            Hello::decode(&h.encode()),
            Err(MsgError::Invalid {
                field: "hello.world_size",
                ..
            })
        ));
        // spec M1: the wire dtype at byte 22, 0 when not stated.
        let mut h = hello();
        h.wire_dtype = None;
        assert_eq!(h.encode()[22], 0);
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let mut b = hello().encode();
        assert_eq!(b[22], 3);
        b[22] = 4;
        assert!(matches!(
            Hello::decode(&b),
            Err(MsgError::Invalid {
                field: "hello.wire_dtype",
                value: 4,
                ..
            })
        ));
    }

    #[test]
    fn reject_rejections() {
        let r = Reject {
            reason: "plan hash 1 != 2 ✗".into(),
        };
        assert_eq!(Reject::decode(&r.encode().unwrap()), Ok(r.clone()));
        let mut b = r.encode().unwrap();
        b.push(b'!');
        assert_eq!(Reject::decode(&b), Err(MsgError::Trailing { extra: 1 }));
        // length beyond the maximum, checked before reading the text
        let mut b = ((MAX_REASON + 1) as u16).to_le_bytes().to_vec();
        b.extend(vec![b'a'; MAX_REASON + 1]);
        assert!(matches!(
            Reject::decode(&b),
            Err(MsgError::TooLong {
                len: 1025,
                max: 1024,
                ..
            })
        ));
        assert!(matches!(
            Reject::decode(&u16::MAX.to_le_bytes()),
            Err(MsgError::TooLong { .. })
        ));
        // length beyond the payload
        assert!(matches!(
            Reject::decode(&[5, 0, b'a']),
            Err(MsgError::Truncated {
                need: 5,
                have: 1,
                ..
            })
        ));
        // invalid UTF-8
        assert_eq!(
            Reject::decode(&[2, 0, 0xff, 0xfe]),
            Err(MsgError::NotUtf8 {
                field: "reject.reason"
            })
        );
        // encode refuses, truncated() cuts on a char boundary
        let long = "é".repeat(MAX_REASON);
        assert!(Reject {
            reason: long.clone()
        }
        .encode()
        .is_err());
        let t = Reject::truncated(&long);
        assert!(t.reason.len() <= MAX_REASON && t.reason.chars().all(|c| c == 'é'));
        assert_eq!(Reject::decode(&t.encode().unwrap()), Ok(t));
    }

    #[test]
    fn step_rejections() {
        let s = Step {
            pos: 9,
            ids: vec![1, 2, 3],
            flags: STEP_WANT_LOGITS,
        };
        assert_eq!(Step::decode(&s.encode().unwrap()), Ok(s.clone()));
        let mut b = s.encode().unwrap();
        b.extend([0, 0, 0, 0]);
        assert_eq!(Step::decode(&b), Err(MsgError::Trailing { extra: 4 }));
        // too many ids: rejected from the count alone, before any allocation
        let mut b = Vec::new();
        b.extend(0u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(u32::MAX.to_le_bytes());
        assert!(matches!(
            Step::decode(&b),
            Err(MsgError::TooLong {
                field: "step.ids",
                ..
            })
        ));
        let too_many = Step {
            pos: 0,
            ids: vec![0; MAX_STEP_IDS + 1],
            flags: 0,
        };
        assert!(too_many.encode().is_err());
        let max = Step {
            pos: 0,
            ids: vec![5; MAX_STEP_IDS],
            flags: 0,
        };
        assert_eq!(Step::decode(&max.encode().unwrap()), Ok(max));
        // count says more ids than present
        let mut b = s.encode().unwrap();
        b.truncate(b.len() - 1);
        assert!(matches!(
            Step::decode(&b),
            Err(MsgError::Truncated {
                field: "step.ids",
                ..
            })
        ));
        // unknown flags
        let mut b = s.encode().unwrap();
        b[4..8].copy_from_slice(&0x100u32.to_le_bytes());
        assert!(matches!(
            Step::decode(&b),
            Err(MsgError::UnknownFlags { flags: 0x100, .. })
        ));
    }

    #[test]
    fn file_request_rejections() {
        let f = FileRequest {
            offset: 1 << 40,
            len: 4096,
        };
        assert_eq!(FileRequest::decode(&f.encode()), Ok(f));
        let mut b = f.encode().to_vec();
        b.push(0);
        assert_eq!(
            FileRequest::decode(&b),
            Err(MsgError::Trailing { extra: 1 })
        );
        let z = FileRequest { offset: 0, len: 0 };
        assert!(matches!(
            FileRequest::decode(&z.encode()),
            Err(MsgError::Invalid {
                field: "file_request.len",
                ..
            })
        ));
        let big = FileRequest {
            offset: 0,
            len: MAX_MESSAGE + 1,
        };
        assert!(matches!(
            FileRequest::decode(&big.encode()),
            Err(MsgError::TooLong { .. })
        ));
        let wrap = FileRequest {
            offset: u64::MAX,
            len: 1,
        };
        assert!(matches!(
            FileRequest::decode(&wrap.encode()),
            Err(MsgError::Invalid {
                field: "file_request.offset",
                ..
            })
        ));
    }

    #[test]
    fn empty_payloads() {
        assert_eq!(expect_empty(&[]), Ok(()));
        assert_eq!(expect_empty(&[0]), Err(MsgError::Trailing { extra: 1 }));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn hello_round_trip(pv: u16, ws in 1u16.., r: u16, fp: u64, ph: u64, wire in 0u8..4, nonce: [u8; 32]) {
            let wire_dtype = WireDtype::from_code(wire);
            let h = Hello { protocol_version: pv, world_size: ws, rank: r % ws, model_fingerprint: fp, plan_hash: ph, wire_dtype, nonce };
            prop_assert_eq!(Hello::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn reject_round_trip(reason in "\\PC{0,300}") {
            let r = Reject::truncated(&reason);
            prop_assert_eq!(Reject::decode(&r.encode().unwrap()), Ok(r));
        }

        #[test]
        fn step_round_trip(pos: u32, ids in prop::collection::vec(any::<u32>(), 0..=MAX_STEP_IDS), flags in 0u32..=STEP_KNOWN_FLAGS) {
            let s = Step { pos, ids, flags };
            prop_assert_eq!(Step::decode(&s.encode().unwrap()), Ok(s));
        }

        #[test]
        fn file_request_round_trip(offset in 0u64..(1 << 50), len in 1u64..=MAX_MESSAGE) {
            let f = FileRequest { offset, len };
            prop_assert_eq!(FileRequest::decode(&f.encode()), Ok(f));
        }
    }
}
