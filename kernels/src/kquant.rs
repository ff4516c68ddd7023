//! ggml's K-quant super-blocks Q4_K and Q6_K (the weights of GGUF
//! `Q4_K_M` / `Q6_K` files) and their 8-bit activation block Q8_K: the
//! formats, the reference quantizers and dequantizers, the scalar block
//! dot products and the scalar GEMV that every SIMD path is tested against.
//!
//! # Formats (byte-compatible with ggml's `block_q4_K` / `block_q6_K` / `block_q8_K`)
//!
//! A super-block holds [`QK_K`] = 256 weights in sub-blocks, each with its
//! own small integer scale; one f16 (f32 for Q8_K) scales the super-block.
//!
//! | block | bytes | layout |
//! |---|---|---|
//! | [`BlockQ4_K`] | 144 | `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 x 6-bit scale `sc`, 8 x 6-bit min `m`), `qs: [u8; 128]` |
//! | [`BlockQ6_K`] | 210 | `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits), `scales: [i8; 16]`, `d: f16` |
//! | [`BlockQ8_K`] | 292 | `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` (sums of 16 `qs` each) |
//!
//! Value of element `e` (`0 <= e < 256`):
//!
//! ```text
//! Q4_K: sub-block s = e / 32 (8 of 32), c = e / 64, l = e % 32
//!       q = qs[32 c + l] & 0xF  if s even,  qs[32 c + l] >> 4  if s odd   (0..=15)
//!       x = (d * sc[s]) * q - dmin * m[s]
//!       sc[s], m[s] for s < 4: scales[s] & 63, scales[s + 4] & 63
//!                   for s >= 4: (scales[s + 4] & 0xF) | (scales[s - 4] >> 6) << 4,
//!                               (scales[s + 4] >> 4)  | (scales[s] >> 6) << 4
//! Q6_K: half h = e / 128, k = (e % 128) / 32, l = e % 32
//!       low  = ql[64 h + l + 32 (k & 1)] >> 4 (k >> 1)  & 0xF
//!       high = qh[32 h + l] >> 2 k & 3
//!       x = (d * scales[e / 16]) * ((low | high << 4) - 32)
//! Q8_K: x = d * qs[e]
//! ```
//!
//! The quantizers are ggml's reference ones (`quantize_row_q4_K_ref`,
//! `quantize_row_q6_K_ref`, `quantize_row_q8_K_ref` in `ggml-quants.c`),
//! the f32 operations in the same order, so a row quantized here has the
//! bytes llama.cpp writes (checked in `kernels/tests/kquant.rs` against
//! ggml itself through `tools/kquant_fixture.py`, on x86-64 and under
//! qemu on aarch64 and armv7). Rust never fuses `a * b + c`; a ggml built with FMA
//! contraction in `ggml-quants.c` could round a least-squares fit
//! differently (the x86-64 `libggml-base` of the fixture has no FMA).
//!
//! # GEMV with Q8_K activations
//!
//! As llama.cpp does, `x` is quantized to Q8_K once per GEMV
//! ([`quantize_row_q8_k`]) and every weight super-block meets one activation
//! super-block in exact integer sums:
//!
//! ```text
//! for r in rows:
//!     sum = 0.0                                           (f32)
//!     for b in super-blocks of the row:
//!         Q4_K: isum = sum_s sc[s] * sum_{e in s} q_e qx_e   (i32, |.| <= 256 * 15 * 63 * 128 < 2^25)
//!               msum = sum_s m[s] * (bsums[2s] + bsums[2s+1]) (i32, |.| <= 8 * 63 * 4096 < 2^22)
//!               sum += (d_w d_x) * f32(isum) - (dmin_w d_x) * f32(msum)
//!         Q6_K: isum = sum_e scales[e / 16] (q_e - 32) qx_e  (i32, |.| <= 256 * 128 * 32 * 128 < 2^28)
//!               sum += (d_w d_x) * f32(isum)
//!     y[r] = sum
//! ```
//!
//! ggml's generic `ggml_vec_dot_q4_K_q8_K` computes the same integers
//! (8 partial lanes per super-block) and the same scales `d = d_w d_x`,
//! `dmin = dmin_w d_x`; here each super-block's integers are summed whole
//! and converted to f32 once, which the SIMD paths reproduce operation for
//! operation: they equal this scalar twin bit for bit.
//!
//! `bsums` must be the sums of the activation quants (as
//! [`quantize_row_q8_k`] makes them): Q4_K's mins use them in every path,
//! and the AVX2 Q6_K path takes its `- 32` offset from them. Any `qs` byte
//! (-128 included) is allowed.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Weights per super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// 256 weights as `(d sc) q - dmin m` with 4-bit `q` and 6-bit per-32
/// scales and mins (ggml `block_q4_K`, 144 bytes); see the module docs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_K {
    /// Scale of the sub-block scales, f16 little-endian.
    pub d: f16,
    /// Scale of the sub-block mins, f16 little-endian.
    pub dmin: f16,
    /// 8 scales and 8 mins of 6 bits, packed ([`BlockQ4_K::scale_min`]).
    pub scales: [u8; 12],
    /// Two 4-bit quants per byte: byte `32 c + l` holds elements
    /// `64 c + l` (low nibble) and `64 c + 32 + l` (high nibble).
    pub qs: [u8; QK_K / 2],
}

