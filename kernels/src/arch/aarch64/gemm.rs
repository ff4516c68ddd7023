//! Q8_0 / Q4_0 GEMM for a batch of `t` tokens (prompt prefill) on NEON:
//! `y[i] = W x[i]` for every token `i`, each weight block loaded (and, for
//! Q4_0, unpacked) once per group of up to 8 tokens instead of once per
//! token, each activation block loaded once per 4 rows.
//!
//! Two tiles, because base NEON has no 8-bit multiply by element:
//!
//! - dotprod ([`NeonDotprod`]): tokens in the lanes, as the AVX2 GEMM
//!   (`x86_64/gemm.rs`). The activations are transposed per panel so that
//!   a q-reg holds the same 4 columns of 4 tokens (lane `j` = token `j`);
//!   `SDOT Vd.4S, Vn.16B, Vm.4B[k]` multiplies them with group `k` of a
//!   weight register, broadcast by the instruction itself, so the weight
//!   block stays in 2 registers and a row's 8 tokens are 2 x 8 `sdot`.
//! - base NEON ([`Neon`], Cortex-A53/A72): rows in the lanes, as the
//!   GEMV (`quant.rs`). Each token's block meets the 4 rows' blocks held in
//!   8 registers: `smull` / `smlal` products, `saddlp` into i32, three
//!   `addp` leave the 4 rows' sums in one register.
//!
//! Either way each lane ends as one (row, token) block sum, exact in i32,
//! scaled once with the GEMV's two operations (`s = d_w * d_x`, then
//! `acc = fma(acc, f32(isum), s)`), and a (row, token) chain adds its
//! blocks in order from 0, carried across panels through `y`: the result
//! is bit for bit the NEON GEMV of that token (the tests check it).
//!
//! ```text
//! dotprod, tokens in lanes (groups of 8 tokens, H = 2 halves of 4; a last
//! group of 2..=4 tokens as H = 1, 5..=7 as H = 2, zero-padded; 1 token: GEMV):
//!   for each panel of up to PB = 64 blocks:
//!     X[b][k][h] = 16 x i8: bytes 4k..4k+4 of tokens 4h..4h+4, block b  (stack, 16 KiB)
//!     dx[b] = 8 tokens' f32 scales
//!     for each tile of R = 4 rows (then single rows):
//!       acc[r][h] = y of the previous panel, or 0        (8 q-regs: 4 x f32, lane = token)
//!       for b in panel:
//!         w[r] = 2 q-regs, row r's block b as i8          (Q4_0: nibble - 8)
//!         i32[r][h] = 0                                   (8 q-regs)
//!         for k in 0..8:  for h: xk = X[b][k][h]; for r:
//!           i32[r][h] = sdot(i32[r][h], xk, w[r].4b[k])   (4 products per lane, exact)
//!         acc[r][h] = fma(acc[r][h], f32(i32[r][h]), dx[b][h] * d_w[r])
//!       y[token][row] = acc lanes
//!
//! base NEON, rows in lanes (groups of T = 8 tokens, the rest as 4, 2, 1):
//!   for each panel of up to PB = 64 blocks:
//!     X[b][j] = token j's 32 bytes of block b, side by side    (stack, 16 KiB)
//!     dx[b] = the T tokens' f32 scales
//!     for each tile of R = 4 rows (then single rows):
//!       acc[j] = y of the previous panel, or 0           (T q-regs: 4 x f32, lane = row)
//!       for b in panel:
//!         w[r] = 2 q-regs, row r's block b as i8          (Q4_0: nibble - 8)
//!         s_w = f32(d_w[r] for r < R)
//!         for j in 0..T:
//!           x = X[b][j]                                   (2 q-regs)
//!           p[r] = dot(w[r], x)                           (4 x i32, lanes adding to the sum)
//!           isum = addp(addp(p[0], p[1]), addp(p[2], p[3]))   (lane = row)
//!           acc[j] = fma(acc[j], f32(isum), s_w * dx[b][j])
//!       y[token j][r0..r0 + R] = acc[j]
//! ```
//! `dot` is, for Q8_0, `smull` + `smlal2` per 16 bytes into i16 (two
//! products per lane, `|w x| <= 128 * 127`, so `<= 32512`) and `saddlp` /
//! `sadalp` into i32: 6 instructions; for Q4_0 `smull` + 3 `smlal` (four
//! products per lane, `|w x| <= 8 * 128`) and one `saddlp`: 5. Q8_0
//! activations must not hold -128 (two products of `-128 * -128` overflow
//! i16), which the quantizer guarantees (`quant` module docs); Q4_0 takes
//! any activation byte, and the dotprod path any byte in either format.
//! Rows are whole blocks: no column tail.
//!
//! Instructions per row, token and block, two ways, neither of them a
//! timing (no ARM hardware here; qemu timings say nothing about it):
//!
//! - *loop*: counted in the compiled innermost loop (rustc 1.95, release,
//!   `aarch64-unknown-linux-musl`, `--emit asm`) of a 4-row tile of 8
//!   tokens, against the 4-row loop of the GEMVs in `quant.rs`;
//! - *run*: executed instructions of one call on 256 rows x 64 blocks x
//!   8 tokens (qemu-aarch64 7.2 `-singlestep -d exec`, cortex-a76, the
//!   same program without the call subtracted), panels, tails and stores
//!   included, against the GEMV once per token.
//!
//! | path | GEMM loop | GEMM run | GEMV loop | GEMV run |
//! |---|---|---|---|---|
//! | dotprod Q8_0 | 133 / 32 = 4.2 (64 `sdot`) | 4.48 | 43 / 4 = 10.8 | 10.81 |
//! | dotprod Q4_0 | 160 / 32 = 5.0 (64 `sdot`) | 5.26 | 54 / 4 = 13.5 | 13.56 |
//! | base Q8_0 | (38 + 8 x 41) / 32 = 11.4 | 11.61 | 68 / 4 = 17 | 15.80 |
//! | base Q4_0 | (48 + 8 x 37) / 32 = 10.8 | 10.89 | 78 / 4 = 19.5 | 18.55 |
//!
//! (The base GEMVs run below their loop column: in the measuring
//! program's build they are not inlined into `Backend::gemv_q8_0` /
//! `gemv_q4_0`, and their 4-row loops are 63 and 74 instructions, not 68
//! and 78.) The base NEON token loop stays a loop (LLVM does not unroll
//! 8 copies), so `acc[j]` goes through L1 (a load and a store of its 41
//! or 37 instructions); the 4-token tile, unrolled, spills about as much.
//! Either way each weight block is loaded from memory once per 8 tokens
//! instead of once per token.
//!
//! Why rows in lanes on base NEON: with tokens in lanes each product
//! needs the weight byte broadcast, and the only multiplies by element
//! are 16-bit (`smlal Vd.4S, Vn.4H, Vm.H[i]`, `Vm` in v0..v15): widened
//! activations (32 loads per block) and 2 `smlal` per row, column and 8
//! tokens make ~10.7 per row and token counted from the pseudo-code
//! (not built), and 4 rows of widened weights alone fill v0..v15.

