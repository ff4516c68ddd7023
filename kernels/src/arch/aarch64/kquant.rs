//! Q4_K / Q6_K with Q8_K activations on aarch64: the GEMV and the batched
//! prefill product (GEMM), on both NEON backends. The integer dot of a
//! weight super-block with an activation super-block is taken two ways:
//!
//! - `smull` / `smlal` on base NEON ([`Neon`], Cortex-A53/A72): byte
//!   products into 8 x i16, then `saddlp` into 4 x i32;
//! - `sdot` ([`NeonDotprod`], Cortex-A76, Pi 5): 16 byte products into
//!   4 x i32 per instruction.
//!
//! A weight super-block is first unpacked in registers to its 256 quants
//! as i8 in element order (16 q-regs; Q4_K: `0..=15`, Q6_K: `q - 32`), so
//! q-reg `j` meets activation bytes `16 j..16 j + 16`, and a scale group
//! `s` (32 weights of one Q4_K scale, 16 of one Q6_K scale) is `G` = 2 or
//! 1 q-regs. Then, per (weight, activation) pair:
//!
//! ```text
//! g[s] = dot of group s (4 x i32 lanes adding up to it)
//!     smull: saddlp(smull/smlal2 (+ smlal/smlal2 for Q4_K's second q-reg))
//!            (i16 lanes <= 2 * 32 * 128 = 8192 for Q6_K, <= 4 * 15 * 128 = 7680 for Q4_K)
//!     sdot:  sdot(0, q, x) (+ sdot for Q4_K's second q-reg)
//! isum lanes = sum_k addp(addp(g[4k], g[4k+1]), addp(g[4k+2], g[4k+3])) * sc[4k..4k+4]
//!              (4 x i32, lanes adding up to kquant's isum; 4 groups at a time reduced
//!               to one dot per lane and multiplied by their 4 scales: no multiply by element)
//! Q4_K msum lanes = m[0..4] * paddl(bsums[0..8]) + m[4..8] * paddl(bsums[8..16])
//!                   (pair sums widened to i32 first: exact for any bsums)
//! ```
//!
//! Four such pairs go side by side in the lanes of one f32 register:
//! four rows against one token (GEMV) or one row against four tokens
//! (GEMM). Their lanes are reduced to one exact i32 per pair by three
//! `addp`, converted once (`scvtf`, round to nearest as `as f32`) and met
//! with the scales in the operations of the scalar twin
//! ([`crate::kquant`]), in its order, without FMA:
//!
//! ```text
//! Q4_K: term = (d_w d_x) f32(isum) - (dmin_w d_x) f32(msum)
//! Q6_K: term = (d_w d_x) f32(isum)
//! acc[lane] += term                      (acc = 0.0 at the first super-block)
//! ```
//!
//! so every output equals the scalar GEMV's bit for bit (the tests check
//! it on both paths). No column tail: rows are whole super-blocks. Every
//! quant and activation byte is exact (`-128` included); Q4_K's `bsums`
//! are taken as given (the sums of the activation quants, as
//! [`crate::kquant::quantize_row_q8_k`] makes them), Q6_K does not read
//! them.
//!
//! GEMV: blocks of 4 rows share one accumulator (lane = row), then the
//! last `rows % 4` rows one at a time. GEMM: tokens in groups of up to
//! [`TOK`]; for each row (rows in chunks whose weights stay in L2,
//! [`CHUNK_BYTES`]), each weight super-block is unpacked once and meets the
//! group's tokens four at a time (lane = token; a group's missing lanes
//! repeat its last token and are dropped). One token is the GEMV.
//!
//! Neither has been timed on ARM hardware (qemu timings say nothing).
//! Instructions in the compiled innermost loop (rustc 1.95, release,
//! `aarch64-unknown-linux-musl`, `--emit asm`), per row and super-block
//! (GEMV: one row of the 4-row loop) or per token and super-block (GEMM:
//! the 4-token loop over 4, sdot; one token per iteration, smull):
//!
//! | path | GEMV Q4_K | GEMV Q6_K | GEMM Q4_K | GEMM Q6_K |
//! |---|---|---|---|---|
//! | sdot | 139 (16 `sdot`) | 175 | 314 / 4 = 79 | 370 / 4 = 93 |
//! | smull | 157 (32 `smull`/`smlal`) | 191 | 147 | 175 |
//!
//! For scale, the Q4_0 sdot GEMV (`quant.rs`) is 13.5 per 32 weights, 108
//! per 256. The base NEON GEMM gains little over its GEMV in instructions
//! (the byte products are most of both), only in weight traffic.