/// 256 weights as `(d scales[e / 16]) (q - 32)` with 6-bit `q` (ggml
/// `block_q6_K`, 210 bytes); see the module docs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6_K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// One signed scale per 16 weights.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale, f16 little-endian.
    pub d: f16,
}

/// 256 activations as `d qs[e]`, with the sums of each 16 quants (ggml
/// `block_q8_K`, 292 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_K {
    /// Scale (f32, not f16).
    pub d: f32,
    /// Quantized values.
    pub qs: [i8; QK_K],
    /// `bsums[j] = sum of qs[16 j..16 j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

// ggml's sizes (`static_assert(sizeof(block_q4_K) == 2*sizeof(ggml_half) + K_SCALE_SIZE + QK_K/2)` etc.).
const _: () = assert!(core::mem::size_of::<BlockQ4_K>() == 144);
const _: () = assert!(core::mem::size_of::<BlockQ6_K>() == 210);
const _: () = assert!(core::mem::size_of::<BlockQ8_K>() == 292);

// Arrays longer than 32 have no `Default`: all-zero blocks.
impl Default for BlockQ4_K {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl Default for BlockQ6_K {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl Default for BlockQ8_K {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl BlockQ4_K {
    /// Sub-block `s`'s 6-bit `(scale, min)` (ggml's `get_scale_min_k4`).
    ///
    /// # Panics
    /// If `s >= 8`.
    #[inline]
    pub fn scale_min(&self, s: usize) -> (u8, u8) {
        let q = &self.scales;
        if s < 4 {
            (q[s] & 63, q[s + 4] & 63)
        } else {
            (
                (q[s + 4] & 0xF) | ((q[s - 4] >> 6) << 4),
                (q[s + 4] >> 4) | ((q[s] >> 6) << 4),
            )
        }
    }

