//! ggml's Q8_0 and Q4_0 blocks: the formats, the reference quantizers and
//! dequantizers, and the scalar GEMV with 8-bit activations that every SIMD
//! path is tested against.
//!
//! # Formats (byte-compatible with ggml's `block_q8_0` / `block_q4_0`)
//!
//! | block | bytes | layout | value of element `j` (`0 <= j < 32`) |
//! |---|---|---|---|
//! | [`BlockQ8_0`] | 34 | `d: f16 LE`, `qs: [i8; 32]` | `qs[j] * d` |
//! | [`BlockQ4_0`] | 18 | `d: f16 LE`, `qs: [u8; 16]` | `(q - 8) * d`, `q = qs[j] & 0xF` for `j < 16`, `qs[j - 16] >> 4` for `j >= 16` |
//!
//! The quantizers are ggml's reference ones (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref` in `ggml-quants.c`), the ones that make model
//! files, so a row quantized here has the bytes llama.cpp would write.
//! `kernels/tests/quant.rs` checks them byte for byte against the `gguf`
//! Python package (`tools/quant_fixture.py`).
//!
//! # GEMV with 8-bit activations
//!
//! As llama.cpp does, `x` is quantized to Q8_0 once per GEMV
//! ([`quantize_row_q8_0`]) and every weight block meets one activation
//! block in an integer dot product:
//!
//! ```text
//! for r in rows:
//!     sum = 0.0                                    (f32)
//!     for b in blocks of the row:                  (cols / 32 blocks)
//!         isum = sum_j qw[b][j] * qx[b][j]          (i32, exact: |isum| <= 32 * 128 * 127)
//!         sum += d_w[b] * d_x[b] * isum as f32       (one f32 scaling per block)
//!     y[r] = sum
//! ```
//! The SIMD paths compute the same `isum` exactly (integer math) and differ
//! from this scalar twin only in the order of the f32 additions.
//!
//! # GEMM: a batch of tokens
//!
//! [`gemm_q8_0`] / [`gemm_q4_0`] compute `y[i] = W x[i]` for `t` tokens at
//! once (prompt prefill): `xq` holds the `t` activation rows of `nb`
//! blocks one after the other, `y` the `t` output rows (token-major, as
//! `engine::par` lays them out). The scalar twin is the GEMV per token;
//! SIMD paths read each weight block once for several tokens and differ
//! from it only in the order of the f32 additions.
//!
//! Activation blocks must hold `qs` in `-127..=127`, which
//! [`quantize_row_q8_0`] guarantees (`|x| * 127 / amax <= 127`): the x86
//! paths take the sign of each product from the weight byte and negate the
//! activation byte, and `-(-128)` does not fit in an i8. Weight blocks may
//! hold any byte.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Weights per block, for both formats (ggml's `QK8_0`, `QK4_0`).
pub const QK: usize = 32;

/// 32 weights as `qs[j] * d` (ggml `block_q8_0`, 34 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale, f16 little-endian.
    pub d: f16,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// 32 weights as `(q - 8) * d` with 4-bit `q` (ggml `block_q4_0`, 18 bytes):
/// element `j < 16` in the low nibble of `qs[j]`, element `j >= 16` in the
/// high nibble of `qs[j - 16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale, f16 little-endian.
    pub d: f16,
    /// Two 4-bit values per byte.
    pub qs: [u8; QK / 2],
}

// ggml's sizes (`static_assert(sizeof(block_q8_0) == sizeof(ggml_half) + QK8_0)`).
const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 18);

impl BlockQ4_0 {
    /// Element `j` as a signed value in `-8..=7` (`q - 8`).
    ///
    /// # Panics
    /// If `j >= 32`.
    #[inline]
    pub fn get(&self, j: usize) -> i8 {
        let q = if j < QK / 2 {
            self.qs[j] & 0x0F
        } else {
            self.qs[j - QK / 2] >> 4
        };
        q as i8 - 8
    }
}

/// `d != 0 ? 1 / d : 0`, as ggml computes the inverse scale.
#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Quantizes `x` to Q8_0 as ggml's `quantize_row_q8_0_ref`: per block
/// `d = amax / 127`, `q = round(x / d)` (half away from zero, computed as
/// `x * (1 / d)` in f32 with the unrounded `d`), `d` stored as f16.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), QK * out.len(), "quantize_row_q8_0: shape");
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = inverse(d);
        b.d = f16::from_f32(d);
        for (q, v) in b.qs.iter_mut().zip(xb) {
            // |v * id| <= 127 (plus rounding), except when `amax` is so
            // small (below 127 * 2^-128) that `1 / d` overflows: the clamp
            // keeps -128 out of every block (the x86 sign trick needs it).
            *q = round_half_away(v * id).clamp(-127.0, 127.0) as i8;
        }
    }
}