use core::arch::aarch64::*;

use half::f16;

use super::dotprod::{sdot, NeonDotprod};
use super::neon::Neon;
use crate::arch::bank::Load;
use crate::kquant::{gemm_shape, BlockQ4_K, BlockQ6_K, BlockQ8_K, QK_K};

/// Tokens per GEMM group: each weight super-block is unpacked once per
/// group.
const TOK: usize = 8;

/// Weight bytes of the rows a GEMM runs all its token groups over before
/// the next rows: they stay in L2 (512 KiB on a Pi 3 / Cortex-A53, 1 MiB
/// shared on a Pi 4) while the groups' activations stream through L1.
const CHUNK_BYTES: usize = 128 * 1024;

impl Neon {
    /// `y = W x`, Q4_K; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Neon::new` passed,
        // so the CPU has the feature `gemv_q4_k_smull` is compiled for.
        unsafe { gemv_q4_k_smull(w, xq, y) }
    }

    /// `y = W x`, Q6_K; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k`.
        unsafe { gemv_q6_k_smull(w, xq, y) }
    }

    /// `y[i] = W xq[i]` for `t` tokens, Q4_K; the caller checked the shapes
    /// ([`gemm_shape`]).
    pub(crate) fn gemm_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k`.
        unsafe { gemm_q4_k_smull(w, xq, t, y) }
    }

    /// As [`Neon::gemm_q4_k`], Q6_K weights.
    pub(crate) fn gemm_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k`.
        unsafe { gemm_q6_k_smull(w, xq, t, y) }
    }
}

impl NeonDotprod {
    /// `y = W x`, Q4_K; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `NeonDotprod::new`
        // passed, so the CPU has the features `gemv_q4_k_sdot` is compiled
        // for.
        unsafe { gemv_q4_k_sdot(w, xq, y) }
    }

    /// `y = W x`, Q6_K; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k`.
        unsafe { gemv_q6_k_sdot(w, xq, y) }
    }

    /// `y[i] = W xq[i]` for `t` tokens, Q4_K; the caller checked the shapes
    /// ([`gemm_shape`]).
    pub(crate) fn gemm_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k`.
        unsafe { gemm_q4_k_sdot(w, xq, t, y) }
    }

    /// As [`NeonDotprod::gemm_q4_k`], Q6_K weights.
    pub(crate) fn gemm_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k`.
        unsafe { gemm_q6_k_sdot(w, xq, t, y) }
    }
}

#[target_feature(enable = "neon")]
fn gemv_q4_k_smull(w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv(w, xq, y, |u, x| isum_smull::<2>(u, x))
}

#[target_feature(enable = "neon")]
fn gemv_q6_k_smull(w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv(w, xq, y, |u, x| isum_smull::<1>(u, x))
}

#[target_feature(enable = "neon,dotprod")]
fn gemv_q4_k_sdot(w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv(w, xq, y, |u, x| isum_sdot::<2>(u, x))
}

#[target_feature(enable = "neon,dotprod")]
fn gemv_q6_k_sdot(w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv(w, xq, y, |u, x| isum_sdot::<1>(u, x))
}

#[target_feature(enable = "neon")]
fn gemm_q4_k_smull(w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm(w, xq, t, y, |u, x| isum_smull::<2>(u, x))
}

#[target_feature(enable = "neon")]
fn gemm_q6_k_smull(w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm(w, xq, t, y, |u, x| isum_smull::<1>(u, x))
}

#[target_feature(enable = "neon,dotprod")]
fn gemm_q4_k_sdot(w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm(w, xq, t, y, |u, x| isum_sdot::<2>(u, x))
}

#[target_feature(enable = "neon,dotprod")]
fn gemm_q6_k_sdot(w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm(w, xq, t, y, |u, x| isum_sdot::<1>(u, x))
}

