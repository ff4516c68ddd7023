//! Allreduce payloads on the wire (spec W1-W7 in [`crate::net`]): the
//! [`WireDtype`] rank 0 chose, and the codec between a message's f32
//! values and its bytes. A leaf: socket agnostic, byte slices in and out.
//!
//! ```text
//! encode(dtype, x[0..n]) -> bytes              decode(dtype, bytes) -> x'[0..n]
//!   f32:  x as LE f32                  4n        exact
//!   f16:  f16(x) round-to-nearest-even 2n        every f16 valid (NaN, inf included)
//!   q8_0: per 32 values: d = f16(amax/127),      checks every block: d finite and
//!         q = round(x / d) (ggml ref)  34*ceil(n/32)   >= 0, q != -128, padding q == 0
//! ```
//!
//! Decoding reads through plain byte chunks (`from_le_bytes`, no alignment
//! assumed), converts halves in stack batches with `half`'s slice
//! conversion (F16C / NEON where the CPU has it) and never allocates: the
//! caller's `out` has the length the plan gives (spec W2).

use half::f16;
use half::slice::HalfFloatSliceExt;
use std::fmt;
use tpi_kernels::quant::{dequantize_row_q8_0, quantize_row_q8_0, BlockQ8_0, QK};

/// Bytes of one Q8_0 block: f16 scale + 32 x i8 (spec W4).
pub const Q8_0_BLOCK_BYTES: usize = 2 + QK;
/// Values converted per stack batch (f16) or blocks per batch (q8_0).
const BATCH: usize = 256;

/// How allreduce payloads (Partial, Reduced) travel; wire code in the Hello
/// (spec M1, W1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WireDtype {
    /// Little-endian f32, exact.
    #[default]
    F32 = 1,
    /// IEEE half, rounded to nearest even.
    F16 = 2,
    /// ggml Q8_0 blocks of 32 values.
    Q8_0 = 3,
}

impl WireDtype {
    pub const ALL: [WireDtype; 3] = [WireDtype::F32, WireDtype::F16, WireDtype::Q8_0];

    /// The flag value: `f32`, `f16`, `q8_0`.
    pub fn name(self) -> &'static str {
        match self {
            WireDtype::F32 => "f32",
            WireDtype::F16 => "f16",
            WireDtype::Q8_0 => "q8_0",
        }
    }

    pub fn from_name(s: &str) -> Option<WireDtype> {
        WireDtype::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Wire code (spec M1): 1 f32, 2 f16, 3 q8_0.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The dtype of wire code `c`, if any (0 is "not stated", not a dtype).
    pub fn from_code(c: u8) -> Option<WireDtype> {
        WireDtype::ALL.into_iter().find(|d| d.code() == c)
    }

    /// Encoded bytes of a message of `n` values (spec W2): `4n`, `2n`,
    /// `34 * ceil(n / 32)`. Saturates, so an absurd `n` fails the
    /// frame layer's `MAX_MESSAGE` check instead of wrapping.
    pub fn encoded_len(self, n: usize) -> u64 {
        let n = n as u64;
        match self {
            WireDtype::F32 => n.saturating_mul(4),
            WireDtype::F16 => n.saturating_mul(2),
            WireDtype::Q8_0 => n
                .div_ceil(QK as u64)
                .saturating_mul(Q8_0_BLOCK_BYTES as u64),
        }
    }
}

impl fmt::Display for WireDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a payload cannot be, encoding or decoding. Indices count values of
/// the message (encode) or blocks (decode).
#[derive(Debug, Clone, PartialEq)]
pub enum WireError {
    /// The bytes are not `encoded_len(n)` long for the `n` values the plan
    /// expects (spec W2).
    Length { expected: u64, got: u64 },
    /// A q8_0 scale that is NaN, infinite or negative (spec W5).
    Scale { block: usize, bits: u16 },
    /// A q8_0 quant of -128, which the quantizer never makes (spec W5).
    Quant { block: usize, index: usize },
    /// A non-zero quant in the padding of the last block (spec W4).
    Padding {
        block: usize,
        index: usize,
        value: i8,
    },
    /// Encoding: a NaN or infinity q8_0 cannot carry (spec W6).
    NonFinite { index: usize },
    /// Encoding: a block whose largest magnitude makes its scale overflow
    /// f16 (`amax / 127 > 65504`, spec W6).
    Range { index: usize, value: f32 },
}

