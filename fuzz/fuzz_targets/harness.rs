// Shared fuzz harness: the body of every fuzz target.
//
// `include!`d by each target in fuzz/fuzz_targets/ (libFuzzer, cargo-fuzz)
// and by tests/fuzz_corpus.rs (stable replay of fuzz/corpus/ and
// fuzz/regressions/), so the fuzzers and the regression test make exactly
// the same calls. (No `//!` or other inner attributes here: `include!`
// does not allow them.)
//
// Every function takes the raw input, feeds it to one decoder of outside
// bytes and returns whether it decoded Ok. A panic is a finding: either the
// decoder panicked, or one of the checks below failed (a decoded value that
// does not re-encode byte-identically, or breaks an invariant the decoder
// promises).

use tpi::codec::checksum::checksum32;
use tpi::net::frame::{self, Header, Kind, HEADER_LEN, MAX_PAYLOAD};
use tpi::net::msg::{self, FileRequest, Hello, Reject, Step};
use tpi::net::wire::{self, WireDtype, WireError};

/// A fuzz target body: raw input in, "decoded Ok" out.
pub type Target = fn(&[u8]) -> bool;

/// Every target, by the name of its fuzz/fuzz_targets/<name>.rs file and
/// its fuzz/corpus/<name>/ and fuzz/regressions/<name>/ directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_header", frame_header),
    ("frame_stream", frame_stream),
    ("frame_recv_f32s", frame_recv_f32s),
    ("wire_payload", wire_payload),
    ("msg_hello", msg_hello),
    ("msg_reject", msg_reject),
    ("msg_step", msg_step),
    ("msg_file_request", msg_file_request),
    ("msg_auth", msg_auth),
    ("safetensors_header", safetensors_header),
    ("config_json", config_json),
    ("slice_manifest", slice_manifest),
    ("cli_args", cli_args),
    ("sampler", sampler),
];

/// Origin names used in error messages.
const SAFETENSORS_ORIGIN: &str = "fuzz/model.safetensors";
const CONFIG_ORIGIN: &str = "fuzz/config.json";

/// Exercise an error's `Display` (it formats values read off the wire).
fn render(e: &dyn std::fmt::Display) {
    let _ = e.to_string();
}

/// A zeroed frame payload buffer, as receivers use (`[u8; MAX_PAYLOAD]`).
fn payload_buf() -> Box<[u8; MAX_PAYLOAD]> {
    vec![0u8; MAX_PAYLOAD]
        .into_boxed_slice()
        .try_into()
        .expect("MAX_PAYLOAD-long slice")
}

/// `data` with the payload and header checksum of every frame rewritten to
/// the correct values (frames walked by the header's `payload_len`, clamped
/// to the bytes left). Mutated inputs thereby get past spec F2/F9 to the
/// field checks behind them, which a fuzzer would otherwise almost never
/// reach.
fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    let mut pos = 0usize;
    while v.len() - pos >= HEADER_LEN {
        let plen = u32::from_le_bytes([v[pos + 24], v[pos + 25], v[pos + 26], v[pos + 27]]);
        let start = pos + HEADER_LEN;
        let end = start + (plen as usize).min(v.len() - start);
        let pc = checksum32(&v[start..end]);
        v[pos + 28..pos + 32].copy_from_slice(&pc.to_le_bytes());
        let hc = checksum32(&v[pos..pos + 36]);
        v[pos + 36..pos + 40].copy_from_slice(&hc.to_le_bytes());
        pos = end;
    }
    v
}

// ---------------------------------------------------------------- frames --

/// `Header::decode` on the first 40 bytes (zero-padded), once as given and
/// once with the header checksum fixed. An Ok header must re-encode to the
/// same 40 bytes.
pub fn frame_header(data: &[u8]) -> bool {
    let mut b = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    b[..n].copy_from_slice(&data[..n]);
    let ok = header_once(&b);
    let hc = checksum32(&b[..36]);
    b[36..40].copy_from_slice(&hc.to_le_bytes());
    header_once(&b);
    ok
}