/// A weight super-block unpacked in registers (module docs).
#[derive(Clone, Copy)]
struct Unpacked {
    /// The 256 quants as i8, element order: q-reg `j` holds elements
    /// `16 j..16 j + 16` (Q4_K: `0..=15`; Q6_K: `q - 32`, `-32..=31`).
    q: [int8x16_t; 16],
    /// Lane `s % 4` of `sc[s / 4]`: the scale of q-regs `G s..G s + G`
    /// as i32 (`G` = 2 for Q4_K, 8 scales; 1 for Q6_K, 16 scales).
    sc: [int32x4_t; 4],
    /// Q4_K's 8 mins as i32 (`m[0..4]`, `m[4..8]`); zero for Q6_K.
    mins: [int32x4_t; 2],
}

/// A weight super-block type of this module.
trait KBlock: Copy {
    /// Whether the block has mins (Q4_K), i.e. a `- dmin m` term.
    const MINS: bool;

    /// `d` and `dmin` (Q6_K: `dmin` is unused).
    fn scales(&self) -> (f16, f16);

    /// The block in registers (module docs).
    ///
    /// # Safety
    /// The CPU has NEON.
    unsafe fn unpack(&self) -> Unpacked;
}

impl KBlock for BlockQ4_K {
    const MINS: bool = true;

    #[inline(always)]
    fn scales(&self) -> (f16, f16) {
        (self.d, self.dmin)
    }

    #[inline(always)]
    unsafe fn unpack(&self) -> Unpacked {
        // SAFETY: NEON per this fn's contract.
        unsafe { unpack_q4_k(self) }
    }
}

impl KBlock for BlockQ6_K {
    const MINS: bool = false;

    #[inline(always)]
    fn scales(&self) -> (f16, f16) {
        (self.d, f16::ZERO)
    }

    #[inline(always)]
    unsafe fn unpack(&self) -> Unpacked {
        // SAFETY: NEON per this fn's contract.
        unsafe { unpack_q6_k(self) }
    }
}

/// Q4_K: byte `32 c + l` of `qs` holds element `64 c + l` (low nibble) and
/// `64 c + 32 + l` (high nibble), so the 32 bytes of chunk `c` are q-regs
/// `4c, 4c + 1` (low nibbles) and `4c + 2, 4c + 3` (high nibbles).
#[target_feature(enable = "neon")]
#[inline]
fn unpack_q4_k(w: &BlockQ4_K) -> Unpacked {
    let sm = w.scales_mins();
    let m4 = vdupq_n_u8(0x0F);
    let mut q = [vdupq_n_s8(0); 16];
    let p = w.qs.as_ptr();
    for c in 0..4 {
        // SAFETY: `w.qs` is 128 readable bytes and `32 c + 32 <= 128`;
        // ld1 needs no alignment.
        let (a, b) = unsafe { (vld1q_u8(p.add(32 * c)), vld1q_u8(p.add(32 * c + 16))) };
        q[4 * c] = vreinterpretq_s8_u8(vandq_u8(a, m4));
        q[4 * c + 1] = vreinterpretq_s8_u8(vandq_u8(b, m4));
        q[4 * c + 2] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(a));
        q[4 * c + 3] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(b));
    }
    // SAFETY: `sm` is 16 readable bytes; ld1 needs no alignment.
    let sm = unsafe { vld1q_u8(sm.as_ptr()) };
    let sc = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(sm)));
    let sc = [
        vmovl_s16(vget_low_s16(sc)),
        vmovl_high_s16(sc),
        vdupq_n_s32(0),
        vdupq_n_s32(0),
    ];
    let m = vmovl_high_u8(sm);
    let mins = [
        vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m))),
        vreinterpretq_s32_u32(vmovl_high_u16(m)),
    ];
    Unpacked { q, sc, mins }
}