/// Largest magnitude a q8_0 block can carry: `127 * f16::MAX`.
pub const Q8_0_MAX_ABS: f32 = 127.0 * 65504.0;

/// Largest `|x - decode(encode(x))|` in a q8_0 block whose largest
/// magnitude is `amax` (ggml's quantizer): half a step `d = amax / 127`,
/// plus 127 times the f16 rounding of `d` (relative 2^-11, at least half
/// the smallest subnormal 2^-25, so tiny blocks may decode to 0), with a
/// 0.1% margin for the f32 arithmetic.
pub fn q8_0_error_bound(amax: f32) -> f32 {
    let d = amax / 127.0;
    (0.5 * d + 127.0 * (d * 2f32.powi(-11)).max(2f32.powi(-25))) * 1.001
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Length { expected, got } => {
                write!(f, "payload of {got} bytes, expected {expected}")
            }
            WireError::Scale { block, bits } => write!(
                f,
                "q8_0 block {block}: scale {} (bits {bits:#06x}) is not a finite non-negative f16",
                f16::from_bits(*bits)
            ),
            WireError::Quant { block, index } => {
                write!(f, "q8_0 block {block}: quant {index} is -128 (outside -127..=127)")
            }
            WireError::Padding { block, index, value } => write!(
                f,
                "q8_0 block {block}: padding quant {index} is {value}, must be 0"
            ),
            WireError::NonFinite { index } => {
                write!(f, "value {index} is NaN or infinite, which q8_0 cannot carry")
            }
            WireError::Range { index, value } => write!(
                f,
                "value {index} ({value:e}) is beyond what a q8_0 block carries (|x| <= {Q8_0_MAX_ABS:e}); use --wire-dtype f32"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Encodes `src` into `out` (cleared first; its capacity is reused).
/// Fails only for q8_0, on a value it cannot carry (spec W6); `out` then
/// holds unspecified bytes.
pub fn encode(dtype: WireDtype, src: &[f32], out: &mut Vec<u8>) -> Result<(), WireError> {
    out.clear();
    match dtype {
        WireDtype::F32 => {
            for v in src {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        WireDtype::F16 => {
            let mut halves = [f16::ZERO; BATCH];
            for chunk in src.chunks(BATCH) {
                let h = &mut halves[..chunk.len()];
                h.convert_from_f32_slice(chunk);
                for v in h.iter() {
                    out.extend_from_slice(&v.to_bits().to_le_bytes());
                }
            }
        }
        WireDtype::Q8_0 => encode_q8_0(src, out)?,
    }
    Ok(())
}

/// Spec W4, W6: ggml's `quantize_row_q8_0_ref` over consecutive blocks of
/// 32, the last padded with zeros (they never raise `amax`); a block whose
/// scale is 0 in f16 sends zero quants.
fn encode_q8_0(src: &[f32], out: &mut Vec<u8>) -> Result<(), WireError> {
    // Spec W6: q8_0 maps NaN to 0 and inf to a NaN block; refuse both.
    if let Some(index) = src.iter().position(|v| !v.is_finite()) {
        return Err(WireError::NonFinite { index });
    }
    let mut blocks = [BlockQ8_0::default(); BATCH];
    let mut tail = [0.0f32; QK];
    for (c, chunk) in src.chunks(BATCH * QK).enumerate() {
        let full = chunk.len() / QK;
        let n_blocks = chunk.len().div_ceil(QK);
        quantize_row_q8_0(&chunk[..full * QK], &mut blocks[..full]);
        if full < n_blocks {
            let rest = &chunk[full * QK..];
            tail[..rest.len()].copy_from_slice(rest);
            tail[rest.len()..].fill(0.0);
            quantize_row_q8_0(&tail, &mut blocks[full..n_blocks]);
        }
        for (i, b) in blocks[..n_blocks].iter_mut().enumerate() {
            // Spec W4: a scale that is 0 in f16 carries zeros. (With `amax`
            // below about 127 * 2^-128 the f32 `1 / d` overflows and the
            // reference's casts saturate, to -128 among others.)
            if b.d == f16::ZERO {
                b.qs = [0; QK];
            }
            if !b.d.is_finite() {
                // Spec W6: the scale overflowed f16; name the largest value.
                let at = (c * BATCH + i) * QK;
                let block = &src[at..src.len().min(at + QK)];
                let (j, value) =
                    block
                        .iter()
                        .copied()
                        .enumerate()
                        .fold(
                            (0, 0.0f32),
                            |m, (j, v)| if v.abs() > m.1.abs() { (j, v) } else { m },
                        );
                return Err(WireError::Range {
                    index: at + j,
                    value,
                });
            }
            out.extend_from_slice(&b.d.to_bits().to_le_bytes());
            out.extend(b.qs.iter().map(|&q| q as u8));
        }
    }
    Ok(())
}

/// Decodes `bytes` into exactly `out.len()` values (the length comes from
/// the plan, spec W2) and checks every q8_0 block (spec W5). On error `out`
/// holds unspecified values.
pub fn decode(dtype: WireDtype, bytes: &[u8], out: &mut [f32]) -> Result<(), WireError> {
    let expected = dtype.encoded_len(out.len());
    // spec W2: exactly encoded_len(n) bytes.
    if bytes.len() as u64 != expected {
        return Err(WireError::Length {
            expected,
            got: bytes.len() as u64,
        });
    }
    match dtype {
        WireDtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WireDtype::F16 => {
            let mut halves = [f16::ZERO; BATCH];
            for (o, b) in out.chunks_mut(BATCH).zip(bytes.chunks(2 * BATCH)) {
                let h = &mut halves[..o.len()];
                for (h, b) in h.iter_mut().zip(b.chunks_exact(2)) {
                    *h = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                }
                h.convert_to_f32_slice(o);
            }
        }
        WireDtype::Q8_0 => decode_q8_0(bytes, out)?,
    }
    Ok(())
}

/// Spec W4, W5: every block checked, then `qs[j] * d` as ggml dequantizes.
fn decode_q8_0(bytes: &[u8], out: &mut [f32]) -> Result<(), WireError> {
    let mut values = [0.0f32; QK];
    for (block, (raw, o)) in bytes
        .chunks_exact(Q8_0_BLOCK_BYTES)
        .zip(out.chunks_mut(QK))
        .enumerate()
    {
        let bits = u16::from_le_bytes([raw[0], raw[1]]);
        let d = f16::from_bits(bits);
        // spec W5: the scale is the quantizer's amax / 127: finite, >= +0.
        if !d.is_finite() || d.is_sign_negative() {
            return Err(WireError::Scale { block, bits });
        }
        let mut b = BlockQ8_0 { d, qs: [0; QK] };
        for (index, (q, &r)) in b.qs.iter_mut().zip(&raw[2..]).enumerate() {
            *q = r as i8;
            // spec W5: the quantizer keeps |q| <= 127.
            if *q == i8::MIN {
                return Err(WireError::Quant { block, index });
            }
            // spec W4: the last block's padding is zeros.
            if index >= o.len() && *q != 0 {
                return Err(WireError::Padding {
                    block,
                    index,
                    value: *q,
                });
            }
        }
        dequantize_row_q8_0(std::slice::from_ref(&b), &mut values);
        o.copy_from_slice(&values[..o.len()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(dtype: WireDtype, x: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        encode(dtype, x, &mut bytes).expect("encode");
        assert_eq!(bytes.len() as u64, dtype.encoded_len(x.len()));
        let mut out = vec![f32::NAN; x.len()];
        decode(dtype, &bytes, &mut out).expect("decode");
        out
    }

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
            .collect()
    }

    #[test]
    fn names_codes_and_lengths() {
        for d in WireDtype::ALL {
            assert_eq!(WireDtype::from_name(d.name()), Some(d));
            assert_eq!(WireDtype::from_code(d.code()), Some(d));
        }
        assert_eq!(WireDtype::from_code(0), None);
        assert_eq!(WireDtype::from_code(4), None);
        assert_eq!(WireDtype::from_name("q4_0"), None);
        let dim = 2048;
        assert_eq!(WireDtype::F32.encoded_len(dim), 8192);
        assert_eq!(WireDtype::F16.encoded_len(dim), 4096);
        assert_eq!(WireDtype::Q8_0.encoded_len(dim), 2176);
        assert_eq!(WireDtype::Q8_0.encoded_len(0), 0);
        assert_eq!(WireDtype::Q8_0.encoded_len(1), 34);
        assert_eq!(WireDtype::Q8_0.encoded_len(33), 68);
        assert_eq!(WireDtype::F32.encoded_len(usize::MAX), u64::MAX);
    }

    #[test]
    fn f32_is_exact_and_f16_rounds_to_nearest_even_like_half() {
        let mut x = ramp(1000);
        x.extend([
            65504.0,
            65520.0,
            -1e9,
            1e-8,
            5.9604645e-8,
            f32::NAN,
            f32::INFINITY,
        ]);
        // Ties: 1 + 2^-11 lies halfway between two halves; RNE picks the even one.
        x.extend([1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)]);
        let y = round_trip(WireDtype::F32, &x);
        assert!(y.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()));
        let y = round_trip(WireDtype::F16, &x);
        for (a, b) in y.iter().zip(&x) {
            let want = f16::from_f32(*b).to_f32();
            assert!(
                a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan()),
                "{b}: {a} vs {want}"
            );
        }
        assert_eq!(f16::from_f32(1.0 + 2f32.powi(-11)).to_f32(), 1.0);
        assert_eq!(
            f16::from_f32(1.0 + 3.0 * 2f32.powi(-11)).to_f32(),
            1.0 + 2f32.powi(-9)
        );
        assert!(y[1000 + 1].is_infinite(), "65520 rounds to inf in f16");
    }

    #[test]
    fn q8_0_matches_the_kernels_reference_quantizer_and_pads_the_tail() {
        for n in [0, 1, 31, 32, 33, 64, 100, BATCH * QK + 5, 3 * BATCH * QK] {
            let x = ramp(n);
            let mut bytes = Vec::new();
            encode(WireDtype::Q8_0, &x, &mut bytes).expect("encode");
            // Reference: the kernels' quantizer over the zero-padded message.
            let mut padded = x.clone();
            padded.resize(n.div_ceil(QK) * QK, 0.0);
            let mut blocks = vec![BlockQ8_0::default(); n.div_ceil(QK)];
            quantize_row_q8_0(&padded, &mut blocks);
            let want: Vec<u8> = blocks
                .iter()
                .flat_map(|b| {
                    let mut v = b.d.to_bits().to_le_bytes().to_vec();
                    v.extend(b.qs.iter().map(|&q| q as u8));
                    v
                })
                .collect();
            assert_eq!(bytes, want, "n {n}");
            let mut y = vec![0.0; n];
            decode(WireDtype::Q8_0, &bytes, &mut y).expect("decode");
            let mut full = vec![0.0; padded.len()];
            dequantize_row_q8_0(&blocks, &mut full);
            assert_eq!(y, full[..n], "n {n}");
        }
    }

    #[test]
    fn q8_0_blocks_of_denormals_send_zero_quants() {
        // Found by the wire_payload fuzz target: 1 / (amax / 127) overflows
        // f32 and the reference quantizer's casts saturate to -128.
        let x: Vec<f32> = (0..32).map(|i| -1e-38 * (1 + i % 3) as f32).collect();
        let mut bytes = Vec::new();
        encode(WireDtype::Q8_0, &x, &mut bytes).expect("encode");
        assert_eq!(bytes, [0u8; 34]);
        let mut y = [1.0f32; 32];
        decode(WireDtype::Q8_0, &bytes, &mut y).expect("decode");
        assert_eq!(y, [0.0; 32]);
    }

    #[test]
    fn q8_0_refuses_non_finite_and_overflowing_values() {
        let mut x = ramp(70);
        x[40] = f32::NAN;
        let mut out = Vec::new();
        assert_eq!(
            encode(WireDtype::Q8_0, &x, &mut out),
            Err(WireError::NonFinite { index: 40 })
        );
        x[40] = f32::NEG_INFINITY;
        assert_eq!(
            encode(WireDtype::Q8_0, &x, &mut out),
            Err(WireError::NonFinite { index: 40 })
        );
        x[40] = -9e6;
        assert_eq!(
            encode(WireDtype::Q8_0, &x, &mut out),
            Err(WireError::Range {
                index: 40,
                value: -9e6
            })
        );
        x[40] = 8.0e6; // amax / 127 = 62992 fits
        assert!(encode(WireDtype::Q8_0, &x, &mut out).is_ok());
        // f16 carries non-finite values as they are (as f32 does).
        x[40] = f32::NAN;
        assert!(round_trip(WireDtype::F16, &x)[40].is_nan());
    }

    fn q8_bytes(x: &[f32]) -> Vec<u8> {
        let mut b = Vec::new();
        encode(WireDtype::Q8_0, x, &mut b).expect("encode");
        b
    }

    #[test]
    fn q8_0_decoder_rejects_malformed_blocks() {
        let x = ramp(40); // two blocks, the second with 24 padding quants
        let good = q8_bytes(&x);
        let mut out = vec![0.0; 40];
        let dec = |b: &[u8], out: &mut [f32]| decode(WireDtype::Q8_0, b, out);
        assert_eq!(dec(&good, &mut out), Ok(()));
        for (bits, what) in [
            (0x7e00u16, "NaN"),
            (0x7c00, "inf"),
            (0xfc00, "-inf"),
            (0x8400, "negative"),
        ] {
            let mut b = good.clone();
            b[34..36].copy_from_slice(&bits.to_le_bytes());
            assert_eq!(
                dec(&b, &mut out),
                Err(WireError::Scale { block: 1, bits }),
                "{what}"
            );
        }
        let mut b = good.clone();
        b[2 + 5] = 0x80;
        assert_eq!(
            dec(&b, &mut out),
            Err(WireError::Quant { block: 0, index: 5 })
        );
        let mut b = good.clone();
        b[34 + 2 + 8] = 3; // value 40 of 40: padding
        assert_eq!(
            dec(&b, &mut out),
            Err(WireError::Padding {
                block: 1,
                index: 8,
                value: 3
            })
        );
        // Lengths come from the plan: one byte off either way, or 41 values.
        assert!(matches!(
            dec(&good[..67], &mut out),
            Err(WireError::Length {
                expected: 68,
                got: 67
            })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            dec(&long, &mut out),
            Err(WireError::Length { .. })
        ));
        let mut out41 = vec![0.0; 65];
        assert!(matches!(
            dec(&good, &mut out41),
            Err(WireError::Length { expected: 102, .. })
        ));
        let s = WireError::Scale {
            block: 1,
            bits: 0x7e00,
        }
        .to_string();
        assert!(s.contains("block 1") && s.contains("NaN"), "{s}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// ggml's bound, [`q8_0_error_bound`], from tiny to huge blocks.
        #[test]
        fn q8_0_error_is_within_half_a_step(x in prop::collection::vec(-1e4f32..1e4, 0..300), scale in prop::sample::select(vec![1.0f32, 1e-3, 1e-7, 1e-12, 1e-40, 800.0])) {
            let x: Vec<f32> = x.iter().map(|v| v * scale).collect();
            let y = round_trip(WireDtype::Q8_0, &x);
            for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let bound = q8_0_error_bound(amax);
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!((a - b).abs() <= bound, "{} -> {} (amax {})", a, b, amax);
                }
            }
        }

        #[test]
        fn f16_matches_per_element_conversion(bits in prop::collection::vec(any::<u32>(), 0..600)) {
            let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            let y = round_trip(WireDtype::F16, &x);
            for (a, b) in y.iter().zip(&x) {
                let want = f16::from_f32(*b).to_f32();
                prop_assert!(a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan()));
            }
        }

        #[test]
        fn decoders_never_panic_and_accept_only_what_they_promise(dtype in prop::sample::select(WireDtype::ALL.to_vec()), n in 0usize..100, bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut out = vec![0.0; n];
            if decode(dtype, &bytes, &mut out).is_ok() {
                prop_assert_eq!(bytes.len() as u64, dtype.encoded_len(n));
                if dtype == WireDtype::Q8_0 {
                    prop_assert!(out.iter().all(|v| v.is_finite() && v.abs() <= Q8_0_MAX_ABS));
                }
            }
        }
    }
}
