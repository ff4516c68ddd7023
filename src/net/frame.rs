//! Frame codec: fixed 40-byte header + payload of at most [`MAX_PAYLOAD`]
//! bytes. The layout and every rule cited below (`spec F1`..) are in the
//! module docs of [`crate::net`].

use std::fmt;
use std::io::{self, IoSlice, Read, Write};

use super::msg::MsgError;
use crate::codec::checksum::checksum32;

/// `b"TPI1"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TPI1");
/// Wire protocol version.
pub const PROTOCOL_VERSION: u16 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 40;
/// The frame limits (spec F6, F8), defined with the spec.
pub use super::{MAX_MESSAGE, MAX_PAYLOAD};
/// Flag bit 0: the sender stops after this step.
pub const FLAG_STOP: u8 = 1;
/// All defined flag bits; others must be 0 (spec F4).
pub const KNOWN_FLAGS: u8 = FLAG_STOP;

/// Frame kind (u8 on the wire; spec F3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Hello = 1,
    HelloAck = 2,
    Reject = 3,
    Step = 4,
    /// Worker -> hub allreduce contribution.
    Partial = 5,
    /// Hub -> worker allreduce result.
    Reduced = 6,
    Logits = 7,
    FileRequest = 8,
    FileChunk = 9,
    Stop = 10,
    Heartbeat = 11,
    Error = 12,
    /// Pre-shared-key challenge or proof (spec M6).
    Auth = 13,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Hello,
        Kind::HelloAck,
        Kind::Reject,
        Kind::Step,
        Kind::Partial,
        Kind::Reduced,
        Kind::Logits,
        Kind::FileRequest,
        Kind::FileChunk,
        Kind::Stop,
        Kind::Heartbeat,
        Kind::Error,
        Kind::Auth,
    ];

    /// The kind with wire code `v`, if any.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == v)
    }
}

/// Decoded header. Magic, version and reserved are implicit; `header
/// checksum` is computed by [`Header::encode`] and checked by
/// [`Header::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub rank: u16,
    pub step: u32,
    pub seq: u32,
    pub chunk_index: u16,
    pub chunk_count: u16,
    pub payload_len: u32,
    pub payload_checksum: u32,
    /// Sum of the payload lengths of all chunks of this message.
    pub total_len: u32,
}

impl Header {
    /// A single-chunk header with empty payload; [`write_frame`] fills the
    /// payload length, checksum and (for single chunks) `total_len`.
    pub fn new(kind: Kind, rank: u16, step: u32, seq: u32) -> Header {
        Header {
            kind,
            flags: 0,
            rank,
            step,
            seq,
            chunk_index: 0,
            chunk_count: 1,
            payload_len: 0,
            payload_checksum: checksum32(&[]),
            total_len: 0,
        }
    }

    /// Number of chunks a message of `total_len` bytes takes (spec F8).
    pub fn chunks_for(total_len: u64) -> u64 {
        total_len.div_ceil(MAX_PAYLOAD as u64).max(1)
    }