/// Q6_K: element `128 h + 32 k + l` has its low 4 bits in `ql[64 h + l +
/// 32 (k & 1)]` (low nibble for `k < 2`, high for `k >= 2`) and its high 2
/// bits at bit `2 k` of `qh[32 h + l]`; it goes to q-reg `8 h + 2 k + l / 16`.
#[target_feature(enable = "neon")]
#[inline]
fn unpack_q6_k(w: &BlockQ6_K) -> Unpacked {
    let (m4, top, off) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x30), vdupq_n_s8(32));
    let mut q = [vdupq_n_s8(0); 16];
    let (pl, ph) = (w.ql.as_ptr(), w.qh.as_ptr());
    for h in 0..2 {
        for i in 0..2 {
            // SAFETY: `ql` is 128 readable bytes, `64 h + 16 i + 48 <= 128`;
            // `qh` is 64, `32 h + 16 i + 16 <= 64`; ld1 needs no alignment.
            let (la, lb, hb) = unsafe {
                (
                    vld1q_u8(pl.add(64 * h + 16 * i)),
                    vld1q_u8(pl.add(64 * h + 16 * i + 32)),
                    vld1q_u8(ph.add(32 * h + 16 * i)),
                )
            };
            // The 2 high bits of quant k at bits 4..6.
            let hi = [
                vshlq_n_u8::<4>(vandq_u8(hb, vdupq_n_u8(3))),
                vandq_u8(vshlq_n_u8::<2>(hb), top),
                vandq_u8(hb, top),
                vandq_u8(vshrq_n_u8::<2>(hb), top),
            ];
            let lo = [
                vandq_u8(la, m4),
                vandq_u8(lb, m4),
                vshrq_n_u8::<4>(la),
                vshrq_n_u8::<4>(lb),
            ];
            for k in 0..4 {
                let v = vreinterpretq_s8_u8(vorrq_u8(lo[k], hi[k]));
                q[8 * h + 2 * k + i] = vsubq_s8(v, off);
            }
        }
    }
    // SAFETY: `w.scales` is 16 readable bytes; ld1 needs no alignment.
    let sc = unsafe { vld1q_s8(w.scales.as_ptr()) };
    let (lo, hi) = (vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc));
    let sc = [
        vmovl_s16(vget_low_s16(lo)),
        vmovl_high_s16(lo),
        vmovl_s16(vget_low_s16(hi)),
        vmovl_high_s16(hi),
    ];
    let zero = vdupq_n_s32(0);
    Unpacked {
        q,
        sc,
        mins: [zero, zero],
    }
}

/// The 16 bytes of `x` from byte `16 j` on.
#[target_feature(enable = "neon")]
#[inline]
fn load_x(x: &BlockQ8_K, j: usize) -> int8x16_t {
    let x = &x.qs[16 * j..16 * j + 16];
    // SAFETY: `x` is 16 readable bytes; ld1 needs no alignment.
    unsafe { vld1q_s8(x.as_ptr()) }
}

/// 4 x i32 lanes adding up to `sum_s sc[s] sum_{e in s} q_e x_e` over the
/// `16 / G` scale groups of `G` q-regs, given `group(s)`: 4 x i32 lanes
/// adding up to group `s`'s dot. Four groups at a time are reduced to one
/// sum per lane (three `addp`) and multiplied by their four scales, so no
/// multiply by element is needed. Written without loops, so that every
/// index is a constant.
#[target_feature(enable = "neon")]
#[inline]
fn isum<const G: usize>(u: &Unpacked, group: impl Fn(usize) -> int32x4_t) -> int32x4_t {
    const { assert!(G == 1 || G == 2) };
    let quad = |k: usize| {
        let g = [
            group(4 * k),
            group(4 * k + 1),
            group(4 * k + 2),
            group(4 * k + 3),
        ];
        let dots = vpaddq_s32(vpaddq_s32(g[0], g[1]), vpaddq_s32(g[2], g[3]));
        vmulq_s32(dots, u.sc[k])
    };
    let acc = vaddq_s32(quad(0), quad(1));
    if G == 1 {
        vaddq_s32(acc, vaddq_s32(quad(2), quad(3)))
    } else {
        acc
    }
}

/// Base NEON: [`isum`] with group dots from `smull` / `smlal2` (and
/// `smlal` / `smlal2` for Q4_K's second q-reg) into 8 x i16, then
/// `saddlp` into 4 x i32.
#[target_feature(enable = "neon")]
#[inline]
fn isum_smull<const G: usize>(u: &Unpacked, x: &BlockQ8_K) -> int32x4_t {
    isum::<G>(u, |s| {
        let (w0, x0) = (u.q[G * s], load_x(x, G * s));
        let mut p = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), w0, x0);
        if G == 2 {
            let (w1, x1) = (u.q[G * s + 1], load_x(x, G * s + 1));
            p = vmlal_high_s8(vmlal_s8(p, vget_low_s8(w1), vget_low_s8(x1)), w1, x1);
        }
        vpaddlq_s16(p)
    })
}