fn header_once(b: &[u8; HEADER_LEN]) -> bool {
    match Header::decode(b) {
        Ok(h) => {
            assert_eq!(&h.encode(), b, "decoded header re-encodes differently");
            assert!(h.validate().is_ok(), "decoded header fails validate()");
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// `read_frame` over the input as a byte stream, frame after frame until
/// an error or a clean end of stream, as given and with checksums fixed.
/// Every Ok frame must re-encode (`write_frame`) to the bytes it was read
/// from; single-chunk payloads also go through their message decoder. Ok
/// means: all frames and messages decoded and the stream ended at a frame
/// boundary.
pub fn frame_stream(data: &[u8]) -> bool {
    let ok = stream_once(data);
    stream_once(&fix_checksums(data));
    ok
}

fn stream_once(data: &[u8]) -> bool {
    let mut buf = payload_buf();
    let mut rest: &[u8] = data;
    let mut all_ok = true;
    loop {
        let start = data.len() - rest.len();
        match frame::read_frame(&mut rest, &mut buf) {
            Ok((h, payload)) => {
                let consumed = &data[start..data.len() - rest.len()];
                let mut again = Vec::new();
                frame::write_frame(&mut again, &h, payload)
                    .expect("a decoded frame must be writable");
                assert_eq!(again, consumed, "frame re-encodes differently: {h:?}");
                if h.chunk_count == 1 {
                    all_ok &= message(h.kind, payload);
                }
            }
            Err(frame::FrameError::Truncated {
                part: "header",
                got: 0,
                ..
            }) => return all_ok,
            Err(e) => {
                render(&e);
                return false;
            }
        }
    }
}

/// The message decoder for a single-frame payload of `kind`.
fn message(kind: Kind, payload: &[u8]) -> bool {
    match kind {
        Kind::Hello | Kind::HelloAck => msg_hello(payload),
        Kind::Reject | Kind::Error => msg_reject(payload),
        Kind::Step => msg_step(payload),
        Kind::FileRequest => msg_file_request(payload),
        Kind::Stop | Kind::Heartbeat => match msg::expect_empty(payload) {
            Ok(()) => true,
            Err(e) => {
                render(&e);
                false
            }
        },
        Kind::Auth => msg_auth(payload),
        // Raw f32 / file bytes: no payload structure.
        Kind::Partial | Kind::Reduced | Kind::Logits | Kind::FileChunk => true,
    }
}

/// Most f32 values a `frame_recv_f32s` receiver expects: two full chunks
/// and a bit, so multi-chunk messages are reachable.
pub const RECV_MAX_F32S: usize = 2 * MAX_PAYLOAD / 4 + 16;

/// `recv_f32s_into` with a fixed-size out buffer. Input: `kind` u8 (index
/// into `Kind::ALL`, mod 12), `step` u32 LE, `n` u32 LE (values expected,
/// mod `RECV_MAX_F32S + 1`; the receiver's length comes from this prefix,
/// never from the frames), then the frame stream. Run as given and with
/// checksums fixed. An Ok message must re-send (`send_f32s` with the
/// returned first header) to exactly the bytes consumed.
pub fn frame_recv_f32s(data: &[u8]) -> bool {
    if data.len() < 9 {
        return false;
    }
    let kind = Kind::ALL[data[0] as usize % Kind::ALL.len()];
    let step = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let n = u32::from_le_bytes([data[5], data[6], data[7], data[8]]) as usize % (RECV_MAX_F32S + 1);
    let stream = &data[9..];
    let ok = recv_once(kind, step, n, stream);
    recv_once(kind, step, n, &fix_checksums(stream));
    ok
}

fn recv_once(kind: Kind, step: u32, n: usize, stream: &[u8]) -> bool {
    let mut buf = payload_buf();
    let mut out = vec![0f32; RECV_MAX_F32S];
    let mut rest: &[u8] = stream;
    match frame::recv_f32s_into(&mut rest, kind, step, &mut out[..n], &mut buf) {
        Ok(first) => {
            assert_eq!((first.kind, first.step, first.chunk_index), (kind, step, 0));
            let consumed = &stream[..stream.len() - rest.len()];
            let mut again = Vec::new();
            frame::send_f32s(&mut again, &first, &out[..n])
                .expect("a received f32 message must be sendable");
            assert!(
                again == consumed,
                "received f32 message ({n} values, first header {first:?}) re-sends differently"
            );
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

// ------------------------------------------------------- wire payloads --

/// Most values a `wire_payload` receiver expects (a prefill of 64 tokens
/// at dim 64, and ragged tails).
pub const WIRE_MAX_VALUES: usize = 4096;

/// An allreduce payload (spec W2-W6). Input: `dtype` u8 (index into
/// `WireDtype::ALL`, mod 3), `n` u16 LE (values the plan expects, mod
/// `WIRE_MAX_VALUES + 1`), then the payload bytes. `wire::decode` must
/// accept exactly `encoded_len(n)` bytes and, for q8_0, yield only finite
/// values a block can carry. The same bytes read as f32 values then go
/// through `wire::encode` and back: f32 exactly, f16 as `half` rounds one
/// value, q8_0 within `wire::q8_0_error_bound` per block or refused as
/// spec W6 says.
pub fn wire_payload(data: &[u8]) -> bool {
    if data.len() < 3 {
        return false;
    }
    let dtype = WireDtype::ALL[data[0] as usize % WireDtype::ALL.len()];
    let n = u16::from_le_bytes([data[1], data[2]]) as usize % (WIRE_MAX_VALUES + 1);
    let bytes = &data[3..];
    let mut out = vec![0f32; n];
    let ok = match wire::decode(dtype, bytes, &mut out) {
        Ok(()) => {
            assert_eq!(bytes.len() as u64, dtype.encoded_len(n));
            if dtype == WireDtype::Q8_0 {
                assert!(
                    out.iter().all(|v| v.is_finite() && v.abs() <= wire::Q8_0_MAX_ABS),
                    "q8_0 decoded a value no block carries"
                );
                // What rank 0 would send back re-encodes and decodes.
                let mut again = Vec::new();
                wire::encode(dtype, &out, &mut again).expect("decoded q8_0 values re-encode");
                assert_eq!(again.len(), bytes.len());
            }
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    };
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .take(WIRE_MAX_VALUES)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    wire_round_trip(dtype, &x);
    ok
}

fn wire_round_trip(dtype: WireDtype, x: &[f32]) {
    let mut bytes = Vec::new();
    match wire::encode(dtype, x, &mut bytes) {
        Ok(()) => {
            assert_eq!(bytes.len() as u64, dtype.encoded_len(x.len()));
            let mut y = vec![0f32; x.len()];
            wire::decode(dtype, &bytes, &mut y).expect("an encoded payload decodes");
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in xb.iter().zip(yb) {
                    let want = match dtype {
                        WireDtype::F32 => *a,
                        WireDtype::F16 => half::f16::from_f32(*a).to_f32(),
                        WireDtype::Q8_0 => {
                            let bound = wire::q8_0_error_bound(amax);
                            assert!((a - b).abs() <= bound, "q8_0: {a} -> {b} (amax {amax})");
                            continue;
                        }
                    };
                    assert!(
                        want.to_bits() == b.to_bits() || (want.is_nan() && b.is_nan()),
                        "{dtype}: {a} -> {b}, want {want}"
                    );
                }
            }
        }
        Err(WireError::NonFinite { index }) => {
            assert_eq!(dtype, WireDtype::Q8_0);
            assert_eq!(x.iter().position(|v| !v.is_finite()), Some(index));
        }
        Err(WireError::Range { index, value }) => {
            assert_eq!(dtype, WireDtype::Q8_0);
            assert_eq!(x[index].to_bits(), value.to_bits());
            assert!(value.abs() > wire::Q8_0_MAX_ABS, "{value} refused");
        }
        Err(e) => panic!("{dtype}: encode failed with {e}"),
    }
}

// -------------------------------------------------------------- messages --

/// `Hello::decode`; Ok must re-encode byte-identically.
pub fn msg_hello(data: &[u8]) -> bool {
    match Hello::decode(data) {
        Ok(m) => {
            assert_eq!(&m.encode()[..], data, "Hello re-encodes differently");
            assert!(m.world_size >= 1 && m.rank < m.world_size);
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// `Reject::decode` (also `Error`); Ok must re-encode byte-identically.
pub fn msg_reject(data: &[u8]) -> bool {
    match Reject::decode(data) {
        Ok(m) => {
            let again = m.encode().expect("a decoded Reject must encode");
            assert_eq!(again, data, "Reject re-encodes differently");
            assert_eq!(Reject::truncated(&m.reason), m);
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// `Step::decode`; Ok must re-encode byte-identically.
pub fn msg_step(data: &[u8]) -> bool {
    match Step::decode(data) {
        Ok(m) => {
            let again = m.encode().expect("a decoded Step must encode");
            assert_eq!(again, data, "Step re-encodes differently");
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// `FileRequest::decode`; Ok must re-encode byte-identically.
pub fn msg_file_request(data: &[u8]) -> bool {
    match FileRequest::decode(data) {
        Ok(m) => {
            assert_eq!(&m.encode()[..], data, "FileRequest re-encodes differently");
            assert!(m.len >= 1 && m.len <= frame::MAX_MESSAGE);
            assert!(m.offset.checked_add(m.len).is_some());
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// `Auth::decode`; Ok must re-encode byte-identically.
pub fn msg_auth(data: &[u8]) -> bool {
    match msg::Auth::decode(data) {
        Ok(m) => {
            assert_eq!(&m.encode()[..], data, "Auth re-encodes differently");
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

// ----------------------------------------------------------- safetensors --

/// `safetensors::parse_header` on the input as a whole file, then
/// `SafeTensors::from_bytes`. Every Ok tensor must lie inside the data
/// area, have `len == product(shape) * dtype size`, rank <= MAX_RANK, and
/// not overlap another; `from_bytes` must agree and hand out exactly `len`
/// bytes per tensor.
pub fn safetensors_header(data: &[u8]) -> bool {
    use tpi::model::safetensors::{parse_header, SafeTensors, MAX_RANK};
    let ok = match parse_header(data, SAFETENSORS_ORIGIN) {
        Ok(tensors) => {
            let hlen = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
            let data_start = 8 + hlen as usize;
            let mut spans = Vec::with_capacity(tensors.len());
            for t in &tensors {
                assert!(t.shape.len() <= MAX_RANK, "{t:?}: rank");
                let want = t
                    .shape
                    .iter()
                    .try_fold(t.dtype.size(), |a, &d| a.checked_mul(d));
                assert_eq!(want, Some(t.len), "{t:?}: len vs shape");
                assert!(t.offset >= data_start, "{t:?}: before the data area");
                let end = t.offset.checked_add(t.len).expect("offset + len overflows");
                assert!(end <= data.len(), "{t:?}: past the end of the file");
                spans.push((t.offset, end));
            }
            spans.sort_unstable();
            for w in spans.windows(2) {
                assert!(w[1].0 >= w[0].1, "overlapping tensors {w:?}");
            }
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    };
    match SafeTensors::from_bytes(data, SAFETENSORS_ORIGIN) {
        Ok(st) => {
            assert!(ok, "from_bytes accepts what parse_header rejects");
            for t in st.tensors() {
                assert_eq!(st.bytes(t).len(), t.len, "{t:?}: bytes()");
            }
        }
        Err(e) => {
            assert!(!ok, "from_bytes rejects what parse_header accepts: {e}");
            render(&e);
        }
    }
    ok
}

// ---------------------------------------------------------------- config --

/// `Config::from_json`. Input: config.json bytes, optionally followed by a
/// NUL byte and generation_config.json bytes (non-UTF-8 is rejected before
/// the decoder, as reading the file would). An Ok config must satisfy the
/// shape invariants the engine relies on, and its RoPE frequencies must be
/// `head_dim / 2` finite non-negative numbers (an infinite one turns every
/// rotated q/k into NaN).
pub fn config_json(data: &[u8]) -> bool {
    use tpi::model::config::Config;
    let (cfg, generation) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(cfg) = std::str::from_utf8(cfg) else {
        return false;
    };
    let Ok(generation) = generation.map(std::str::from_utf8).transpose() else {
        return false;
    };
    match Config::from_json(cfg, generation, CONFIG_ORIGIN) {
        Ok(c) => {
            assert!(c.dim >= 1 && c.hidden_dim >= 1 && c.n_layers >= 1 && c.vocab_size >= 1);
            assert!(c.n_heads >= 1 && c.n_kv_heads >= 1 && c.n_heads % c.n_kv_heads == 0);
            assert!(c.head_dim >= 2 && c.head_dim % 2 == 0 && c.max_seq_len >= 1);
            assert!(
                c.norm_eps.is_finite() && c.norm_eps > 0.0,
                "norm_eps {}",
                c.norm_eps
            );
            assert!(c.rope_theta.is_finite() && c.rope_theta > 1.0);
            let f = c.rope_inv_freq();
            assert_eq!(f.len(), c.head_dim / 2);
            assert!(
                f.iter().all(|x| x.is_finite() && *x >= 0.0),
                "non-finite or negative RoPE frequency from an accepted config: \
                 rope_theta {} scaling {:?} head_dim {} -> {:?}",
                c.rope_theta,
                c.rope_scaling,
                c.head_dim,
                f.iter().find(|x| !(x.is_finite() && **x >= 0.0))
            );
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

// ----------------------------------------------------------------- slice --

/// `split::manifest::decode_manifest`; an Ok manifest must re-encode
/// (`encode_manifest`) byte-identically and keep the structure the decoder
/// promises: aligned, ordered, non-overlapping blocks, tensors inside their
/// block.
pub fn slice_manifest(data: &[u8]) -> bool {
    use tpi::split::manifest::{decode_manifest, encode_manifest, BLOCK_ALIGN, TENSOR_ALIGN};
    match decode_manifest(data) {
        Ok(m) => {
            assert!(m.world_size >= 1 && m.rank < m.world_size);
            let mut prev_end = 0u64;
            for b in &m.blocks {
                assert!(b.offset % BLOCK_ALIGN == 0 && b.len % BLOCK_ALIGN == 0 && b.len > 0);
                assert!(b.offset >= prev_end, "{b:?}: overlaps the previous block");
                prev_end = b.offset.checked_add(b.len).expect("block end overflows");
                let mut t_end = 0u64;
                for t in &b.tensors {
                    assert!(t.offset % TENSOR_ALIGN == 0 && t.offset >= t_end, "{t:?}");
                    t_end = t
                        .offset
                        .checked_add(t.byte_len())
                        .expect("tensor end overflows");
                    assert!(t_end <= b.len, "{t:?}: past its block ({} bytes)", b.len);
                }
            }
            assert!(
                encode_manifest(&m) == data,
                "manifest re-encodes differently"
            );
            true
        }
        Err(e) => {
            render(&e);
            false
        }
    }
}

/// The command line: NUL-separated arguments through clap and tpi's own
/// checks (ranges, flag combinations, id lists). Ok = accepted.
pub fn cli_args(data: &[u8]) -> bool {
    use clap::Parser;
    let args = std::iter::once("tpi-run".to_string()).chain(
        data.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned()),
    );
    let Ok(a) = tpi::cli::Args::try_parse_from(args) else {
        return false;
    };
    let ok = tpi::cli::check_args(&a).is_ok();
    if ok {
        let (m, g) = (&a.model, &a.gen.sampling);
        assert!(m.world_size >= 1 && m.world_size <= tpi::cli::MAX_WORLD);
        assert!(m.threads.is_none_or(|t| (1..=tpi::cli::MAX_THREADS).contains(&t)));
        assert!(g.temperature >= 0.0 && g.temperature.is_finite());
        assert!(g.top_p > 0.0 && g.top_p <= 1.0);
    }
    ok
}

/// The sampler on any settings and logits: temperature, top-p (f32 bits),
/// top-k, seed, then the logits (f32 bits). It must pick an id below the
/// vocabulary, and a finite logit whenever there is one.
pub fn sampler(data: &[u8]) -> bool {
    use tpi::engine::sampler::{Sampler, SamplerConfig};
    let word = |i: usize| -> [u8; 4] {
        std::array::from_fn(|j| data.get(i * 4 + j).copied().unwrap_or(0))
    };
    let cfg = SamplerConfig {
        temperature: f32::from_le_bytes(word(0)),
        top_p: f32::from_le_bytes(word(1)),
        top_k: u32::from_le_bytes(word(2)) as usize,
        seed: u32::from_le_bytes(word(3)) as u64,
    };
    let logits: Vec<f32> = data
        .get(16..)
        .unwrap_or(&[])
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut s = Sampler::new(cfg);
    for _ in 0..2 {
        let id = s.sample(&logits) as usize;
        assert!(id < logits.len().max(1), "id {id} of {}", logits.len());
        if logits.iter().any(|l| l.is_finite()) {
            assert!(logits[id].is_finite(), "picked {} at {id}", logits[id]);
        }
    }
    !logits.is_empty()
}