    /// Field checks shared by encode and decode paths (spec F4..F8).
    pub fn validate(&self) -> Result<(), FrameError> {
        // spec F4: undefined flag bits are 0.
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::UnknownFlags { flags: self.flags });
        }
        // spec F6: payload_len <= MAX_PAYLOAD.
        if self.payload_len as usize > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge {
                len: self.payload_len,
                max: MAX_PAYLOAD,
            });
        }
        // spec F7: 1 <= chunk_count, chunk_index < chunk_count.
        if self.chunk_count == 0 || self.chunk_index >= self.chunk_count {
            return Err(FrameError::BadChunk {
                index: self.chunk_index,
                count: self.chunk_count,
            });
        }
        // spec F8: canonical chunking: count = max(1, ceil(total / MAX)), every
        // chunk but the last is full, the last holds the rest.
        let total = u64::from(self.total_len);
        let count = u64::from(self.chunk_count);
        let idx = u64::from(self.chunk_index);
        let want_len = total
            .saturating_sub(idx * MAX_PAYLOAD as u64)
            .min(MAX_PAYLOAD as u64);
        if Header::chunks_for(total) != count || u64::from(self.payload_len) != want_len {
            return Err(FrameError::ChunkLayout {
                total_len: self.total_len,
                chunk_index: self.chunk_index,
                chunk_count: self.chunk_count,
                payload_len: self.payload_len,
            });
        }
        Ok(())
    }

    /// Encode (spec F1 table). Does not validate; [`write_frame`] does.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        b[6] = self.kind as u8;
        b[7] = self.flags;
        b[8..10].copy_from_slice(&self.rank.to_le_bytes());
        // 10..12 reserved = 0
        b[12..16].copy_from_slice(&self.step.to_le_bytes());
        b[16..20].copy_from_slice(&self.seq.to_le_bytes());
        b[20..22].copy_from_slice(&self.chunk_index.to_le_bytes());
        b[22..24].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.payload_checksum.to_le_bytes());
        b[32..36].copy_from_slice(&self.total_len.to_le_bytes());
        let hc = checksum32(&b[0..36]);
        b[36..40].copy_from_slice(&hc.to_le_bytes());
        b
    }

    /// Decode and validate a header (spec F2..F8).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        // spec F2: magic first (not a tpi stream at all otherwise).
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { got: magic });
        }
        // spec F2: version before the checksum, so a peer with another header
        // layout gets a clear answer.
        let version = u16_at(4);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::BadVersion {
                expected: PROTOCOL_VERSION,
                got: version,
            });
        }
        // spec F2: header checksum over bytes 0..36.
        let expected = u32_at(36);
        let got = checksum32(&b[0..36]);
        if expected != got {
            return Err(FrameError::HeaderChecksum { expected, got });
        }
        // spec F3: known kind.
        let kind = Kind::from_u8(b[6]).ok_or(FrameError::UnknownKind { got: b[6] })?;
        // spec F5: reserved = 0.
        let reserved = u16_at(10);
        if reserved != 0 {
            return Err(FrameError::NonZeroReserved { got: reserved });
        }
        let h = Header {
            kind,
            flags: b[7],
            rank: u16_at(8),
            step: u32_at(12),
            seq: u32_at(16),
            chunk_index: u16_at(20),
            chunk_count: u16_at(22),
            payload_len: u32_at(24),
            payload_checksum: u32_at(28),
            total_len: u32_at(32),
        };
        h.validate()?;
        Ok(h)
    }

    /// Whether the STOP flag is set.
    pub fn stop(&self) -> bool {
        self.flags & FLAG_STOP != 0
    }
}

