//! Frame codec: fixed 40-byte header + payload of at most [`MAX_PAYLOAD`]
//! bytes. The layout and every rule cited below (`spec F1`..) are in the
//! module docs of [`crate::net`].

use std::fmt;
use std::io::{self, IoSlice, Read, Write};

use super::msg::MsgError;
use crate::codec::checksum::checksum32;

/// `b"TPI1"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TPI1");
/// Wire protocol version (2: the Hello carries the wire dtype, spec M1).
pub const PROTOCOL_VERSION: u16 = 2;
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
    send_bytes(w, template, &f32_le_bytes(data))
}

/// Send `bytes` as one message chunked per spec F8 (at least one frame),
/// as [`send_f32s`] does; encoded allreduce payloads (spec W2) go this way.
pub fn send_bytes(w: &mut impl Write, template: &Header, bytes: &[u8]) -> io::Result<()> {
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
    let total = out.len() as u64 * 4;
    recv_message(
        r,
        expected_kind,
        expected_step,
        total,
        buf,
        |at, payload| {
            // Canonical chunking (spec F8) makes `at` and the payload multiples of 4.
            let dst = out.get_mut(at / 4..(at + payload.len()) / 4).ok_or(
                FrameError::LengthMismatch {
                    expected: total,
                    got: (at + payload.len()) as u64,
                },
            )?;
            for (d, s) in dst.iter_mut().zip(payload.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
            Ok(())
        },
    )
}

/// Receive one message of exactly `out.len()` bytes (the length the plan
/// and the wire dtype give, spec W2) into `out`, under the rules of
/// [`recv_f32s_into`]. On error `out` holds unspecified bytes.
pub fn recv_bytes_into(
    r: &mut impl Read,
    expected_kind: Kind,
    expected_step: u32,
    out: &mut [u8],
    buf: &mut [u8; MAX_PAYLOAD],
) -> Result<Header, FrameError> {
    let total = out.len() as u64;
    recv_message(
        r,
        expected_kind,
        expected_step,
        total,
        buf,
        |at, payload| {
            let dst = out
                .get_mut(at..at + payload.len())
                .ok_or(FrameError::LengthMismatch {
                    expected: total,
                    got: (at + payload.len()) as u64,
                })?;
            dst.copy_from_slice(payload);
            Ok(())
        },
    )
}

/// The chunk loop of one message of `expected_total` bytes (spec F10):
/// each chunk's payload goes to `sink(offset, payload)` in order.
fn recv_message(
    r: &mut impl Read,
    expected_kind: Kind,
    expected_step: u32,
    expected_total: u64,
    buf: &mut [u8; MAX_PAYLOAD],
    mut sink: impl FnMut(usize, &[u8]) -> Result<(), FrameError>,
) -> Result<Header, FrameError> {
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
        sink(filled, payload)?;
        filled += payload.len();
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

#[cfg(test)]
mod tests {
    // Codec tests: round trips, every rejection path, no panics on garbage.

    use std::io::{self, Read};

    use proptest::prelude::*;

    use super::*;
    use crate::codec::checksum::checksum32;
    use crate::net::msg::*;

    fn boxed_buf() -> Box<[u8; MAX_PAYLOAD]> {
        Box::new([0u8; MAX_PAYLOAD])
    }

    fn frame_bytes(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, h, payload).unwrap();
        v
    }

    /// Overwrite header bytes `at..` and recompute the header checksum, so the
    /// field check (not the checksum) is what rejects.
    fn patch(frame: &mut [u8], at: usize, bytes: &[u8]) {
        frame[at..at + bytes.len()].copy_from_slice(bytes);
        let hc = checksum32(&frame[0..36]);
        frame[36..40].copy_from_slice(&hc.to_le_bytes());
    }

    fn read_one(bytes: &[u8]) -> Result<(Header, Vec<u8>), FrameError> {
        let mut buf = boxed_buf();
        let mut r = bytes;
        read_frame(&mut r, &mut buf).map(|(h, p)| (h, p.to_vec()))
    }

    fn sample_frame() -> Vec<u8> {
        frame_bytes(&Header::new(Kind::Heartbeat, 3, 7, 9), b"hello payload")
    }

    // ---------- header / frame rejection paths ----------

    #[test]
    fn header_round_trip_and_layout() {
        let f = sample_frame();
        assert_eq!(f.len(), HEADER_LEN + 13);
        assert_eq!(&f[0..4], b"TPI1");
        assert_eq!(&f[4..6], &PROTOCOL_VERSION.to_le_bytes());
        assert_eq!(f[6], Kind::Heartbeat as u8);
        let (h, p) = read_one(&f).unwrap();
        assert_eq!(p, b"hello payload");
        assert_eq!((h.kind, h.rank, h.step, h.seq), (Kind::Heartbeat, 3, 7, 9));
        assert_eq!(
            (h.chunk_index, h.chunk_count, h.payload_len, h.total_len),
            (0, 1, 13, 13)
        );
    }

    #[test]
    fn rejects_bad_magic() {
        let mut f = sample_frame();
        f[0] = b'X';
        assert!(matches!(read_one(&f), Err(FrameError::BadMagic { .. })));
    }

    #[test]
    fn rejects_bad_version() {
        let mut f = sample_frame();
        // A peer of protocol version 1 (no wire dtype in its Hello).
        patch(&mut f, 4, &1u16.to_le_bytes());
        assert!(matches!(
            read_one(&f),
            Err(FrameError::BadVersion {
                expected: 2,
                got: 1
            })
        ));
    }

    #[test]
    fn rejects_unknown_kind() {
        for k in [0u8, 14, 255] {
            let mut f = sample_frame();
            patch(&mut f, 6, &[k]);
            assert!(matches!(read_one(&f), Err(FrameError::UnknownKind { got }) if got == k));
        }
    }

    #[test]
    fn rejects_unknown_flags() {
        let mut f = sample_frame();
        patch(&mut f, 7, &[0x82]);
        assert!(matches!(
            read_one(&f),
            Err(FrameError::UnknownFlags { flags: 0x82 })
        ));
    }

    #[test]
    fn rejects_reserved() {
        let mut f = sample_frame();
        patch(&mut f, 10, &1u16.to_le_bytes());
        assert!(matches!(
            read_one(&f),
            Err(FrameError::NonZeroReserved { got: 1 })
        ));
    }

    #[test]
    fn rejects_oversize_payload_len() {
        let mut f = sample_frame();
        patch(&mut f, 24, &(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(
            matches!(read_one(&f), Err(FrameError::PayloadTooLarge { len, .. }) if len == MAX_PAYLOAD as u32 + 1)
        );
        patch(&mut f, 24, &u32::MAX.to_le_bytes());
        assert!(matches!(
            read_one(&f),
            Err(FrameError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_bad_chunk_fields() {
        let mut f = sample_frame();
        patch(&mut f, 22, &0u16.to_le_bytes()); // count 0
        assert!(matches!(
            read_one(&f),
            Err(FrameError::BadChunk { index: 0, count: 0 })
        ));
        let mut f = sample_frame();
        patch(&mut f, 20, &1u16.to_le_bytes()); // index 1 of 1
        assert!(matches!(
            read_one(&f),
            Err(FrameError::BadChunk { index: 1, count: 1 })
        ));
        // total_len says 2 chunks, count says 1.
        let mut f = sample_frame();
        patch(&mut f, 32, &(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(read_one(&f), Err(FrameError::ChunkLayout { .. })));
        // payload_len differs from total_len in a single chunk.
        let mut f = sample_frame();
        patch(&mut f, 32, &12u32.to_le_bytes());
        assert!(matches!(
            read_one(&f),
            Err(FrameError::ChunkLayout {
                total_len: 12,
                payload_len: 13,
                ..
            })
        ));
        // total_len too big for u16 chunk counts.
        let mut f = sample_frame();
        patch(&mut f, 22, &u16::MAX.to_le_bytes());
        patch(&mut f, 32, &u32::MAX.to_le_bytes());
        assert!(matches!(read_one(&f), Err(FrameError::ChunkLayout { .. })));
    }

    #[test]
    fn rejects_header_checksum() {
        let mut f = sample_frame();
        f[12] ^= 1; // step, without fixing the checksum
        assert!(matches!(
            read_one(&f),
            Err(FrameError::HeaderChecksum { .. })
        ));
        let mut f = sample_frame();
        f[37] ^= 0x10;
        assert!(matches!(
            read_one(&f),
            Err(FrameError::HeaderChecksum { .. })
        ));
    }

    #[test]
    fn rejects_payload_checksum() {
        let mut f = sample_frame();
        let last = f.len() - 1;
        f[last] ^= 0x40;
        assert!(matches!(
            read_one(&f),
            Err(FrameError::PayloadChecksum { .. })
        ));
    }

    #[test]
    fn truncated_stream_is_an_error_at_every_length() {
        let f = sample_frame();
        for cut in 0..f.len() {
            match read_one(&f[..cut]) {
                Err(FrameError::Truncated {
                    part,
                    expected,
                    got,
                }) => {
                    if cut < HEADER_LEN {
                        assert_eq!((part, expected, got), ("header", HEADER_LEN, cut));
                    } else {
                        assert_eq!((part, expected, got), ("payload", 13, cut - HEADER_LEN));
                    }
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    /// A reader that hands out one byte per call, then EOF.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((b, rest)), false) => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_and_back_to_back_frames() {
        let mut s = sample_frame();
        s.extend(frame_bytes(&Header::new(Kind::Stop, 0, 8, 0), &[]));
        let mut r = Trickle(&s);
        let mut buf = boxed_buf();
        assert_eq!(read_frame(&mut r, &mut buf).unwrap().1, b"hello payload");
        let (h, p) = read_frame(&mut r, &mut buf).unwrap();
        assert_eq!((h.kind, h.step, p.len()), (Kind::Stop, 8, 0));
        assert!(matches!(
            read_frame(&mut r, &mut buf),
            Err(FrameError::Truncated { got: 0, .. })
        ));
    }

    #[test]
    fn write_frame_refuses_invalid_frames() {
        let mut out = Vec::new();
        let big = vec![0u8; MAX_PAYLOAD + 1];
        let e = write_frame(&mut out, &Header::new(Kind::FileChunk, 0, 0, 0), &big).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut h = Header::new(Kind::Step, 0, 0, 0);
        h.flags = 0x40;
        assert_eq!(
            write_frame(&mut out, &h, &[]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let mut h = Header::new(Kind::Step, 0, 0, 0);
        h.chunk_count = 2; // total_len 0 is one chunk
        assert_eq!(
            write_frame(&mut out, &h, &[]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(out.is_empty());
    }

    #[test]
    fn error_display_names_values() {
        let e = FrameError::BadVersion {
            expected: 1,
            got: 7,
        };
        let s = e.to_string();
        assert!(s.contains('7') && s.contains('1'), "{s}");
        let s = FrameError::UnexpectedKind {
            expected: Kind::Reduced,
            got: Kind::Partial,
        }
        .to_string();
        assert!(s.contains("Reduced") && s.contains("Partial"), "{s}");
        let s = FrameError::Truncated {
            part: "payload",
            expected: 13,
            got: 4,
        }
        .to_string();
        assert!(
            s.contains("payload") && s.contains("13") && s.contains('4'),
            "{s}"
        );
    }

    // ---------- f32 messages ----------

    fn f32_stream(kind: Kind, step: u32, data: &[f32]) -> Vec<u8> {
        let mut v = Vec::new();
        send_f32s(&mut v, &Header::new(kind, 2, step, 5), data).unwrap();
        v
    }

    #[test]
    fn f32_round_trip_sizes() {
        let per = MAX_PAYLOAD / 4;
        for n in [0usize, 1, 3, per - 1, per, per + 1, 3 * per + 17] {
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let s = f32_stream(Kind::Partial, 11, &data);
            let frames = n.div_ceil(per).max(1);
            assert_eq!(s.len(), frames * HEADER_LEN + n * 4, "n {n}");
            let mut out = vec![f32::NAN; n];
            let mut buf = boxed_buf();
            let mut r = s.as_slice();
            let h = recv_f32s_into(&mut r, Kind::Partial, 11, &mut out, &mut buf).unwrap();
            assert_eq!((h.rank, h.seq, h.chunk_count as usize), (2, 5, frames));
            assert_eq!(out, data);
            assert!(r.is_empty(), "n {n}: {} bytes left", r.len());
        }
    }

    #[test]
    fn f32_rejects_wrong_kind_step_length() {
        let data = vec![1.0f32; 10];
        let s = f32_stream(Kind::Partial, 4, &data);
        let mut buf = boxed_buf();
        let mut out = vec![0.0; 10];
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 4, &mut out, &mut buf).unwrap_err();
        assert!(matches!(
            e,
            FrameError::UnexpectedKind {
                expected: Kind::Reduced,
                got: Kind::Partial
            }
        ));
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Partial, 5, &mut out, &mut buf).unwrap_err();
        assert!(matches!(
            e,
            FrameError::UnexpectedStep {
                expected: 5,
                got: 4
            }
        ));
        let mut out11 = vec![0.0; 11];
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Partial, 4, &mut out11, &mut buf).unwrap_err();
        assert!(matches!(
            e,
            FrameError::LengthMismatch {
                expected: 44,
                got: 40
            }
        ));
    }

    #[test]
    fn f32_rejects_out_of_order_and_mixed_chunks() {
        let per = MAX_PAYLOAD / 4;
        let data: Vec<f32> = (0..2 * per + 5).map(|i| i as f32).collect();
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        let chunks: Vec<&[u8]> = bytes.chunks(MAX_PAYLOAD).collect();
        let frame = |idx: u16, seq: u32, rank: u16| {
            let mut h = Header::new(Kind::Reduced, rank, 1, seq);
            h.chunk_count = 3;
            h.chunk_index = idx;
            h.total_len = bytes.len() as u32;
            frame_bytes(&h, chunks[idx as usize])
        };
        let mut out = vec![0.0; data.len()];
        let mut buf = boxed_buf();
        // chunk 1 before chunk 0
        let s = [frame(1, 0, 0), frame(0, 0, 0), frame(2, 0, 0)].concat();
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::UnexpectedChunk {
                    expected_index: 0,
                    got_index: 1,
                    ..
                }
            ),
            "{e}"
        );
        // repeated chunk
        let s = [frame(0, 0, 0), frame(0, 0, 0)].concat();
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::UnexpectedChunk {
                    expected_index: 1,
                    got_index: 0,
                    ..
                }
            ),
            "{e}"
        );
        // seq changes mid-message
        let s = [frame(0, 0, 0), frame(1, 1, 0)].concat();
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::UnexpectedSeq {
                    expected: 0,
                    got: 1
                }
            ),
            "{e}"
        );
        // rank changes mid-message
        let s = [frame(0, 0, 0), frame(1, 0, 1)].concat();
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::UnexpectedRank {
                    expected: 0,
                    got: 1
                }
            ),
            "{e}"
        );
        // stream ends after two chunks
        let s = [frame(0, 0, 0), frame(1, 0, 0)].concat();
        let e =
            recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::Truncated {
                    part: "header",
                    got: 0,
                    ..
                }
            ),
            "{e}"
        );
        // in order: fine
        let s = [frame(0, 0, 0), frame(1, 0, 0), frame(2, 0, 0)].concat();
        recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn byte_messages_split_anywhere_and_arrive_whole() {
        // A q8_0 message of 1929 blocks: block 1927 straddles the chunks.
        let bytes: Vec<u8> = (0..1929 * 34).map(|i| (i * 7 % 251) as u8).collect();
        let mut s = Vec::new();
        send_bytes(&mut s, &Header::new(Kind::Reduced, 0, 2, 9), &bytes).unwrap();
        assert_eq!(s.len(), 2 * HEADER_LEN + bytes.len());
        let (mut out, mut buf) = (vec![0u8; bytes.len()], boxed_buf());
        let h = recv_bytes_into(&mut s.as_slice(), Kind::Reduced, 2, &mut out, &mut buf).unwrap();
        assert_eq!((h.seq, h.chunk_count, &out), (9, 2, &bytes));
        let e = recv_bytes_into(&mut s.as_slice(), Kind::Reduced, 2, &mut out[1..], &mut buf);
        assert!(matches!(e, Err(FrameError::LengthMismatch { .. })), "{e:?}");
    }

    #[test]
    fn msg_error_converts_into_frame_error() {
        let e: FrameError = MsgError::Trailing { extra: 3 }.into();
        assert!(e.to_string().contains('3'));
        assert!(std::error::Error::source(&e).is_some());
    }

    // ---------- properties ----------

    fn arb_kind() -> impl Strategy<Value = Kind> {
        prop::sample::select(Kind::ALL.to_vec())
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            arb_kind(),
            any::<bool>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(kind, stop, rank, step, seq)| {
                let mut h = Header::new(kind, rank, step, seq);
                h.flags = if stop { FLAG_STOP } else { 0 };
                h
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn frame_round_trip(h in arb_header(), payload in prop::collection::vec(any::<u8>(), 0..2000)) {
            let f = frame_bytes(&h, &payload);
            let (got, p) = read_one(&f).unwrap();
            prop_assert_eq!(got.kind, h.kind);
            prop_assert_eq!(got.stop(), h.stop());
            prop_assert_eq!((got.rank, got.step, got.seq), (h.rank, h.step, h.seq));
            prop_assert_eq!(p, payload);
            // Header encode/decode is an exact round trip.
            let hb: [u8; HEADER_LEN] = f[..HEADER_LEN].try_into().unwrap();
            prop_assert_eq!(Header::decode(&hb).unwrap().encode(), hb);
        }

        #[test]
        fn f32_round_trip(h in arb_header(), data in prop::collection::vec(any::<f32>(), 0..40_000)) {
            let mut s = Vec::new();
            send_f32s(&mut s, &h, &data).unwrap();
            let mut out = vec![0.0f32; data.len()];
            let mut buf = boxed_buf();
            recv_f32s_into(&mut s.as_slice(), h.kind, h.step, &mut out, &mut buf).unwrap();
            // Compare bits (NaN payloads included).
            prop_assert!(out.iter().map(|x| x.to_bits()).eq(data.iter().map(|x| x.to_bits())));
        }





        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_one(&bytes);
            let mut hb = [0u8; HEADER_LEN];
            let n = bytes.len().min(HEADER_LEN);
            hb[..n].copy_from_slice(&bytes[..n]);
            let _ = Header::decode(&hb);
            let _ = Hello::decode(&bytes);
            let _ = Reject::decode(&bytes);
            let _ = Step::decode(&bytes);
            let _ = FileRequest::decode(&bytes);
            let _ = expect_empty(&bytes);
            let mut out = [0.0f32; 8];
            let mut buf = boxed_buf();
            let _ = recv_f32s_into(&mut bytes.as_slice(), Kind::Partial, 0, &mut out, &mut buf);
        }

        #[test]
        fn random_header_with_valid_magic_never_panics(mut hb: [u8; HEADER_LEN], fix_checksum: bool) {
            hb[0..4].copy_from_slice(b"TPI1");
            hb[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            if fix_checksum {
                let hc = checksum32(&hb[0..36]);
                hb[36..40].copy_from_slice(&hc.to_le_bytes());
            }
            if let Ok(h) = Header::decode(&hb) {
                // Whatever decodes is valid and re-encodes identically.
                prop_assert!(h.validate().is_ok());
                prop_assert_eq!(h.encode(), hb);
            }
        }

        #[test]
        fn single_bit_flip_in_a_frame_is_rejected(h in arb_header(), payload in prop::collection::vec(any::<u8>(), 0..500), pos: prop::sample::Index, bit in 0u8..8) {
            let mut f = frame_bytes(&h, &payload);
            let i = pos.index(f.len());
            f[i] ^= 1 << bit;
            prop_assert!(read_one(&f).is_err(), "flip at byte {} bit {} accepted", i, bit);
        }

        #[test]
        fn mutated_frames_never_panic(h in arb_header(), payload in prop::collection::vec(any::<u8>(), 0..500), muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut: prop::sample::Index) {
            let mut f = frame_bytes(&h, &payload);
            for (at, v) in muts {
                let i = at.index(f.len());
                f[i] = v;
            }
            let keep = cut.index(f.len() + 1);
            let _ = read_one(&f[..keep]);
            let _ = read_one(&f);
        }
    }
}