/// Dotprod: [`isum`] with group dots from `sdot`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn isum_sdot<const G: usize>(u: &Unpacked, x: &BlockQ8_K) -> int32x4_t {
    isum::<G>(u, |s| {
        let d = sdot(vdupq_n_s32(0), u.q[G * s], load_x(x, G * s));
        if G == 2 {
            sdot(d, u.q[G * s + 1], load_x(x, G * s + 1))
        } else {
            d
        }
    })
}

/// Q4_K: 4 x i32 lanes adding up to `msum = sum_s m[s] (bsums[2s] +
/// bsums[2s + 1])`.
#[target_feature(enable = "neon")]
#[inline]
fn msum(u: &Unpacked, x: &BlockQ8_K) -> int32x4_t {
    let b = x.bsums.as_ptr();
    // SAFETY: `x.bsums` is 16 readable i16: `b` and `b + 8` start 8 each;
    // ld1 needs no alignment.
    let (p0, p1) = unsafe { (vpaddlq_s16(vld1q_s16(b)), vpaddlq_s16(vld1q_s16(b.add(8)))) };
    vmlaq_s32(vmulq_s32(p0, u.mins[0]), p1, u.mins[1])
}

/// Four f16 scales widened by the bank's `fcvtl`.
#[target_feature(enable = "neon")]
#[inline]
fn widen(h: [f16; 4]) -> float32x4_t {
    // SAFETY: `h` is 4 readable f16; neon per this fn's target feature.
    unsafe { <Neon as Load<f16>>::load_w(h.as_ptr()) }
}

/// `acc` plus, in lane `i < N`, the term of weight super-block `w[i]`
/// (unpacked as `u(i)`) against activation super-block `x[i]`: each
/// pair's exact integers, reduced to one i32 per lane, met with
/// `d_w = w[i]`'s scales and `d_x = dx` in the twin's f32 operations
/// (module docs). Lanes `>= N` add a zero integer times their scales.
#[target_feature(enable = "neon")]
#[inline]
fn add_terms<W: KBlock, const N: usize>(
    acc: float32x4_t,
    w: [&W; N],
    u: impl Fn(usize) -> Unpacked,
    x: [&BlockQ8_K; N],
    dx: float32x4_t,
    isum: &impl Fn(&Unpacked, &BlockQ8_K) -> int32x4_t,
) -> float32x4_t {
    const { assert!(N <= 4, "one lane per pair") };
    let zero = vdupq_n_s32(0);
    let (mut is, mut ms) = ([zero; 4], [zero; 4]);
    for i in 0..N {
        let u = u(i);
        is[i] = isum(&u, x[i]);
        if W::MINS {
            ms[i] = msum(&u, x[i]);
        }
    }
    let reduce = |p: [int32x4_t; 4]| vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
    let sc: [(f16, f16); 4] = core::array::from_fn(|i| {
        if i < N {
            w[i].scales()
        } else {
            (f16::ZERO, f16::ZERO)
        }
    });
    let d = vmulq_f32(widen(sc.map(|s| s.0)), dx);
    let term = vmulq_f32(d, vcvtq_f32_s32(reduce(is)));
    let term = if W::MINS {
        let dmin = vmulq_f32(widen(sc.map(|s| s.1)), dx);
        vsubq_f32(term, vmulq_f32(dmin, vcvtq_f32_s32(reduce(ms))))
    } else {
        term
    };
    vaddq_f32(acc, term)
}

