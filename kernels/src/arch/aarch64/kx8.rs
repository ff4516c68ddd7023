//! GEMV on Q4_K rows interleaved by 8 ([`crate::kx8`]) with Q8_K
//! activations, on both NEON backends: rows `4h..4h + 4` are the four
//! 32-bit lanes of register `h` (`h < 2`) from the first product to the
//! stored `y`.
//!
//! ```text
//! for g in groups of 8 rows:
//!     sum = 0.0 (2 x 4 x f32)
//!     for b in super-blocks:
//!         for c < 4:
//!             for j < 8:                     32 bytes: 4 weights x 8 rows, two nibbles
//!                 lo, hi = q & 0x0F, q >> 4  (i8 0..=15; 2 q-regs each: rows 0..4, 4..8)
//!                 xl, xh = x[64c + 4j..+4], x[64c + 32 + 4j..+4]
//!                 smull: al16 += smlal/smlal2(lo, xl broadcast), ah16 likewise
//!                        (i16 lanes = 2 rows x 4 products; exact: 8 x 15 x 128 < 2^15)
//!                 sdot:  al = sdot(al, lo, xl as element j % 4 of x[64c + 16(j / 4)..+16])
//!                        (4 `sdot` by element per 16 activation bytes, i32)
//!             smull: al = addp(saddlp(al16 rows 0, 1), saddlp(al16 rows 2, 3)), ah likewise
//!             isum += al * sc[2c][r] + ah * sc[2c + 1][r]            (i32, `mla`)
//!         msum = sum_p m[2p..2p + 2][r] * (bsums pair 2p, 2p + 1)     (i32, then `addp`)
//!         sum += (d[r] d_x) f32(isum) - (dmin[r] d_x) f32(msum)     (the twin's operations)
//!     y[8g..8g + 8] = sum
//! ```
//!
//! Every integer is exact (`-128` activations included; `bsums` pair sums
//! are widened to i32 first, exact for any `bsums`), converted once
//! (`scvtf`, round to nearest as `as f32`) and met with the scales in the
//! operations of the scalar twin [`crate::kx8::gemv_q4_k_x8`], in its
//! order, without FMA: every output equals it bit for bit (tested on
//! both paths under qemu, Cortex-A72 and A76).
//!
//! Per block (8 rows x 256 weights), 32 chunks of 32 weight bytes: 256
//! `smull`/`smlal` (base NEON) or 128 `sdot` (dotprod), against 32 and 16
//! per row and super-block in the plain Q4_K kernel (`kquant.rs`), which
//! also reduces across lanes and unpacks 12 packed scale bytes per row.
//! No software prefetch: the blocks are one sequential stream. Not timed
//! on ARM hardware (qemu timings say nothing).
//!
//! The batched product (prefill) runs each group for every token while its
//! blocks are in L1/L2, as the x86 kernels (`arch/x86_64/kx8.rs`) do.

use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

use super::dotprod::NeonDotprod;
use super::neon::Neon;
use crate::arch::bank::Load;
use crate::kquant::BlockQ8_K;
use crate::kx8::{gemm_shape_x8, gemv_shape, BlockQ4_Kx8, ROWS};

impl Neon {
    /// `y = W x` on interleaved Q4_K; the caller checked the shapes.
    pub(crate) fn gemv_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Neon::new` passed,
        // so the CPU has the feature `gemv_smull` is compiled for.
        unsafe { gemv_smull(w, xq, y) }
    }

    /// `y[i] = W xq[i]` for `t` tokens; the caller checked the shapes.
    pub(crate) fn gemm_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k_x8`.
        unsafe { gemm_smull(w, xq, t, y) }
    }
}

