//! Codec tests: round trips, every rejection path, no panics on garbage.

use std::io::{self, Read};

use proptest::prelude::*;

use super::frame::*;
use super::msg::*;
use crate::codec::checksum::checksum32;

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
    assert_eq!(&f[4..6], &1u16.to_le_bytes());
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
    patch(&mut f, 4, &2u16.to_le_bytes());
    assert!(matches!(
        read_one(&f),
        Err(FrameError::BadVersion {
            expected: 1,
            got: 2
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
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 4, &mut out, &mut buf).unwrap_err();
    assert!(matches!(
        e,
        FrameError::UnexpectedKind {
            expected: Kind::Reduced,
            got: Kind::Partial
        }
    ));
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Partial, 5, &mut out, &mut buf).unwrap_err();
    assert!(matches!(
        e,
        FrameError::UnexpectedStep {
            expected: 5,
            got: 4
        }
    ));
    let mut out11 = vec![0.0; 11];
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Partial, 4, &mut out11, &mut buf).unwrap_err();
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
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
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
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
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
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
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
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
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
    let e = recv_f32s_into(&mut s.as_slice(), Kind::Reduced, 1, &mut out, &mut buf).unwrap_err();
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
        Hello::decode(&b[..53]),
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
    fn hello_round_trip(pv: u16, ws in 1u16.., r: u16, fp: u64, ph: u64, nonce: [u8; 32]) {
        let h = Hello { protocol_version: pv, world_size: ws, rank: r % ws, model_fingerprint: fp, plan_hash: ph, nonce };
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