use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

use super::dotprod::NeonDotprod;
use super::neon::Neon;
use crate::arch::bank::Load;
use crate::quant::{BlockQ4_0, BlockQ8_0};

/// Activation blocks per panel: either `X` is 16 KiB, half the L1d of a
/// Cortex-A53/A72.
const PB: usize = 64;
/// Rows per tile.
const R: usize = 4;
/// Tokens per group.
const TOK: usize = 8;

impl Neon {
    /// `y[i] = W xq[i]` for `t` tokens, Q8_0; the caller checked the shapes
    /// (`xq` is `t` rows of `nb` blocks, `w` is `rows x nb`, `y` is
    /// `t x rows`, token-major).
    pub(crate) fn gemm_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Neon::new` passed,
        // so the CPU has the feature `gemm_mull` is compiled for.
        unsafe { gemm_mull(w, xq, t, y) }
    }

    /// As [`Neon::gemm_q8_0`], Q4_0 weights.
    pub(crate) fn gemm_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemm_q8_0`.
        unsafe { gemm_mull(w, xq, t, y) }
    }
}

impl NeonDotprod {
    /// `y[i] = W xq[i]` for `t` tokens, Q8_0; the caller checked the shapes
    /// (as [`Neon::gemm_q8_0`]).
    pub(crate) fn gemm_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `NeonDotprod::new`
        // passed, so the CPU has the features `gemm_sdot` is compiled for.
        unsafe { gemm_sdot(w, xq, t, y, |w, x, y| self.gemv_q8_0(w, x, y)) }
    }

    /// As [`NeonDotprod::gemm_q8_0`], Q4_0 weights.
    pub(crate) fn gemm_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemm_q8_0`.
        unsafe { gemm_sdot(w, xq, t, y, |w, x, y| self.gemv_q4_0(w, x, y)) }
    }
}

/// The 32 values of a block as i8, in two 16-byte halves.
type Q32 = (int8x16_t, int8x16_t);

/// A weight block type's part of both tiles.
trait Block: Copy {
    /// The block's scale.
    fn scale(&self) -> f16;

    /// The 32 weights as i8 (Q4_0: `q - 8`): elements 0..16, 16..32.
    ///
    /// # Safety
    /// The CPU has NEON.
    unsafe fn unpack(&self) -> Q32;

    /// Base NEON: 4 x i32 lanes adding up to `sum w[j] x[j]` (module docs;
    /// exact if `x` holds no -128, for Q4_0 for any `x`).
    ///
    /// # Safety
    /// The CPU has NEON.
    unsafe fn dot_mull(w: Q32, x: Q32) -> int32x4_t;
}

impl Block for BlockQ8_0 {
    #[inline(always)]
    fn scale(&self) -> f16 {
        self.d
    }

    #[inline(always)]
    unsafe fn unpack(&self) -> Q32 {
        // SAFETY: NEON per this fn's contract.
        unsafe { load_q8(self) }
    }

    #[inline(always)]
    unsafe fn dot_mull(w: Q32, x: Q32) -> int32x4_t {
        // SAFETY: NEON per this fn's contract.
        unsafe {
            let lo = vmlal_high_s8(vmull_s8(vget_low_s8(w.0), vget_low_s8(x.0)), w.0, x.0);
            let hi = vmlal_high_s8(vmull_s8(vget_low_s8(w.1), vget_low_s8(x.1)), w.1, x.1);
            vpadalq_s16(vpaddlq_s16(lo), hi)
        }
    }
}

impl Block for BlockQ4_0 {
    #[inline(always)]
    fn scale(&self) -> f16 {
        self.d
    }

    #[inline(always)]
    unsafe fn unpack(&self) -> Q32 {
        // SAFETY: `self.qs` is 16 readable bytes; ld1 needs no alignment;
        // NEON per this fn's contract.
        unsafe {
            let t = vld1q_u8(self.qs.as_ptr());
            let eight = vdupq_n_s8(8);
            let lo = vreinterpretq_s8_u8(vandq_u8(t, vdupq_n_u8(0x0F)));
            let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(t));
            (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
        }
    }

    #[inline(always)]
    unsafe fn dot_mull(w: Q32, x: Q32) -> int32x4_t {
        // SAFETY: NEON per this fn's contract.
        unsafe {
            let p = vmull_s8(vget_low_s8(w.0), vget_low_s8(x.0));
            let p = vmlal_high_s8(p, w.0, x.0);
            let p = vmlal_s8(p, vget_low_s8(w.1), vget_low_s8(x.1));
            vpaddlq_s16(vmlal_high_s8(p, w.1, x.1))
        }
    }
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

/// Four f16 scales widened by the bank's `fcvtl`.
#[target_feature(enable = "neon")]
#[inline]
fn widen(h: [f16; 4]) -> float32x4_t {
    // SAFETY: `h` is 4 readable f16; neon per this fn's target feature.
    unsafe { <Neon as Load<f16>>::load_w(h.as_ptr()) }
}

/// `[f32; 8]` scales of up to 8 tokens' block `b` (`x[j]` = token `j`'s
/// row, the other lanes 0).
#[target_feature(enable = "neon")]
#[inline]
fn scales8(x: &[&[BlockQ8_0]], b: usize) -> [f32; TOK] {
    let h = |j: usize| x.get(j).map_or(f16::ZERO, |x| x[b].d);
    let mut d = [0.0f32; TOK];
    let (lo, hi) = d.split_at_mut(4);
    // SAFETY: `lo` and `hi` are 4 writable f32 each; st1 needs no alignment.
    unsafe {
        vst1q_f32(lo.as_mut_ptr(), widen([h(0), h(1), h(2), h(3)]));
        vst1q_f32(hi.as_mut_ptr(), widen([h(4), h(5), h(6), h(7)]));
    }
    d
}

/// `v * lanes[i]` (`fmul` by element; `i < 4`, a constant once inlined).
#[target_feature(enable = "neon")]
#[inline]
fn mul_lane(v: float32x4_t, lanes: float32x4_t, i: usize) -> float32x4_t {
    match i {
        0 => vmulq_laneq_f32::<0>(v, lanes),
        1 => vmulq_laneq_f32::<1>(v, lanes),
        2 => vmulq_laneq_f32::<2>(v, lanes),
        _ => vmulq_laneq_f32::<3>(v, lanes),
    }
}

// ---------------------------------------------------------------- base NEON

/// The base NEON loop of the module docs.
///
/// # Panics
/// If the shapes do not fit ([`crate::quant::gemm_shape`]).
#[target_feature(enable = "neon")]
fn gemm_mull<W: Block>(w: &[W], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    let (nb, rows) = crate::quant::gemm_shape(w.len(), xq.len(), t, y.len());
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let mut p = Copied {
        x: [[[0; 32]; TOK]; PB],
        dx: [[0.0; TOK]; PB],
    };
    let mut i0 = 0;
    while i0 < t {
        let g = Group { nb, rows, i0 };
        i0 += match t - i0 {
            8.. => g.mull::<W, 8>(w, xq, &mut p, y),
            4..=7 => g.mull::<W, 4>(w, xq, &mut p, y),
            2 | 3 => g.mull::<W, 2>(w, xq, &mut p, y),
            _ => g.mull::<W, 1>(w, xq, &mut p, y),
        };
    }
}

/// A group of tokens starting at token `i0`, with the product's shape.
#[derive(Clone, Copy)]
struct Group {
    /// Blocks per row.
    nb: usize,
    /// Rows of `W`, outputs per token.
    rows: usize,
    /// The group's first token.
    i0: usize,
}

impl Group {
    /// Blocks `p0..p0 + nbp` of token `i0 + j`'s activations for `j < n`,
    /// empty above.
    fn tokens<const N: usize>(
        self,
        xq: &[BlockQ8_0],
        n: usize,
        (p0, nbp): (usize, usize),
    ) -> [&[BlockQ8_0]; N] {
        core::array::from_fn(|j| {
            if j < n {
                &xq[(self.i0 + j) * self.nb + p0..][..nbp]
            } else {
                &[]
            }
        })
    }

    /// Blocks `p0..p0 + nbp` of row `r` of `w`.
    fn row<W>(self, w: &[W], r: usize, (p0, nbp): (usize, usize)) -> &[W] {
        &w[r * self.nb + p0..][..nbp]
    }

    /// `y` from token `i0 + j`, row `r` on.
    fn out(self, y: &mut [f32], j: usize, r: usize) -> &mut [f32] {
        &mut y[(self.i0 + j) * self.rows + r..(self.i0 + j + 1) * self.rows]
    }

    /// Tokens `i0..i0 + T`, all rows, on base NEON; returns `T`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn mull<W: Block, const T: usize>(
        self,
        w: &[W],
        xq: &[BlockQ8_0],
        p: &mut Copied,
        y: &mut [f32],
    ) -> usize {
        for p0 in (0..self.nb).step_by(PB) {
            let panel = (p0, PB.min(self.nb - p0));
            p.prepare(&self.tokens::<T>(xq, T, panel));
            let mut r0 = 0;
            while r0 + R <= self.rows {
                let tile: [&[W]; R] = core::array::from_fn(|r| self.row(w, r0 + r, panel));
                self.rows_mull::<W, R, T>(tile, p, y, r0, p0 == 0);
                r0 += R;
            }
            for r in r0..self.rows {
                self.rows_mull::<W, 1, T>([self.row(w, r, panel)], p, y, r, p0 == 0);
            }
        }
        T
    }

    /// `N <= 4` rows from `r0` times `T` tokens over one panel (`rows[r]`
    /// its blocks), their chains continued from `y` unless `first`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn rows_mull<W: Block, const N: usize, const T: usize>(
        self,
        rows: [&[W]; N],
        p: &Copied,
        y: &mut [f32],
        r0: usize,
        first: bool,
    ) {
        const { assert!(N <= 4 && T <= TOK, "one lane per row, 8 tokens") };
        let nbp = rows[0].len();
        // lane r of acc[j] = row r0 + r, token j
        // The chains start at 0, or go on from the previous panel's `y`.
        let mut acc = [vdupq_n_f32(0.0); T];
        if !first {
            for (j, a) in acc.iter_mut().enumerate() {
                let y = self.out(y, j, r0);
                let v: [f32; 4] = core::array::from_fn(|r| if r < N { y[r] } else { 0.0 });
                // SAFETY: `v` is 4 readable f32; ld1 needs no alignment.
                *a = unsafe { vld1q_f32(v.as_ptr()) };
            }
        }
        let zero = vdupq_n_s32(0);
        for (b, (xb, dxb)) in p.x[..nbp].iter().zip(&p.dx).enumerate() {
            let ws: [Q32; N] = core::array::from_fn(|r| {
                // SAFETY: neon per this fn's target feature.
                unsafe { rows[r][b].unpack() }
            });
            let dw = widen(core::array::from_fn(|r| {
                if r < N {
                    rows[r][b].scale()
                } else {
                    f16::ZERO
                }
            }));
            for ((a, x), &dx) in acc.iter_mut().zip(xb).zip(dxb) {
                let x = x.as_ptr();
                // SAFETY: `x` is 32 readable bytes: `x` and `x + 16` start
                // 16 each; ld1 needs no alignment.
                let xb = unsafe { (vld1q_s8(x), vld1q_s8(x.add(16))) };
                let p: [int32x4_t; 4] = core::array::from_fn(|r| {
                    if r < N {
                        // SAFETY: neon per this fn's target feature.
                        unsafe { W::dot_mull(ws[r], xb) }
                    } else {
                        zero
                    }
                });
                let isum = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
                *a = vfmaq_f32(*a, vcvtq_f32_s32(isum), vmulq_n_f32(dw, dx));
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let mut v = [0.0f32; 4];
            // SAFETY: `v` is 4 writable f32.
            unsafe { vst1q_f32(v.as_mut_ptr(), *a) };
            self.out(y, j, r0)[..N].copy_from_slice(&v[..N]);
        }
    }
}

/// One panel of up to 8 tokens' activations for base NEON: copied side by
/// side, so that the token loop reads fixed-size arrays (no bounds checks,
/// no address arithmetic per token).
struct Copied {
    /// `[b][j]`: token `j`'s values of block `b`.
    x: [[[i8; 32]; TOK]; PB],
    /// `[b][j]`: token `j`'s scale of block `b`.
    dx: [[f32; TOK]; PB],
}

impl Copied {
    /// Fills blocks `0..nbp` from `x[j]` = token `j`'s blocks of the panel.
    #[target_feature(enable = "neon")]
    #[inline]
    fn prepare(&mut self, x: &[&[BlockQ8_0]]) {
        let nbp = x[0].len();
        for b in 0..nbp {
            for (xj, x) in self.x[b].iter_mut().zip(x) {
                *xj = x[b].qs;
            }
            self.dx[b] = scales8(x, b);
        }
    }
}

// ---------------------------------------------------------------- dotprod

/// One panel of up to 8 tokens' activations, transposed (module docs).
struct Panel {
    /// `[b][k][h]`: bytes `4k..4k+4` of tokens `4h..4h + 4`'s block `b`,
    /// token `4h + i` in bytes `4i..4i + 4`.
    x: [[[[i8; 16]; 2]; 8]; PB],
    /// `[b][j]`: token `j`'s scale of block `b`.
    dx: [[f32; TOK]; PB],
}

impl Panel {
    /// Fills blocks `0..nbp` from `x[j]` = token `j`'s blocks of the panel
    /// (`x.len() <= 8`, the other tokens zero).
    #[target_feature(enable = "neon")]
    #[inline]
    fn prepare(&mut self, x: &[&[BlockQ8_0]]) {
        let nbp = x[0].len();
        for b in 0..nbp {
            for j in 0..TOK {
                let words: [[i8; 4]; 8] = match x.get(j) {
                    Some(x) => bytemuck::cast(x[b].qs),
                    None => [[0; 4]; 8],
                };
                let (h, i) = (j / 4, j % 4);
                for (xk, wd) in self.x[b].iter_mut().zip(words) {
                    xk[h][4 * i..4 * i + 4].copy_from_slice(&wd);
                }
            }
            self.dx[b] = scales8(x, b);
        }
    }
}

/// `acc[j] += sum_{i<4} x[4j+i] * w[4K+i]` for the 4 i32 lanes: `SDOT`
/// by element, group `K` of `w` broadcast to every lane. Exact for every
/// byte pair, as [`super::dotprod::sdot`].
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot_lane<const K: i32>(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT (by element) is FEAT_DotProd, this fn's target feature;
    // `K < 4` is the 2-bit index the encoding takes (the assembler rejects
    // others); it reads the three registers, writes only `acc`'s, touches
    // no memory, stack or flags.
    unsafe {
        asm!(
            "sdot {a:v}.4s, {x:v}.16b, {w:v}.4b[{k}]",
            a = inout(vreg) acc,
            x = in(vreg) x,
            w = in(vreg) w,
            k = const K,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// The 4 groups of `w` against 4 transposed activation registers.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot4(acc: int32x4_t, x: &[[[i8; 16]; 2]], h: usize, w: int8x16_t) -> int32x4_t {
    // SAFETY: `x[k][h]` is 16 readable bytes; ld1 needs no alignment.
    let xk = |k: usize| unsafe { vld1q_s8(x[k][h].as_ptr()) };
    let acc = sdot_lane::<0>(acc, xk(0), w);
    let acc = sdot_lane::<1>(acc, xk(1), w);
    let acc = sdot_lane::<2>(acc, xk(2), w);
    sdot_lane::<3>(acc, xk(3), w)
}

/// The dotprod loop of the module docs; a lone token runs `gemv`.
///
/// # Panics
/// If the shapes do not fit ([`crate::quant::gemm_shape`]).
#[target_feature(enable = "neon,dotprod")]
fn gemm_sdot<W: Block>(
    w: &[W],
    xq: &[BlockQ8_0],
    t: usize,
    y: &mut [f32],
    gemv: impl Fn(&[W], &[BlockQ8_0], &mut [f32]),
) {
    let (nb, rows) = crate::quant::gemm_shape(w.len(), xq.len(), t, y.len());
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let mut p = Panel {
        x: [[[[0; 16]; 2]; 8]; PB],
        dx: [[0.0; TOK]; PB],
    };
    for i0 in (0..t).step_by(TOK) {
        let g = Group { nb, rows, i0 };
        match t - i0 {
            1 => gemv(w, &xq[i0 * nb..][..nb], &mut y[i0 * rows..][..rows]),
            n @ 2..=4 => g.sdot::<W, 1>(w, xq, n, &mut p, y),
            n => g.sdot::<W, 2>(w, xq, n.min(TOK), &mut p, y),
        }
    }
}

impl Group {
    /// Tokens `i0..i0 + n` (`n <= 4H`), all rows, with `sdot`.
    #[target_feature(enable = "neon,dotprod")]
    #[inline]
    fn sdot<W: Block, const H: usize>(
        self,
        w: &[W],
        xq: &[BlockQ8_0],
        n: usize,
        p: &mut Panel,
        y: &mut [f32],
    ) {
        for p0 in (0..self.nb).step_by(PB) {
            let panel = (p0, PB.min(self.nb - p0));
            let x = self.tokens::<TOK>(xq, n, panel);
            p.prepare(&x[..n]);
            let mut r0 = 0;
            while r0 + R <= self.rows {
                let tile: [&[W]; R] = core::array::from_fn(|r| self.row(w, r0 + r, panel));
                self.rows_sdot::<W, R, H>(tile, p, n, y, r0, p0 == 0);
                r0 += R;
            }
            for r in r0..self.rows {
                self.rows_sdot::<W, 1, H>([self.row(w, r, panel)], p, n, y, r, p0 == 0);
            }
        }
    }

    /// `N <= 4` rows from `r0` times the panel's `n <= 4H` tokens, their
    /// chains continued from `y` unless `first`.
    #[target_feature(enable = "neon,dotprod")]
    #[inline]
    fn rows_sdot<W: Block, const N: usize, const H: usize>(
        self,
        rows: [&[W]; N],
        p: &Panel,
        n: usize,
        y: &mut [f32],
        r0: usize,
        first: bool,
    ) {
        const { assert!(N <= 4 && H <= 2, "4 rows, 8 tokens") };
        let nbp = rows[0].len();
        // lane i of acc[r][h] = row r0 + r, token 4h + i
        // The chains start at 0, or go on from the previous panel's `y`.
        let mut acc = [[vdupq_n_f32(0.0); H]; N];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                for (h, a) in a.iter_mut().enumerate() {
                    let v: [f32; 4] = core::array::from_fn(|i| {
                        let j = 4 * h + i;
                        if j < n {
                            self.out(y, j, r0)[r]
                        } else {
                            0.0
                        }
                    });
                    // SAFETY: `v` is 4 readable f32; ld1 needs no alignment.
                    *a = unsafe { vld1q_f32(v.as_ptr()) };
                }
            }
        }
        for (b, (x, dx)) in p.x[..nbp].iter().zip(&p.dx).enumerate() {
            let ws: [Q32; N] = core::array::from_fn(|r| {
                // SAFETY: neon per this fn's target features.
                unsafe { rows[r][b].unpack() }
            });
            let dw = widen(core::array::from_fn(|r| {
                if r < N {
                    rows[r][b].scale()
                } else {
                    f16::ZERO
                }
            }));
            let isum: [[int32x4_t; H]; N] = core::array::from_fn(|r| {
                core::array::from_fn(|h| {
                    let s = sdot4(vdupq_n_s32(0), &x[..4], h, ws[r].0);
                    sdot4(s, &x[4..], h, ws[r].1)
                })
            });
            for (r, (a, s)) in acc.iter_mut().zip(isum).enumerate() {
                for (h, (a, s)) in a.iter_mut().zip(s).enumerate() {
                    // SAFETY: `dx[4h..]` is 4 readable f32 (`h < 2`).
                    let dx = unsafe { vld1q_f32(dx[4 * h..].as_ptr()) };
                    *a = vfmaq_f32(*a, vcvtq_f32_s32(s), mul_lane(dx, dw, r));
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (h, a) in a.iter().enumerate() {
                let mut v = [0.0f32; 4];
                // SAFETY: `v` is 4 writable f32.
                unsafe { vst1q_f32(v.as_mut_ptr(), *a) };
                for (i, v) in v.iter().enumerate().take(n.saturating_sub(4 * h)) {
                    self.out(y, 4 * h + i, r0)[r] = *v;
                }
            }
        }
    }
}