impl NeonDotprod {
    /// `y = W x` on interleaved Q4_K; the caller checked the shapes.
    pub(crate) fn gemv_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `NeonDotprod::new`
        // passed, so the CPU has the features `gemv_sdot` is compiled for.
        unsafe { gemv_sdot(w, xq, y) }
    }

    /// `y[i] = W xq[i]` for `t` tokens; the caller checked the shapes.
    pub(crate) fn gemm_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k_x8`.
        unsafe { gemm_sdot(w, xq, t, y) }
    }
}

#[target_feature(enable = "neon")]
fn gemv_smull(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
    let (nb, rows) = (xq.len(), y.len());
    gemv_shape(w.len(), nb, rows);
    groups(w, xq, 1, nb, rows, y, |w, x, c| dots_smull(w, x, c))
}

#[target_feature(enable = "neon")]
fn gemm_smull(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    let (nb, rows) = gemm_shape_x8(w.len(), xq.len(), t, y.len());
    groups(w, xq, t, nb, rows, y, |w, x, c| dots_smull(w, x, c))
}

#[target_feature(enable = "neon,dotprod")]
fn gemv_sdot(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
    let (nb, rows) = (xq.len(), y.len());
    gemv_shape(w.len(), nb, rows);
    groups(w, xq, 1, nb, rows, y, |w, x, c| dots_sdot(w, x, c))
}

#[target_feature(enable = "neon,dotprod")]
fn gemm_sdot(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    let (nb, rows) = gemm_shape_x8(w.len(), xq.len(), t, y.len());
    groups(w, xq, t, nb, rows, y, |w, x, c| dots_sdot(w, x, c))
}

/// The loop of the module docs, for `t` tokens (one: the GEMV): group by
/// group, every token, token-major `y[i rows + 8g + r]`. `dots(w, x, c)`
/// gives chunk row `c`'s four i32 dot registers (see [`dots_smull`]).
#[target_feature(enable = "neon")]
#[inline]
fn groups(
    w: &[BlockQ4_Kx8],
    xq: &[BlockQ8_K],
    t: usize,
    nb: usize,
    rows: usize,
    y: &mut [f32],
    dots: impl Fn(&BlockQ4_Kx8, &BlockQ8_K, usize) -> [int32x4_t; 4],
) {
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    for (g, blocks) in w.chunks_exact(nb).enumerate() {
        for i in 0..t {
            let y = &mut y[i * rows + ROWS * g..][..ROWS];
            let sum = group(blocks, &xq[i * nb..(i + 1) * nb], &dots);
            // SAFETY: `y` is 8 writable f32 (the slice above); st1 needs no
            // alignment.
            unsafe {
                vst1q_f32(y.as_mut_ptr(), sum[0]);
                vst1q_f32(y.as_mut_ptr().add(4), sum[1]);
            }
        }
    }
}

/// One group's 8 outputs (rows 0..4, 4..8) for one token.
#[target_feature(enable = "neon")]
#[inline]
fn group(
    blocks: &[BlockQ4_Kx8],
    xq: &[BlockQ8_K],
    dots: &impl Fn(&BlockQ4_Kx8, &BlockQ8_K, usize) -> [int32x4_t; 4],
) -> [float32x4_t; 2] {
    let mut sum = [vdupq_n_f32(0.0); 2];
    for (w, x) in blocks.iter().zip(xq) {
        let mut isum = [vdupq_n_s32(0); 2];
        for c in 0..4 {
            // |isum| <= 8 x 63 x 32 x 15 x 128 < 2^25: exact.
            let (d, sc) = (dots(w, x, c), widen_u8(&w.scales, 16 * c));
            for h in 0..2 {
                isum[h] = vmlaq_s32(vmlaq_s32(isum[h], d[h], sc[h]), d[2 + h], sc[2 + h]);
            }
        }
        let msum = msum(w, x);
        let dx = vdupq_n_f32(x.d);
        for h in 0..2 {
            let d = vmulq_f32(widen_f16(&w.d, 4 * h), dx);
            let dmin = vmulq_f32(widen_f16(&w.dmin, 4 * h), dx);
            let term = vsubq_f32(
                vmulq_f32(d, vcvtq_f32_s32(isum[h])),
                vmulq_f32(dmin, vcvtq_f32_s32(msum[h])),
            );
            sum[h] = vaddq_f32(sum[h], term);
        }
    }
    sum
}

/// Chunk `(c, j)`'s weights as i8 `0..=15`: low nibbles (sub-block `2c`)
/// of rows 0..4, of rows 4..8, then the high nibbles (sub-block `2c + 1`)
/// of the same; lane bytes `4r'..4r' + 4` are row `4h + r'`'s 4 weights.
#[target_feature(enable = "neon")]
#[inline]
fn nibbles(w: &BlockQ4_Kx8, c: usize, j: usize) -> [int8x16_t; 4] {
    let q = &w.qs[32 * (8 * c + j)..][..32];
    // SAFETY: `q` is 32 readable bytes; ld1 needs no alignment.
    let (a, b) = unsafe { (vld1q_u8(q.as_ptr()), vld1q_u8(q.as_ptr().add(16))) };
    let m4 = vdupq_n_u8(0x0F);
    [
        vandq_u8(a, m4),
        vandq_u8(b, m4),
        vshrq_n_u8::<4>(a),
        vshrq_n_u8::<4>(b),
    ]
    .map(|v| vreinterpretq_s8_u8(v))
}

