//! Q8_0 / Q4_0 GEMV with Q8_0 activations on aarch64, two ways of taking
//! the integer dot product of a 32-block:
//!
//! - `smull` + `sadalp` on base NEON ([`Neon`]): ggml's path for cores
//!   without dotprod, which is every Pi before the Pi 5 (Cortex-A53, A72);
//! - `sdot` ([`NeonDotprod`], ARMv8.2-A dotprod: Pi 5, RK3588): 16 byte
//!   pairs into 4 i32 lanes per instruction.
//!
//! Both run one loop, blocks of 4 rows sharing each activation load and
//! each scale widening; a row meets each block's scale once, as one exact
//! integer, as in the scalar twin (`quant::gemv_blocks`):
//!
//! ```text
//! for each group of R = 4 rows, then the last rows % 4 one at a time (R = 1):
//!     acc = 0                                          (1 q-reg of 4 x f32, lane i = row i)
//!     for b in blocks, one after the other:
//!         x = 2 x 16 i8 of activation block b          (loaded once for the R rows)
//!         w[i] = 2 x 16 i8 of row i's block b          (Q8_0 qs; Q4_0: low nibbles - 8, high nibbles - 8)
//!         s = f32(d_w[i] for i < R) * f32(d_x)         (4 x f32: one fcvtl widens the R scales)
//!         p[i] = dot(w[i], x) for i < R, 0 above       (4 x i32 each, lanes adding up to row i's isum)
//!         isum = addp(addp(p[0], p[1]), addp(p[2], p[3]))  (lane i = row i's isum, exact)
//!         acc += f32(isum) * s                         (|isum| <= 32 * 128 * 128 < 2^24: exact conversion)
//!     y[i] = acc[i]
//! ```
//! `dot` is 4 x (`smull` 8 x i16 products, `|w x| <= 128 * 128` fits;
//! `sadalp` adding adjacent pairs into the i32 lanes), or 2 x `sdot`.
//! Every byte value is exact on both paths, `-128` included (no sign
//! trick). No column tail: rows are whole blocks.
//!
//! Why this shape: scaling the 4 partial lanes of a block apart (the
//! kernel before this one) rounds `d_w d_x lane` on lanes that can be far
//! larger than the block's sum when they cancel, and missed the tests'
//! tolerance under qemu (a Q8_0 row off by 5e-5); three `addp` reduce 4
//! rows' lanes at once and leave the sums in one register, where an
//! `addv` per row would take four and leave them in four.
//! Each row adds its blocks in order, one FMA per block, as the scalar
//! twin adds them (FMA rounds once where the twin rounds twice). 4 rows
//! per pass load each activation block and widen its scale once instead
//! of 4 times, as the f32 NEON GEMV shares `x` (`bank::gemv`), and give
//! the one FMA chain 4 rows of integer work per link. Not yet measured on
//! ARM hardware (qemu timings say nothing about it).

use core::arch::aarch64::*;

use half::f16;

use super::dotprod::{sdot, NeonDotprod};
use super::neon::Neon;
use crate::arch::bank::Load;
use crate::quant::{BlockQ4_0, BlockQ8_0};

impl Neon {
    /// `y = W x`, Q8_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Neon::new` passed,
        // so the CPU has the feature `gemv_q8_0_smull` is compiled for.
        unsafe { gemv_q8_0_smull(w, xq, y) }
    }

    /// `y = W x`, Q4_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: as in `gemv_q8_0`.
        unsafe { gemv_q4_0_smull(w, xq, y) }
    }
}

impl NeonDotprod {
    /// `y = W x`, Q8_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `NeonDotprod::new`
        // passed, so the CPU has the features `gemv_q8_0_sdot` is compiled
        // for.
        unsafe { gemv_q8_0_sdot(w, xq, y) }
    }

    /// `y = W x`, Q4_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: as in `gemv_q8_0`.
        unsafe { gemv_q4_0_sdot(w, xq, y) }
    }
}

#[target_feature(enable = "neon")]
fn gemv_q8_0_smull(w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    // SAFETY: neon is this fn's target feature, and the closures are
    // compiled with it.
    unsafe { gemv(w, xq, y, |b| (b.d, load_q8(b)), |w, x| dot_smull(w, x)) }
}

#[target_feature(enable = "neon")]
fn gemv_q4_0_smull(w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    // SAFETY: as in `gemv_q8_0_smull`.
    unsafe { gemv(w, xq, y, |b| (b.d, load_q4(b)), |w, x| dot_smull(w, x)) }
}

#[target_feature(enable = "neon,dotprod")]
fn gemv_q8_0_sdot(w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    // SAFETY: neon and dotprod are this fn's target features, and the
    // closures are compiled with them.
    unsafe { gemv(w, xq, y, |b| (b.d, load_q8(b)), |w, x| dot_sdot(w, x)) }
}

#[target_feature(enable = "neon,dotprod")]
fn gemv_q4_0_sdot(w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    // SAFETY: as in `gemv_q8_0_sdot`.
    unsafe { gemv(w, xq, y, |b| (b.d, load_q4(b)), |w, x| dot_sdot(w, x)) }
}

/// The 32 values of a block as i8, in two 16-byte halves.
type Q32 = (int8x16_t, int8x16_t);