/// C's `roundf`: nearest integer, ties away from zero (`f32::round` needs std).
#[inline]
fn round_half_away(v: f32) -> f32 {
    // Below 2^23 in magnitude the fraction is exact; `t` truncates towards 0.
    let t = v as i32 as f32;
    let frac = v - t;
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// Quantizes `x` to Q4_0 as ggml's `quantize_row_q4_0_ref`: per block the
/// signed value `max` of largest magnitude (the first one on ties),
/// `d = max / -8`, `q = min(15, trunc(x * (1 / d) + 8.5))`, `d` stored as
/// f16.
///
/// # Panics
/// If `x.len() != 32 * out.len()`.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) {
    assert_eq!(x.len(), QK * out.len(), "quantize_row_q4_0: shape");
    for (xb, b) in x.chunks_exact(QK).zip(out) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = inverse(d);
        b.d = f16::from_f32(d);
        // x * id lies in [-8, 8], so x * id + 8.5 in [0.5, 16.5]: the cast
        // truncates as C's `(int8_t)` does, and only +8 needs the clamp.
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        let (lo, hi) = xb.split_at(QK / 2);
        for ((byte, &l), &h) in b.qs.iter_mut().zip(lo).zip(hi) {
            *byte = q(l) | (q(h) << 4);
        }
    }
}

/// `out[32 b + j] = qs[j] * d` for every block `b`.
///
/// # Panics
/// If `out.len() != 32 * blocks.len()`.
pub fn dequantize_row_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    assert_eq!(out.len(), QK * blocks.len(), "dequantize_row_q8_0: shape");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in o.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

/// `out[32 b + j] = (q_j - 8) * d` for every block `b`.
///
/// # Panics
/// If `out.len() != 32 * blocks.len()`.
pub fn dequantize_row_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    assert_eq!(out.len(), QK * blocks.len(), "dequantize_row_q4_0: shape");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (j, o) in o.iter_mut().enumerate() {
            *o = f32::from(b.get(j)) * d;
        }
    }
}

/// The integer dot product of one Q8_0 weight block with one activation
/// block: `sum_j w.qs[j] * x.qs[j]` (exact in i32).
pub fn block_dot_q8_0(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
    w.qs.iter()
        .zip(&x.qs)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// The integer dot product of one Q4_0 weight block with one activation
/// block: `sum_j (q_j - 8) * x.qs[j]` (exact in i32).
pub fn block_dot_q4_0(w: &BlockQ4_0, x: &BlockQ8_0) -> i32 {
    x.qs.iter()
        .enumerate()
        .map(|(j, &b)| i32::from(w.get(j)) * i32::from(b))
        .sum()
}

/// Scalar `y = W x` on Q8_0 weights, `W` row-major in blocks
/// `[y.len()][xq.len()]`, `xq` the Q8_0 activations (see the module docs
/// for the loop).
///
/// # Panics
/// If `w.len() != y.len() * xq.len()`.
pub fn gemv_q8_0(w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, |wb, xb| (wb.d.to_f32(), block_dot_q8_0(wb, xb)))
}

/// Scalar `y = W x` on Q4_0 weights, as [`gemv_q8_0`].
///
/// # Panics
/// If `w.len() != y.len() * xq.len()`.
pub fn gemv_q4_0(w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, |wb, xb| (wb.d.to_f32(), block_dot_q4_0(wb, xb)))
}

/// The scalar GEMV loop, given each block's `(d_w, isum)`.
#[inline(always)]
fn gemv_blocks<W>(
    w: &[W],
    xq: &[BlockQ8_0],
    y: &mut [f32],
    block: impl Fn(&W, &BlockQ8_0) -> (f32, i32),
) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_q: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(nb)) {
        let mut sum = 0.0f32;
        for (wb, xb) in row.iter().zip(xq) {
            let (dw, isum) = block(wb, xb);
            sum += dw * xb.d.to_f32() * isum as f32;
        }
        *yr = sum;
    }
}

/// `(nb, rows)` of a batched product of `t` tokens: `xq.len() = t * nb`,
/// `y.len() = t * rows`, `w.len() = rows * nb`. `t = 0` is an empty batch
/// (`xq` and `y` empty).
///
/// # Panics
/// If the lengths do not fit these shapes.
pub fn gemm_shape(w_len: usize, xq_len: usize, t: usize, y_len: usize) -> (usize, usize) {
    if t == 0 {
        assert!(
            xq_len == 0 && y_len == 0,
            "gemm_q: 0 tokens with inputs or outputs"
        );
        return (0, 0);
    }
    let (nb, rows) = (xq_len / t, y_len / t);
    assert!(
        xq_len == t * nb && y_len == t * rows && w_len == rows * nb,
        "gemm_q: {t} tokens, {xq_len} activation blocks, {y_len} outputs, {w_len} weight blocks"
    );
    (nb, rows)
}

/// Scalar `y[i] = W xq[i]` for `t` tokens on Q8_0 weights: `xq` is `t`
/// rows of `nb` blocks, `W` is `rows x nb` blocks, `y` is `t x rows`
/// (see the module docs). The GEMV once per token.
///
/// # Panics
/// If the shapes do not fit ([`gemm_shape`]).
pub fn gemm_q8_0(w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    let (nb, rows) = gemm_shape(w.len(), xq.len(), t, y.len());
    for i in 0..t {
        gemv_q8_0(
            w,
            &xq[i * nb..(i + 1) * nb],
            &mut y[i * rows..(i + 1) * rows],
        );
    }
}

/// Scalar `y[i] = W xq[i]` for `t` tokens on Q4_0 weights, as
/// [`gemm_q8_0`].
///
/// # Panics
/// If the shapes do not fit ([`gemm_shape`]).
pub fn gemm_q4_0(w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    let (nb, rows) = gemm_shape(w.len(), xq.len(), t, y.len());
    for i in 0..t {
        gemv_q4_0(
            w,
            &xq[i * nb..(i + 1) * nb],
            &mut y[i * rows..(i + 1) * rows],
        );
    }
}