/// Base NEON: chunk row `c`'s dots, per row, of sub-block `2c` (rows 0..4,
/// 4..8) and `2c + 1` (the same), each 4 x i32. The byte products go into
/// 8 x i16 (two rows' 4 weights) by `smlal` / `smlal2` against the 4
/// activations broadcast, over the 8 chunks `j`; then `saddlp` and `addp`
/// give one i32 per row.
#[target_feature(enable = "neon")]
#[inline]
fn dots_smull(w: &BlockQ4_Kx8, x: &BlockQ8_K, c: usize) -> [int32x4_t; 4] {
    let x4 = |at: usize| {
        let b = &x.qs[at..at + 4];
        let v = i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
        vreinterpretq_s8_s32(vdupq_n_s32(v))
    };
    // acc[2k]: q-reg k's first two rows, acc[2k + 1]: its last two; each
    // lane gains 8 products of |.| <= 15 x 128: below 2^15, exact.
    let mut acc = [vdupq_n_s16(0); 8];
    for j in 0..8 {
        let q = nibbles(w, c, j);
        let xs = [x4(64 * c + 4 * j), x4(64 * c + 32 + 4 * j)];
        for k in 0..4 {
            let xk = xs[k / 2];
            acc[2 * k] = vmlal_s8(acc[2 * k], vget_low_s8(q[k]), vget_low_s8(xk));
            acc[2 * k + 1] = vmlal_high_s8(acc[2 * k + 1], q[k], xk);
        }
    }
    core::array::from_fn(|k| vpaddq_s32(vpaddlq_s16(acc[2 * k]), vpaddlq_s16(acc[2 * k + 1])))
}

/// Dotprod: [`dots_smull`]'s four registers by `sdot`, the activations
/// taken by element from one 16-byte load per 4 chunks.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn dots_sdot(w: &BlockQ4_Kx8, x: &BlockQ8_K, c: usize) -> [int32x4_t; 4] {
    let mut acc = [vdupq_n_s32(0); 4];
    for h in 0..2 {
        let q: [[int8x16_t; 4]; 4] = core::array::from_fn(|i| nibbles(w, c, 4 * h + i));
        let xs = [64 * c + 16 * h, 64 * c + 32 + 16 * h].map(|at| {
            let x = &x.qs[at..at + 16];
            // SAFETY: `x` is 16 readable bytes; ld1 needs no alignment.
            unsafe { vld1q_s8(x.as_ptr()) }
        });
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = sdot4(*acc, [q[0][k], q[1][k], q[2][k], q[3][k]], xs[k / 2]);
        }
    }
    acc
}