    /// The 8 scales then the 8 mins, unpacked four bytes at a time (the
    /// form the SIMD paths widen in one step).
    #[inline]
    pub fn scales_mins(&self) -> [u8; 16] {
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const TOP2: u32 = 0x0303_0303;
        let w = |i: usize| u32::from_le_bytes(self.scales[4 * i..4 * i + 4].try_into().unwrap()); // ok: 4 of the 12 scale bytes
        let (a, b, c) = (w(0), w(1), w(2));
        // Bytes 0..4: scales 0..4; 4..8: mins 0..4; 8..12: the low nibbles
        // of scales 4..8 and high nibbles of mins 4..8; the top two bits of
        // bytes 0..8 are the high bits of scales / mins 4..8.
        let sc_lo = a & LOW6;
        let sc_hi = (c & LOW4) | (((a >> 6) & TOP2) << 4);
        let m_lo = b & LOW6;
        let m_hi = ((c >> 4) & LOW4) | (((b >> 6) & TOP2) << 4);
        let mut out = [0u8; 16];
        for (i, v) in [sc_lo, sc_hi, m_lo, m_hi].into_iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Element `e`'s 4-bit quant.
    ///
    /// # Panics
    /// If `e >= 256`.
    #[inline]
    pub fn q(&self, e: usize) -> u8 {
        let byte = self.qs[32 * (e / 64) + e % 32];
        if (e / 32).is_multiple_of(2) {
            byte & 0xF
        } else {
            byte >> 4
        }
    }
}

impl BlockQ6_K {
    /// Element `e`'s quant as a signed value in `-32..=31` (`q - 32`).
    ///
    /// # Panics
    /// If `e >= 256`.
    #[inline]
    pub fn get(&self, e: usize) -> i8 {
        let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = (self.ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xF;
        let high = (self.qh[32 * h + l] >> (2 * k)) & 3;
        (low | (high << 4)) as i8 - 32
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, by adding
/// `1.5 * 2^23` and reading the low mantissa bits. Meant for `|v| < 2^22`;
/// outside (and for NaN) it returns what ggml's does, bit for bit.
#[inline]
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// IEEE `sqrt` (correctly rounded, as C's `sqrtf`), without std: the
/// integer square root of the mantissa scaled to 48 bits, rounded to 24.
fn sqrt(v: f32) -> f32 {
    if v.is_nan() || v < 0.0 {
        return f32::NAN;
    }
    if v == 0.0 || v == f32::INFINITY {
        return v;
    }
    let bits = v.to_bits();
    let (e, f) = ((bits >> 23) as i32, u64::from(bits & 0x7f_ffff));
    // v = m 2^p exactly, p even, m < 2^25.
    let (mut m, mut p) = if e == 0 {
        (f, -149)
    } else {
        (f | 1 << 23, e - 150)
    };
    if p % 2 != 0 {
        m <<= 1;
        p -= 1;
    }
    // M = m 4^k in [2^46, 2^48), so r = isqrt(M) has exactly 24 bits.
    let len = 64 - m.leading_zeros() as i32;
    let s = (47 - len) + ((47 - len) & 1);
    let big = m << s;
    let mut r = big.isqrt();
    // sqrt(M) = r + f, f in [0, 1), never 1/2: round up when f > 1/2,
    // i.e. M > r^2 + r + 1/4, i.e. M - r^2 > r.
    if big - r * r > r {
        r += 1;
    }
    // The result is in [2^-75, 2^64): normal, and r <= 2^24 is exact in f32.
    let scale = f32::from_bits((((p - s) / 2 + 127) as u32) << 23);
    r as f32 * scale
}

/// `max > 0 ? n / max : 0`, as ggml's Q4_K quantizer inverts the largest
/// sub-block scale and min.
#[inline]
fn inverse_of_max(n: f32, max: f32) -> f32 {
    if max > 0.0 {
        n / max
    } else {
        0.0
    }
}

/// Quantizes `x` to Q8_K as ggml's `quantize_row_q8_K_ref`: per
/// super-block, the signed value `max` of largest magnitude (the first on
/// ties), `iscale = -127 / max`, `q = min(127, nearest_int(iscale x))`,
/// `d = 1 / iscale`, `bsums` the sums of 16. An all-zero super-block gets
/// `d = 0` and zero quants and sums (ggml leaves its `bsums` unwritten).
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [BlockQ8_K]) {
    assert_eq!(x.len(), QK_K * out.len(), "quantize_row_q8_k: shape");
    for (xb, b) in x.chunks_exact(QK_K).zip(out) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8_K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            // C's `(int8_t)MIN(127, v)`: |iscale x| <= 127 except when
            // `max` is so small that `iscale` overflows; the cast then
            // wraps as C's conversion does on every compiler ggml supports.
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q16) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q16.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// `out[256 b + e] = d qs[e]` for every super-block `b`.
///
/// # Panics
/// If `out.len() != 256 * blocks.len()`.
pub fn dequantize_row_q8_k(blocks: &[BlockQ8_K], out: &mut [f32]) {
    assert_eq!(out.len(), QK_K * blocks.len(), "dequantize_row_q8_k: shape");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        for (o, &q) in o.iter_mut().zip(&b.qs) {
            *o = b.d * f32::from(q);
        }
    }
}

/// `out[256 b + e] = (d sc) q_e - dmin m` for every super-block `b` (as
/// ggml's `dequantize_row_q4_K`, the same f32 operations).
///
/// # Panics
/// If `out.len() != 256 * blocks.len()`.
pub fn dequantize_row_q4_k(blocks: &[BlockQ4_K], out: &mut [f32]) {
    assert_eq!(out.len(), QK_K * blocks.len(), "dequantize_row_q4_k: shape");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for (s, o) in o.chunks_exact_mut(32).enumerate() {
            let (sc, m) = b.scale_min(s);
            let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
            for (l, o) in o.iter_mut().enumerate() {
                *o = d1 * f32::from(b.q(32 * s + l)) - m1;
            }
        }
    }
}

/// `out[256 b + e] = (d scales[e / 16]) (q_e - 32)` for every super-block
/// `b` (as ggml's `dequantize_row_q6_K`).
///
/// # Panics
/// If `out.len() != 256 * blocks.len()`.
pub fn dequantize_row_q6_k(blocks: &[BlockQ6_K], out: &mut [f32]) {
    assert_eq!(out.len(), QK_K * blocks.len(), "dequantize_row_q6_k: shape");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (e, o) in o.iter_mut().enumerate() {
            *o = d * f32::from(b.scales[e / 16]) * f32::from(b.get(e));
        }
    }
}

/// The exact integer sums of one Q4_K super-block with one Q8_K
/// super-block: `(isum, msum)` of the module docs.
pub fn block_sums_q4_k(w: &BlockQ4_K, x: &BlockQ8_K) -> (i32, i32) {
    let (mut isum, mut msum) = (0i32, 0i32);
    for s in 0..QK_K / 32 {
        let (sc, m) = w.scale_min(s);
        let dot: i32 = (32 * s..32 * s + 32)
            .map(|e| i32::from(w.q(e)) * i32::from(x.qs[e]))
            .sum();
        isum += i32::from(sc) * dot;
        msum += i32::from(m) * (i32::from(x.bsums[2 * s]) + i32::from(x.bsums[2 * s + 1]));
    }
    (isum, msum)
}

/// The exact integer sum of one Q6_K super-block with one Q8_K
/// super-block: `sum_e scales[e / 16] (q_e - 32) qx_e`.
pub fn block_sum_q6_k(w: &BlockQ6_K, x: &BlockQ8_K) -> i32 {
    (0..QK_K)
        .map(|e| i32::from(w.scales[e / 16]) * i32::from(w.get(e)) * i32::from(x.qs[e]))
        .sum()
}

/// One Q4_K super-block times one Q8_K super-block:
/// `(d_w d_x) f32(isum) - (dmin_w d_x) f32(msum)` (see the module docs).
pub fn block_dot_q4_k_q8_k(w: &BlockQ4_K, x: &BlockQ8_K) -> f32 {
    let (isum, msum) = block_sums_q4_k(w, x);
    let d = w.d.to_f32() * x.d;
    let dmin = w.dmin.to_f32() * x.d;
    d * isum as f32 - dmin * msum as f32
}

/// One Q6_K super-block times one Q8_K super-block: `(d_w d_x) f32(isum)`.
pub fn block_dot_q6_k_q8_k(w: &BlockQ6_K, x: &BlockQ8_K) -> f32 {
    w.d.to_f32() * x.d * block_sum_q6_k(w, x) as f32
}

/// Scalar `y = W x` on Q4_K weights, `W` row-major in super-blocks
/// `[y.len()][xq.len()]`, `xq` the Q8_K activations (see the module docs
/// for the loop).
///
/// # Panics
/// If `w.len() != y.len() * xq.len()`.
pub fn gemv_q4_k(w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv_blocks(w, xq, y, block_dot_q4_k_q8_k)
}

/// Scalar `y = W x` on Q6_K weights, as [`gemv_q4_k`].
///
/// # Panics
/// If `w.len() != y.len() * xq.len()`.
pub fn gemv_q6_k(w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv_blocks(w, xq, y, block_dot_q6_k_q8_k)
}

/// `(nb, rows)` of a batched K-quant product of `t` tokens, from the
/// lengths: `xq` is `t` rows of `nb` super-blocks, `y` is `t` rows of
/// `rows` outputs, `w` is `rows x nb` super-blocks. `t == 0` needs empty
/// `xq` and `y` (and gives `(0, 0)`: any `w`).
///
/// # Panics
/// If the lengths do not fit.
pub fn gemm_shape(w_len: usize, xq_len: usize, t: usize, y_len: usize) -> (usize, usize) {
    if t == 0 {
        assert!(
            xq_len == 0 && y_len == 0,
            "gemm_k: 0 tokens with inputs or outputs"
        );
        return (0, 0);
    }
    let (nb, rows) = (xq_len / t, y_len / t);
    assert!(
        xq_len == t * nb && y_len == t * rows && w_len == rows * nb,
        "gemm_k: {t} tokens, {xq_len} activation super-blocks, {y_len} outputs, {w_len} weight super-blocks"
    );
    (nb, rows)
}

/// Scalar `y[i] = W xq[i]` for `t` tokens on Q4_K weights (prompt
/// prefill): `xq` is `t` rows of `nb` Q8_K super-blocks, `W` is `rows x
/// nb` super-blocks, `y` is `t x rows`, token-major. The GEMV once per
/// token: the twin every batched path is tested against.
///
/// # Panics
/// If the shapes do not fit ([`gemm_shape`]).
pub fn gemm_q4_k(w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    let (nb, rows) = gemm_shape(w.len(), xq.len(), t, y.len());
    for i in 0..t {
        gemv_q4_k(
            w,
            &xq[i * nb..(i + 1) * nb],
            &mut y[i * rows..(i + 1) * rows],
        );
    }
}

/// Scalar `y[i] = W xq[i]` for `t` tokens on Q6_K weights, as
/// [`gemm_q4_k`].
///
/// # Panics
/// If the shapes do not fit ([`gemm_shape`]).
pub fn gemm_q6_k(w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    let (nb, rows) = gemm_shape(w.len(), xq.len(), t, y.len());
    for i in 0..t {
        gemv_q6_k(
            w,
            &xq[i * nb..(i + 1) * nb],
            &mut y[i * rows..(i + 1) * rows],
        );
    }
}

/// The scalar GEMV loop, given each super-block's f32 term.
#[inline(always)]
fn gemv_blocks<W>(w: &[W], xq: &[BlockQ8_K], y: &mut [f32], dot: impl Fn(&W, &BlockQ8_K) -> f32) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_k: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(nb)) {
        let mut sum = 0.0f32;
        for (wb, xb) in row.iter().zip(xq) {
            sum += dot(wb, xb);
        }
        *yr = sum;
    }
}

/// Quantizes `x` to Q4_K as ggml's `quantize_row_q4_K_ref`: per sub-block
/// of 32 a weighted least-squares fit of `scale q + min` (`q` in 0..=15,
/// weights `sqrt(mean(x^2)) + |x|`, 21 candidate scales), then the 8
/// scales and 8 mins quantized to 6 bits against their maxima (`d`,
/// `dmin`) and the quants recomputed with the stored scales.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q4_k(x: &[f32], out: &mut [BlockQ4_K]) {
    assert_eq!(x.len(), QK_K * out.len(), "quantize_row_q4_k: shape");
    for (xb, b) in x.chunks_exact(QK_K).zip(out) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for (s, (xs, ls)) in xb.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
            let xs: &[f32; 32] = xs.try_into().unwrap(); // ok: chunks of 32
            let sum_x2 = xs.iter().fold(0.0f32, |a, &v| a + v * v);
            let av_x = sqrt(sum_x2 / 32.0);
            let weights = core::array::from_fn(|i| av_x + xs[i].abs());
            (scales[s], mins[s]) = fit_scale_min(xs, &weights, ls.try_into().unwrap()); // ok: chunks of 32
            if scales[s] > max_scale {
                max_scale = scales[s];
            }
            if mins[s] > max_min {
                max_min = mins[s];
            }
        }
        let inv_scale = inverse_of_max(63.0, max_scale);
        let inv_min = inverse_of_max(63.0, max_min);
        let mut packed = [0u8; 12];
        for s in 0..8 {
            // C's `(uint8_t)nearest_int(..)`: a wrapping cast, then the clamp.
            let ls = (nearest_int(inv_scale * scales[s]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[s]) as u8).min(63);
            if s < 4 {
                packed[s] = ls;
                packed[s + 4] = lm;
            } else {
                packed[s + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                packed[s - 4] |= (ls >> 4) << 6;
                packed[s] |= (lm >> 4) << 6;
            }
        }
        b.scales = packed;
        b.d = f16::from_f32(max_scale / 63.0);
        b.dmin = f16::from_f32(max_min / 63.0);
        for (s, (xs, ls)) in xb.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
            let (sc, m) = b.scale_min(s);
            let d = b.d.to_f32() * f32::from(sc);
            if d == 0.0 {
                // ggml keeps the fit's quants for a sub-block scaled to 0.
                continue;
            }
            let dm = b.dmin.to_f32() * f32::from(m);
            for (q, &v) in ls.iter_mut().zip(xs) {
                *q = nearest_int((v + dm) / d).clamp(0, 15) as u8;
            }
        }
        for (c, qs) in b.qs.chunks_exact_mut(32).enumerate() {
            for (i, q) in qs.iter_mut().enumerate() {
                *q = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// ggml's `make_qkx2_quants(32, 15, x, weights, L, &the_min, Laux, -1,
/// 0.1, 20, false)`: `x ~ scale q - the_min`, `q` in 0..=15 written to
/// `l`; returns `(scale, the_min)`.
fn fit_scale_min(x: &[f32; 32], weights: &[f32; 32], l: &mut [u8; 32]) -> (f32, f32) {
    const NMAX: f32 = 15.0;
    const RMIN: f32 = -1.0;
    const RDELTA: f32 = 0.1;
    const NSTEP: i32 = 20;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let iscale = NMAX / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((q, &v), &w) in l.iter_mut().zip(x).zip(weights) {
        *q = nearest_int(iscale * (v - min)).clamp(0, 15) as u8;
        let diff = scale * f32::from(*q) + min - v;
        best_error += w * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=NSTEP {
        // `min` is the best fit so far, as in ggml (it moves when a
        // candidate wins).
        let iscale = (RMIN + RDELTA * is as f32 + NMAX) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((q, &v), &w) in laux.iter_mut().zip(x).zip(weights) {
            *q = nearest_int(iscale * (v - min)).clamp(0, 15) as u8;
            let lf = f32::from(*q);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&q, &v), &w) in laux.iter().zip(x).zip(weights) {
                let diff = this_scale * f32::from(q) + this_min - v;
                cur_error += w * (diff * diff);
            }
            if cur_error < best_error {
                *l = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Quantizes `x` to Q6_K as ggml's `quantize_row_q6_K_ref`: per 16
/// weights a scale fitted by weighted (`x^2`) least squares over 19
/// candidates (`q` in -32..=31), then the 16 scales quantized to i8
/// against the one of largest magnitude (`d = max / -128`) and the quants
/// recomputed with the stored scales.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_q6_k(x: &[f32], out: &mut [BlockQ6_K]) {
    assert_eq!(x.len(), QK_K * out.len(), "quantize_row_q6_k: shape");
    for (xb, b) in x.chunks_exact(QK_K).zip(out) {
        // Quants offset by 32 (0..=63).
        let mut l = [0u8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for (s, (xs, ls)) in xb.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            scales[s] = fit_scale(xs.try_into().unwrap(), ls.try_into().unwrap()); // ok: chunks of 16
            if scales[s].abs() > max_abs_scale {
                max_abs_scale = scales[s].abs();
                max_scale = scales[s];
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *b = BlockQ6_K::zeroed();
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for (q, &s) in b.scales.iter_mut().zip(&scales) {
            *q = nearest_int(iscale * s).min(127) as i8;
        }
        for (s, (xs, ls)) in xb.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            let d = b.d.to_f32() * f32::from(b.scales[s]);
            if d == 0.0 {
                continue;
            }
            for (q, &v) in ls.iter_mut().zip(xs) {
                *q = (nearest_int(v / d).clamp(-32, 31) + 32) as u8;
            }
        }
        for h in 0..2 {
            let (ql, qh, lh) = (
                &mut b.ql[64 * h..64 * h + 64],
                &mut b.qh[32 * h..32 * h + 32],
                &l[128 * h..128 * h + 128],
            );
            for i in 0..32 {
                let q = |k: usize| lh[32 * k + i];
                ql[i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                ql[i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}

/// Below this largest magnitude a group is all zeros (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qx_quants(16, 32, x, L, 1, NULL)`: `x ~ scale q`, `q` in
/// -32..=31 written to `l` offset by 32, the scale chosen among 19
/// candidates by the weighted (`x^2`) least-squares error; returns it.
fn fit_scale(x: &[f32; 16], l: &mut [u8; 16]) -> f32 {
    const NMAX: f32 = 32.0;
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-32, 31);
    // sum_i w x l and sum_i w l^2 with w = x^2, in ggml's order.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let lf = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        (sumlx, suml2)
    };
    let iscale = -NMAX / max;
    for (q, &v) in l.iter_mut().zip(x) {
        *q = (quant(iscale, v) + 32) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(NMAX + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (q, &v) in l.iter_mut().zip(x) {
                *q = (quant(iscale, v) + 32) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;

    #[test]
    fn sqrt_is_correctly_rounded() {
        let mut s = 0x1234_5678_9abc_def0u64;
        for i in 0..200_000u32 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Every exponent, subnormals included, and some small integers.
            let v = if i < 1000 {
                i as f32
            } else {
                f32::from_bits((s as u32) & 0x7fff_ffff)
            };
            if v.is_nan() {
                continue;
            }
            assert_eq!(
                sqrt(v).to_bits(),
                std::primitive::f32::sqrt(v).to_bits(),
                "{v:e}"
            );
        }
        assert!(sqrt(-1.0).is_nan() && sqrt(f32::NAN).is_nan());
        assert_eq!(sqrt(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        for (v, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-3.51, -4),
        ] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }
}