/// The loop of the module docs, given how to load a weight block (its
/// scale and values) and how to take a block's dot product.
///
/// # Safety
/// The CPU has NEON and the features `load_w` and `dot` are compiled for
/// (they are closures of the calling `#[target_feature]` fn, into which
/// this one is inlined).
///
/// # Panics
/// If `w.len() != y.len() * xq.len()`.
#[inline(always)]
unsafe fn gemv<W>(
    w: &[W],
    xq: &[BlockQ8_0],
    y: &mut [f32],
    load_w: impl Fn(&W) -> (f16, Q32),
    dot: impl Fn(Q32, Q32) -> int32x4_t,
) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_q: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let (y4, y1) = y.split_at_mut(y.len() / 4 * 4);
    let (w4, w1) = w.split_at(y4.len() * nb);
    for (yb, wb) in y4.chunks_exact_mut(4).zip(w4.chunks_exact(4 * nb)) {
        // SAFETY: CPU features per this fn's contract.
        yb.copy_from_slice(&unsafe { rows::<W, 4>(wb, xq, &load_w, &dot) });
    }
    for (yr, wr) in y1.iter_mut().zip(w1.chunks_exact(nb)) {
        // SAFETY: CPU features per this fn's contract.
        let [v] = unsafe { rows::<W, 1>(wr, xq, &load_w, &dot) };
        *yr = v;
    }
}

/// `R` rows of `W x` (`w`: R rows of `xq.len() > 0` blocks).
///
/// # Safety
/// As [`gemv`].
#[inline(always)]
unsafe fn rows<W, const R: usize>(
    w: &[W],
    xq: &[BlockQ8_0],
    load_w: &impl Fn(&W) -> (f16, Q32),
    dot: &impl Fn(Q32, Q32) -> int32x4_t,
) -> [f32; R] {
    let nb = xq.len();
    assert_eq!(w.len(), R * nb, "gemv_q: row block");
    let rows: [&[W]; R] = core::array::from_fn(|i| &w[i * nb..][..nb]);
    // SAFETY: NEON per this fn's contract.
    let mut acc = unsafe { vdupq_n_f32(0.0) };
    for (b, xb) in xq.iter().enumerate() {
        // SAFETY: CPU features per this fn's contract; `block` takes
        // references only.
        acc = unsafe { block(&rows, b, xb, acc, load_w, dot) };
    }
    let mut y = [0.0f32; 4];
    // SAFETY: `y` is 4 writable f32; st1 needs no alignment; NEON per
    // this fn's contract.
    unsafe { vst1q_f32(y.as_mut_ptr(), acc) };
    core::array::from_fn(|i| y[i])
}

/// `acc` (lane i = row i) plus block `b` of each of the `R` rows against
/// activation block `xb`: one exact integer per row, scaled once.
///
/// # Safety
/// As [`gemv`].
///
/// # Panics
/// If `b` is out of a row.
#[inline(always)]
unsafe fn block<W, const R: usize>(
    rows: &[&[W]; R],
    b: usize,
    xb: &BlockQ8_0,
    acc: float32x4_t,
    load_w: &impl Fn(&W) -> (f16, Q32),
    dot: &impl Fn(Q32, Q32) -> int32x4_t,
) -> float32x4_t {
    const { assert!(R <= 4, "one lane per row") };
    let ws: [(f16, Q32); R] = core::array::from_fn(|i| load_w(&rows[i][b]));
    let dw = core::array::from_fn(|i| if i < R { ws[i].0 } else { f16::ZERO });
    // SAFETY: NEON and the closures' features per this fn's contract.
    unsafe {
        let x = load_q8(xb);
        let dx = widen([xb.d, f16::ZERO, f16::ZERO, f16::ZERO]);
        let s = vmulq_laneq_f32::<0>(widen(dw), dx);
        let zero = vdupq_n_s32(0);
        let p: [int32x4_t; 4] =
            core::array::from_fn(|i| if i < R { dot(ws[i].1, x) } else { zero });
        let isum = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
        vfmaq_f32(acc, vcvtq_f32_s32(isum), s)
    }
}

/// Four f16 scales widened by the bank's `fcvtl`.
#[target_feature(enable = "neon")]
#[inline]
fn widen(h: [f16; 4]) -> float32x4_t {
    // SAFETY: `h` is 4 readable f16; neon per this fn's target feature.
    unsafe { <Neon as Load<f16>>::load_w(h.as_ptr()) }
}

/// The 32 bytes of an activation (or Q8_0 weight) block, in two halves.
#[target_feature(enable = "neon")]
#[inline]
fn load_q8(b: &BlockQ8_0) -> Q32 {
    let p = b.qs.as_ptr();
    // SAFETY: `b.qs` is 32 readable bytes: `p` and `p + 16` start 16 each;
    // ld1 needs no alignment.
    unsafe { (vld1q_s8(p), vld1q_s8(p.add(16))) }
}

/// The 32 weights of a Q4_0 block as `q - 8`: elements 0..16 (low
/// nibbles), elements 16..32 (high nibbles).
#[target_feature(enable = "neon")]
#[inline]
fn load_q4(b: &BlockQ4_0) -> Q32 {
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

/// A block's dot product on base NEON: 4 x i32 lanes summing to `isum`.
#[target_feature(enable = "neon")]
#[inline]
fn dot_smull(w: Q32, x: Q32) -> int32x4_t {
    dot16(dot16(vdupq_n_s32(0), w.0, x.0), w.1, x.1)
}

/// A block's dot product with dotprod: 4 x i32 lanes summing to `isum`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn dot_sdot(w: Q32, x: Q32) -> int32x4_t {
    sdot(sdot(vdupq_n_s32(0), w.0, x.0), w.1, x.1)
}