/// `acc` plus, in lane `r`, `sum_{i<4} sum_{k<4} q[i][4r + k] x[4i + k]`:
/// four `SDOT Vd.4S, Vn.16B, Vm.4B[i]` (exact i32, as `dotprod::sdot`).
/// The by-element form's intrinsic is unstable too, hence the `asm!`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot4(acc: int32x4_t, q: [int8x16_t; 4], x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT (by element) is FEAT_DotProd, this fn's target feature;
    // it reads the registers, writes only `acc`'s, touches no memory,
    // stack or flags.
    unsafe {
        asm!(
            "sdot {a:v}.4s, {q0:v}.16b, {x:v}.4b[0]",
            "sdot {a:v}.4s, {q1:v}.16b, {x:v}.4b[1]",
            "sdot {a:v}.4s, {q2:v}.16b, {x:v}.4b[2]",
            "sdot {a:v}.4s, {q3:v}.16b, {x:v}.4b[3]",
            a = inout(vreg) acc,
            q0 = in(vreg) q[0],
            q1 = in(vreg) q[1],
            q2 = in(vreg) q[2],
            q3 = in(vreg) q[3],
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Bytes `at..at + 16` of `b` as 4 x 4 i32 (zero-extended).
#[target_feature(enable = "neon")]
#[inline]
fn widen_u8(b: &[u8], at: usize) -> [int32x4_t; 4] {
    let b = &b[at..at + 16];
    // SAFETY: `b` is 16 readable bytes; ld1 needs no alignment.
    let v = unsafe { vld1q_u8(b.as_ptr()) };
    let (lo, hi) = (vmovl_u8(vget_low_u8(v)), vmovl_high_u8(v));
    [
        vmovl_u16(vget_low_u16(lo)),
        vmovl_high_u16(lo),
        vmovl_u16(vget_low_u16(hi)),
        vmovl_high_u16(hi),
    ]
    .map(|v| vreinterpretq_s32_u32(v))
}

/// `h[at..at + 4]` widened by the bank's `fcvtl` (exact).
#[target_feature(enable = "neon")]
#[inline]
fn widen_f16(h: &[f16], at: usize) -> float32x4_t {
    let h = &h[at..at + 4];
    // SAFETY: `h` is 4 readable f16; neon per this fn's target feature.
    unsafe { <Neon as Load<f16>>::load_w(h.as_ptr()) }
}

/// Rows 0..4 and 4..8 of `msum = sum_s m[s][r] (bsums[2s] + bsums[2s +
/// 1])`. `mins[16p..16p + 16]` is `(m[2p][r], m[2p + 1][r])` for r = 0..8,
/// so 4 registers of two rows' pairs meet `(P[2p], P[2p + 1])` twice
/// (`P` the pair sums, i32), and one `addp` per two registers gives a row
/// per lane. Exact: `|.| <= 8 x 255 x 2^16 < 2^31`.
#[target_feature(enable = "neon")]
#[inline]
fn msum(w: &BlockQ4_Kx8, x: &BlockQ8_K) -> [int32x4_t; 2] {
    let b = x.bsums.as_ptr();
    // SAFETY: `x.bsums` is 16 readable i16: `b` and `b + 8` start 8 each;
    // ld1 needs no alignment.
    let p = unsafe { [vld1q_s16(b), vld1q_s16(b.add(8))] }
        .map(|v| vreinterpretq_s64_s32(vpaddlq_s16(v)));
    let pairs = [
        vdupq_laneq_s64::<0>(p[0]),
        vdupq_laneq_s64::<1>(p[0]),
        vdupq_laneq_s64::<0>(p[1]),
        vdupq_laneq_s64::<1>(p[1]),
    ];
    let mut acc = [vdupq_n_s32(0); 4];
    for (k, pair) in pairs.into_iter().enumerate() {
        let m = widen_u8(&w.mins, 16 * k);
        for (a, m) in acc.iter_mut().zip(m) {
            *a = vmlaq_s32(*a, m, vreinterpretq_s32_s64(pair));
        }
    }
    [vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3])]
}