/// The GEMV of the module docs: rows in blocks of 4 (lane = row), then
/// the last `rows % 4` one at a time.
///
/// # Panics
/// If `w.len() != y.len() * xq.len()`.
#[target_feature(enable = "neon")]
#[inline]
fn gemv<W: KBlock>(
    w: &[W],
    xq: &[BlockQ8_K],
    y: &mut [f32],
    isum: impl Fn(&Unpacked, &BlockQ8_K) -> int32x4_t,
) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_k: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let (y4, y1) = y.split_at_mut(y.len() / 4 * 4);
    let (w4, w1) = w.split_at(y4.len() * nb);
    for (yb, wb) in y4.chunks_exact_mut(4).zip(w4.chunks_exact(4 * nb)) {
        let mut acc = vdupq_n_f32(0.0);
        for (b, xb) in xq.iter().enumerate() {
            let ws: [&W; 4] = core::array::from_fn(|i| &wb[i * nb + b]);
            let u = |i: usize| {
                // SAFETY: NEON, this fn's target feature.
                unsafe { ws[i].unpack() }
            };
            acc = add_terms(acc, ws, u, [xb; 4], vdupq_n_f32(xb.d), &isum);
        }
        // SAFETY: `yb` is 4 writable f32; st1 needs no alignment.
        unsafe { vst1q_f32(yb.as_mut_ptr(), acc) };
    }
    for (yr, wr) in y1.iter_mut().zip(w1.chunks_exact(nb)) {
        let mut acc = vdupq_n_f32(0.0);
        for (wb, xb) in wr.iter().zip(xq) {
            let u = |_: usize| {
                // SAFETY: NEON, this fn's target feature.
                unsafe { wb.unpack() }
            };
            acc = add_terms(acc, [wb], u, [xb], vdupq_n_f32(xb.d), &isum);
        }
        *yr = vgetq_lane_f32::<0>(acc);
    }
}

/// The GEMM of the module docs.
///
/// # Panics
/// If the shapes do not fit ([`gemm_shape`]).
#[target_feature(enable = "neon")]
#[inline]
fn gemm<W: KBlock>(
    w: &[W],
    xq: &[BlockQ8_K],
    t: usize,
    y: &mut [f32],
    isum: impl Fn(&Unpacked, &BlockQ8_K) -> int32x4_t,
) {
    let (nb, rows) = gemm_shape(w.len(), xq.len(), t, y.len());
    if t == 0 || rows == 0 {
        return;
    }
    if t == 1 {
        return gemv(w, xq, y, isum);
    }
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let chunk = (CHUNK_BYTES / (nb * size_of::<W>())).max(1);
    for r0 in (0..rows).step_by(chunk) {
        for j0 in (0..t).step_by(TOK) {
            let n = TOK.min(t - j0);
            for r in r0..rows.min(r0 + chunk) {
                let acc = row_group(&w[r * nb..(r + 1) * nb], xq, nb, j0, n, &isum);
                for (j, &v) in acc[..n].iter().enumerate() {
                    y[(j0 + j) * rows + r] = v;
                }
            }
        }
    }
}

/// One row (`nb` super-blocks) against tokens `j0..j0 + n` (`1 <= n <=
/// TOK`): each super-block unpacked once, its terms added in order into
/// the tokens' running sums (lane = token).
#[target_feature(enable = "neon")]
#[inline]
fn row_group<W: KBlock>(
    w: &[W],
    xq: &[BlockQ8_K],
    nb: usize,
    j0: usize,
    n: usize,
    isum: &impl Fn(&Unpacked, &BlockQ8_K) -> int32x4_t,
) -> [f32; TOK] {
    let mut acc = [vdupq_n_f32(0.0); TOK / 4];
    for (b, wb) in w.iter().enumerate() {
        // SAFETY: NEON, this fn's target feature.
        let u = unsafe { wb.unpack() };
        for (h, acc) in acc.iter_mut().enumerate().take(n.div_ceil(4)) {
            // Token j of this set of four; the missing ones repeat the last.
            let x: [&BlockQ8_K; 4] =
                core::array::from_fn(|i| &xq[(j0 + (4 * h + i).min(n - 1)) * nb + b]);
            let dx = [x[0].d, x[1].d, x[2].d, x[3].d];
            // SAFETY: `dx` is 4 readable f32; ld1 needs no alignment.
            let dx = unsafe { vld1q_f32(dx.as_ptr()) };
            *acc = add_terms(*acc, [wb; 4], |_| u, x, dx, isum);
        }
    }
    let mut out = [0.0f32; TOK];
    for (o, a) in out.chunks_exact_mut(4).zip(acc) {
        // SAFETY: `o` is 4 writable f32; st1 needs no alignment.
        unsafe { vst1q_f32(o.as_mut_ptr(), a) };
    }
    out
}

// `QK_K` is what the 16 q-regs of `Unpacked` hold.
const _: () = assert!(QK_K == 16 * 16);