/// Codec errors. Each names the values involved.
#[derive(Debug)]
pub enum FrameError {
    /// I/O error from the underlying stream (other than a short read).
    Io(io::Error),
    /// The stream ended inside a header or payload.
    Truncated {
        part: &'static str,
        expected: usize,
        got: usize,
    },
    BadMagic {
        got: u32,
    },
    BadVersion {
        expected: u16,
        got: u16,
    },
    UnknownKind {
        got: u8,
    },
    UnknownFlags {
        flags: u8,
    },
    NonZeroReserved {
        got: u16,
    },
    PayloadTooLarge {
        len: u32,
        max: usize,
    },
    BadChunk {
        index: u16,
        count: u16,
    },
    ChunkLayout {
        total_len: u32,
        chunk_index: u16,
        chunk_count: u16,
        payload_len: u32,
    },
    HeaderChecksum {
        expected: u32,
        got: u32,
    },
    PayloadChecksum {
        expected: u32,
        got: u32,
    },
    UnexpectedKind {
        expected: Kind,
        got: Kind,
    },
    /// The peer sent an Error frame (spec M2) where a message was expected:
    /// it stopped, for this reason.
    PeerError {
        reason: String,
    },
    UnexpectedStep {
        expected: u32,
        got: u32,
    },
    UnexpectedChunk {
        expected_index: u16,
        got_index: u16,
        expected_count: u16,
        got_count: u16,
    },
    UnexpectedSeq {
        expected: u32,
        got: u32,
    },
    UnexpectedRank {
        expected: u16,
        got: u16,
    },
    UnexpectedFlags {
        expected: u8,
        got: u8,
    },
    /// Total message length differs from what the receiver expects.
    LengthMismatch {
        expected: u64,
        got: u64,
    },
    /// A message payload did not decode.
    Msg(MsgError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FrameError::*;
        match self {
            Io(e) => write!(f, "frame: i/o error: {e}"),
            Truncated { part, expected, got } => write!(
                f,
                "frame: stream ended in {part}: got {got} of {expected} bytes"
            ),
            BadMagic { got } => write!(f, "frame: bad magic {got:#010x}, expected {MAGIC:#010x} (\"TPI1\")"),
            BadVersion { expected, got } => write!(f, "frame: protocol version {got}, expected {expected}"),
            UnknownKind { got } => write!(f, "frame: unknown kind {got}"),
            UnknownFlags { flags } => write!(f, "frame: undefined flag bits in {flags:#04x} (known {KNOWN_FLAGS:#04x})"),
            NonZeroReserved { got } => write!(f, "frame: reserved field is {got:#06x}, must be 0"),
            PayloadTooLarge { len, max } => write!(f, "frame: payload_len {len} exceeds maximum {max}"),
            BadChunk { index, count } => write!(f, "frame: chunk_index {index} / chunk_count {count} invalid"),
            ChunkLayout { total_len, chunk_index, chunk_count, payload_len } => write!(
                f,
                "frame: chunk {chunk_index}/{chunk_count} with payload_len {payload_len} does not match total_len {total_len} in {MAX_PAYLOAD}-byte chunks"
            ),
            HeaderChecksum { expected, got } => write!(f, "frame: header checksum {got:#010x}, header says {expected:#010x}"),
            PayloadChecksum { expected, got } => write!(f, "frame: payload checksum {got:#010x}, header says {expected:#010x}"),
            UnexpectedKind { expected, got } => write!(f, "frame: kind {got:?}, expected {expected:?}"),
            PeerError { reason } => write!(f, "the peer stopped: {reason}"),
            UnexpectedStep { expected, got } => write!(f, "frame: step {got}, expected {expected}"),
            UnexpectedChunk { expected_index, got_index, expected_count, got_count } => write!(
                f,
                "frame: chunk {got_index}/{got_count}, expected {expected_index}/{expected_count}"
            ),
            UnexpectedSeq { expected, got } => write!(f, "frame: seq {got}, expected {expected}"),
            UnexpectedRank { expected, got } => write!(f, "frame: rank {got}, expected {expected}"),
            UnexpectedFlags { expected, got } => write!(f, "frame: flags {got:#04x} in a later chunk, expected {expected:#04x}"),
            LengthMismatch { expected, got } => write!(f, "frame: message of {got} bytes, expected {expected}"),
            Msg(e) => write!(f, "frame: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            FrameError::Msg(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl From<MsgError> for FrameError {
    fn from(e: MsgError) -> Self {
        FrameError::Msg(e)
    }
}

/// `write_all` over two slices with `write_vectored`, so header and payload
/// leave in one syscall where the writer supports it.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write frame",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write one frame. `payload_len` and `payload_checksum` are taken from
/// `payload`; for a single-chunk header `total_len` is too. The resulting
/// header is validated (a frame the peer would reject is never sent):
/// failures are `io::ErrorKind::InvalidInput`.
pub fn write_frame(w: &mut impl Write, header: &Header, payload: &[u8]) -> io::Result<()> {
    let mut h = *header;
    if payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            FrameError::PayloadTooLarge {
                len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                max: MAX_PAYLOAD,
            },
        ));
    }
    h.payload_len = payload.len() as u32; // <= MAX_PAYLOAD
    h.payload_checksum = checksum32(payload);
    if h.chunk_count == 1 {
        h.total_len = h.payload_len;
    }
    h.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let hb = h.encode();
    write_all_vectored(w, &mut [IoSlice::new(&hb), IoSlice::new(payload)])
}

/// Fill `buf` completely; a clean or mid-way EOF is `Truncated` naming `part`.
fn read_full(r: &mut impl Read, buf: &mut [u8], part: &'static str) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    part,
                    expected: buf.len(),
                    got,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Read one frame into the caller's fixed buffer and verify it (spec F2..F9).
/// Never allocates; the payload length is validated before any payload read.
pub fn read_frame<'b>(
    r: &mut impl Read,
    buf: &'b mut [u8; MAX_PAYLOAD],
) -> Result<(Header, &'b [u8]), FrameError> {
    let mut hb = [0u8; HEADER_LEN];
    read_full(r, &mut hb, "header")?;
    let h = Header::decode(&hb)?;
    // payload_len <= MAX_PAYLOAD was checked by decode (spec F6).
    let payload = &mut buf[..h.payload_len as usize];
    read_full(r, payload, "payload")?;
    // spec F9: payload checksum.
    let got = checksum32(payload);
    if got != h.payload_checksum {
        return Err(FrameError::PayloadChecksum {
            expected: h.payload_checksum,
            got,
        });
    }
    Ok((h, payload))
}

