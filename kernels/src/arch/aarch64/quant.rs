//! Q8_0 / Q4_0 GEMV with Q8_0 activations on base NEON (`smull` +
//! `sadalp`, ggml's path for cores without the dotprod extension, which
//! is every Pi before the Pi 5).
//!
//! One block pair per step, one row at a time:
//!
//! ```text
//! for r in rows:
//!     acc = 0                                        (1 q-reg: 4 x f32)
//!     for b in blocks:
//!         w0, w1 = 2 x 16 i8 (Q8_0 qs; Q4_0: low nibbles - 8, high nibbles - 8)
//!         x0, x1 = 2 x 16 i8 (activation qs)
//!         p = 0                                      (4 x i32)
//!         for (w, x) in (w0, x0), (w1, x1):
//!             p += pairwise(w[0..8] * x[0..8])        (smull: 8 x i16, |w x| <= 128 * 128 fits;
//!             p += pairwise(w[8..16] * x[8..16])       sadalp: adjacent pairs added into i32)
//!         acc += f32(p) * (d_w * d_x)                 (lanes < 2^24: exact conversion)
//!     y[r] = sum of acc's lanes
//! ```
//! Every byte value is exact here, `-128` included (no sign trick). No
//! column tail: rows are whole blocks. `sdot` (dotprod, ARMv8.2: Pi 5,
//! RK3588) is the next step, behind run-time detection.

use core::arch::aarch64::*;

use half::f16;

use super::neon::Neon;
use crate::arch::bank::Load;
use crate::quant::{BlockQ4_0, BlockQ8_0};

impl Neon {
    /// `y = W x`, Q8_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Neon::new` passed,
        // so the CPU has the feature `gemv_q8_0_k` is compiled for.
        unsafe { gemv_q8_0_k(w, xq, y) }
    }

    /// `y = W x`, Q4_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: as in `gemv_q8_0`.
        unsafe { gemv_q4_0_k(w, xq, y) }
    }
}

/// The product of two f16 scales, widened by the bank's `fcvtl`.
#[target_feature(enable = "neon")]
#[inline]
fn scale(a: f16, b: f16) -> f32 {
    let h = [a, b, f16::ZERO, f16::ZERO];
    // SAFETY: `h` is 4 readable f16; neon per this fn's target feature.
    let f = unsafe { <Neon as Load<f16>>::load_w(h.as_ptr()) };
    vgetq_lane_f32::<0>(f) * vgetq_lane_f32::<1>(f)
}

/// The 32 bytes of an activation (or Q8_0 weight) block, in two halves.
#[target_feature(enable = "neon")]
#[inline]
fn load_q8(b: &BlockQ8_0) -> (int8x16_t, int8x16_t) {
    let p = b.qs.as_ptr();
    // SAFETY: `b.qs` is 32 readable bytes: `p` and `p + 16` start 16 each;
    // ld1 needs no alignment.
    unsafe { (vld1q_s8(p), vld1q_s8(p.add(16))) }
}

/// The 32 weights of a Q4_0 block as `q - 8`: elements 0..16 (low
/// nibbles), elements 16..32 (high nibbles).
#[target_feature(enable = "neon")]
#[inline]
fn load_q4(b: &BlockQ4_0) -> (int8x16_t, int8x16_t) {
    // SAFETY: `b.qs` is 16 readable bytes; ld1 needs no alignment.
    let t = unsafe { vld1q_u8(b.qs.as_ptr()) };
    let eight = vdupq_n_s8(8);
    let lo = vreinterpretq_s8_u8(vandq_u8(t, vdupq_n_u8(0x0F)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(t));
    (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
}

/// `p` plus the pairwise-added products of 16 byte pairs (4 x i32).
#[target_feature(enable = "neon")]
#[inline]
fn dot16(p: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let p = vpadalq_s16(p, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
    vpadalq_s16(p, vmull_high_s8(w, x))
}

/// The loop of the module docs, given how to load a weight block.
#[target_feature(enable = "neon")]
#[inline]
fn gemv_blocks<W>(
    w: &[W],
    xq: &[BlockQ8_0],
    y: &mut [f32],
    load_w: impl Fn(&W) -> (f16, (int8x16_t, int8x16_t)),
) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_q: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(nb)) {
        let mut acc = vdupq_n_f32(0.0);
        for (wb, xb) in row.iter().zip(xq) {
            let (dw, (w0, w1)) = load_w(wb);
            let (x0, x1) = load_q8(xb);
            let p = dot16(dot16(vdupq_n_s32(0), w0, x0), w1, x1);
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), scale(dw, xb.d));
        }
        *yr = vaddvq_f32(acc);
    }
}

#[target_feature(enable = "neon")]
fn gemv_q8_0_k(w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, |b| (b.d, load_q8(b)))
}

#[target_feature(enable = "neon")]
fn gemv_q4_0_k(w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, |b| (b.d, load_q4(b)))
}