/// `data` as little-endian bytes: borrowed on little-endian targets.
fn f32_le_bytes(data: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(data))
    }
    #[cfg(not(target_endian = "little"))]
    {
        std::borrow::Cow::Owned(data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// Send `data` as one message of `ceil(len * 4 / MAX_PAYLOAD)` frames (at
/// least one). `template` supplies kind, flags, rank, step and seq; chunk
/// fields and lengths are set here. Fails with `InvalidInput` if the message
/// would exceed [`MAX_MESSAGE`].
pub fn send_f32s(w: &mut impl Write, template: &Header, data: &[f32]) -> io::Result<()> {
    let bytes = f32_le_bytes(data);
    let total = bytes.len() as u64;
    if total > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            FrameError::LengthMismatch {
                expected: MAX_MESSAGE,
                got: total,
            },
        ));
    }
    let count = Header::chunks_for(total) as u16; // <= u16::MAX by the check above
    let mut h = *template;
    h.chunk_count = count;
    h.total_len = total as u32; // MAX_MESSAGE < 2^32
    if bytes.is_empty() {
        h.chunk_index = 0;
        return write_frame(w, &h, &[]);
    }
    for (i, chunk) in bytes.chunks(MAX_PAYLOAD).enumerate() {
        h.chunk_index = i as u16;
        write_frame(w, &h, chunk)?;
    }
    Ok(())
}

/// Receive one f32 message of exactly `out.len()` values (the length comes
/// from the plan, never from the wire). Every chunk must have
/// `expected_kind`, `expected_step`, the first chunk's seq, rank and flags,
/// and arrive in order. Returns the first chunk's header (caller checks seq
/// and rank). On error `out` holds unspecified values.
pub fn recv_f32s_into(
    r: &mut impl Read,
    expected_kind: Kind,
    expected_step: u32,
    out: &mut [f32],
    buf: &mut [u8; MAX_PAYLOAD],
) -> Result<Header, FrameError> {
    let expected_total = out.len() as u64 * 4;
    let expected_count = Header::chunks_for(expected_total);
    let mut first: Option<Header> = None;
    let mut filled = 0usize;
    let mut idx: u64 = 0;
    loop {
        let (h, payload) = read_frame(r, buf)?;
        if h.kind == Kind::Error && expected_kind != Kind::Error {
            // spec M2: the sender's reason, so the receiver can name it.
            let reason = super::msg::Reject::decode(payload)
                .map(|r| r.reason)
                .unwrap_or_else(|e| format!("(unreadable reason: {e})"));
            return Err(FrameError::PeerError { reason });
        }
        if h.kind != expected_kind {
            return Err(FrameError::UnexpectedKind {
                expected: expected_kind,
                got: h.kind,
            });
        }
        if h.step != expected_step {
            return Err(FrameError::UnexpectedStep {
                expected: expected_step,
                got: h.step,
            });
        }
        if u64::from(h.total_len) != expected_total {
            return Err(FrameError::LengthMismatch {
                expected: expected_total,
                got: u64::from(h.total_len),
            });
        }
        // total_len matches, so by spec F8 chunk_count == expected_count (< 2^16).
        if u64::from(h.chunk_index) != idx || u64::from(h.chunk_count) != expected_count {
            return Err(FrameError::UnexpectedChunk {
                expected_index: idx as u16,
                got_index: h.chunk_index,
                expected_count: expected_count.min(u64::from(u16::MAX)) as u16,
                got_count: h.chunk_count,
            });
        }
        if let Some(f) = &first {
            if h.seq != f.seq {
                return Err(FrameError::UnexpectedSeq {
                    expected: f.seq,
                    got: h.seq,
                });
            }
            if h.rank != f.rank {
                return Err(FrameError::UnexpectedRank {
                    expected: f.rank,
                    got: h.rank,
                });
            }
            // spec F10: flags are a property of the message, not the chunk.
            if h.flags != f.flags {
                return Err(FrameError::UnexpectedFlags {
                    expected: f.flags,
                    got: h.flags,
                });
            }
        }
        // Canonical chunking (spec F8) makes payload a multiple of 4 that fits.
        let n = payload.len() / 4;
        let dst = out
            .get_mut(filled..filled + n)
            .ok_or(FrameError::LengthMismatch {
                expected: expected_total,
                got: (filled + n) as u64 * 4,
            })?;
        for (d, s) in dst.iter_mut().zip(payload.chunks_exact(4)) {
            *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        }
        filled += n;
        if first.is_none() {
            first = Some(h);
        }
        idx += 1;
        if idx == expected_count {
            break;
        }
    }
    // Loop ran at least once (expected_count >= 1).
    first.ok_or(FrameError::LengthMismatch {
        expected: expected_total,
        got: 0,
    })
}
