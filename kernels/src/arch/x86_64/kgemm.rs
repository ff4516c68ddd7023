//! Q4_K / Q6_K GEMM for a batch of `t` tokens (prompt prefill) on AVX2:
//! `y[i] = W xq[i]` for every token `i`, each weight super-block unpacked
//! once per 8 tokens and multiplied with all 8 in one instruction (the
//! layout of `gemm.rs`, for super-blocks of 256 with sub-block scales).
//! The loop is generic over its product ([`Product`]): AVX2's here, the
//! `vpdpbusd` one of `kgemm512.rs` for the AVX-512 backend.
//!
//! The Q8_K activations are transposed so that a ymm holds the same 4
//! columns of 8 tokens (lane `j` = token `j`); a weight super-block's
//! 4-byte group `k` (its quants unpacked to one byte each, 0..=15 or
//! 0..=63) is broadcast to all lanes, so one `vpmaddubsw` does 4 columns
//! of 8 tokens. The sub-block scales are broadcast i16 pairs applied with
//! `vpmaddwd`, and the lanes stay tokens to the end: each lane ends as one
//! token's exact `isum` (and `msum`) of [`crate::kquant`], met with its
//! scales in the twin's f32 operations and added to the token's running
//! sum in the twin's order. So the result equals the scalar GEMV of each
//! token bit for bit.
//!
//! ```text
//! for each batch of up to GB = 8 groups of 8 tokens (the last group
//!     zero-padded; one of fewer than MIN_GROUP tokens: the GEMV per token):
//!   for each panel of up to PB = 8 super-blocks (2048 columns):
//!     per group (a Panel each, ~19 KiB):
//!       X[b][k]  = 8 x u32, lane j: bytes 4k..4k+4 of token j's qs of b   (k < 64; 16 KiB)
//!       BS[b][i] = 8 x (i16, i16), lane j: token j's bsums[2i], bsums[2i+1] (i < 8)
//!       dx[b]    = 8 tokens' f32 scales
//!     for each tile of R = 4 rows (then single rows):
//!       q[r][b][k] = the quants as bytes, element order; sc / m / d   (Tile, 11 KiB, filled once a batch)
//!       for each group of the batch:
//!       acc[r] = y[tokens][r] (0 for the first panel)   (R ymm: 8 tokens x f32; the running sums)
//!       for b in panel:
//!         Q4_K: for s in 0..8 (sub-blocks of 32):
//!                 i16[r] = sum_{k in s} maddubs(splat q[r][b][k], X[b][k])  (<= 8 * 2 * 15 * 128 < 2^15)
//!                 isum[r] += madd(i16[r], splat (sc[s], sc[s]))
//!               msum[r] = sum_s madd(BS[b][s], splat (m[s], m[s]))   (m[s] (bsums[2s] + bsums[2s+1]))
//!               acc[r] += (d_w dx) f32(isum) - (dmin_w dx) f32(msum)
//!         Q6_K: for g in 0..32 (pairs of groups, 8 weights; 2 per sub-block of 16):
//!                 i16[r] = maddubs(splat q[r][b][2g], X[b][2g]) + (.. 2g + 1)  (<= 2 * 2 * 63 * 128 < 2^15)
//!                 isum[r] += madd(i16[r], splat (sc[g/2], sc[g/2]))
//!               isum[r] += sum_i madd(BS[b][i], splat (-32 sc[2i], -32 sc[2i+1]))   (the - 32)
//!               acc[r] += (d_w dx) f32(isum)
//!       y[tokens][r] = acc
//! ```
//! Rows are whole super-blocks: no column tail. The panel's sums carry
//! over to the next panel through `y` (read back as the start of `acc`),
//! so the f32 additions keep the GEMV's order. Q4_K takes any byte; Q6_K's
//! `- 32` comes from `bsums`, which must be the sums of the activation
//! quants (as for the AVX2 GEMV; [`kquant::quantize_row_q8_k`] makes them
//! so). No `maddubs` pair saturates (`2 * 63 * 128` at most).
//!
//! Per row, super-block and 8 tokens that is ~150 vector instructions for
//! Q4_K (64 broadcast loads, 64 `maddubs`, 56 i16 adds, 16 `madd`) and
//! ~200 for Q6_K (its i16 sums overflow after two groups: 32 `madd`
//! instead of 8), ~19-25 per token, against ~40 per token for the GEMV.
//! The unpacking (`Tile::fill`: 8 stores of quants and 3 of i16 scale
//! pairs per super-block, the scales widened in registers) is done once
//! per tile of 4 rows and panel, for all 8 tokens.
//!
//! Measured in L2: a 256 KiB chunk of rows of 2048 columns (224 rows of
//! Q4_K, 156 of Q6_K), 64 tokens of Q8_K, 1 thread, thread CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), best of 9-15 runs of 3 calls, on a 2-core
//! AMD EPYC (Zen 3) VM shared with other builds (load 6-9: run to run the
//! numbers move by 20-50%, so only the best of each is quoted). Per token:
//!
//! | | AVX2 GEMV once per token | this kernel, t = 64 | ratio |
//! |---|---|---|---|
//! | Q4_K | 19.4 us | 6.8 us | 2.8x |
//! | Q6_K | 13.7 us | 5.4 us | 2.5x |
//!
//! - The other design, a register tile of R rows x T tokens with `maddubs`
//!   on the natural layout (each row's nibbles and scale shuffles unpacked
//!   in registers once per super-block, each token's activations loaded,
//!   one horizontal sum per row, token and super-block), built as a Q4_K
//!   prototype outside the crate and measured in the same runs: 2 x 4
//!   12.2 us, 1 x 8 12.9 us, 2 x 2 17.9 us per token; it does ~33
//!   instructions per row, token and super-block (8 loads, 8 `maddubs`,
//!   8 `madd`, 8 adds, its horizontal sum), the layout here ~19-25.
//! - Rows per tile: R = 3 measured 9.3 / 8.1 us (Q4_K / Q6_K), R = 6
//!   7.1 / 5.8 us (its accumulators spill), R = 4 the fastest.
//! - Filling the tile's scales byte by byte (u32 per scale, scalar) made
//!   a Q4_K group of 8 cost 75 us instead of 54.
//! - One filled tile for a batch of GB groups instead of one group: on the
//!   2-core Zen 4 VM (AVX-512 VNNI product), 224 rows x 2048 columns in
//!   L2, 64 tokens, thread CPU time, best of 5 x 31 calls, per row,
//!   super-block and token: Q4_K 2.94 ns (GB = 1), 2.69 (2), 2.60 (4),
//!   2.51 (8); Q6_K 3.20, 2.86, 2.74, 2.66. A 128-token Q6_K prefill spent
//!   17% of its samples (`perf`) in `Tile::fill` with GB = 1.
//! - A group costs about the same whatever its token count (Q4_K ~54 us,
//!   Q6_K ~45 us on the chunk), the GEMV ~19.6 / ~14.3 us per token: so
//!   groups of fewer than [`Batched::MIN_GROUP`] = 3 (Q4_K) / 4 (Q6_K)
//!   tokens run the GEMV.

use core::arch::x86_64::*;

use super::avx2::Avx2;
use crate::kquant::{self, BlockQ4_K, BlockQ6_K, BlockQ8_K, QK_K};

/// Tokens per ymm (one lane each).
pub(super) const TOK: usize = 8;
/// 4-byte groups per super-block.
pub(super) const G: usize = QK_K / 4;
/// Activation super-blocks transposed at once (16 KiB of `X`, half of L1d).
pub(super) const PB: usize = 8;
/// Rows per tile.
const R: usize = 4;
/// Groups of 8 tokens a filled tile serves before the next is filled
/// (their panels, ~19 KiB each, on the stack).
const GB: usize = 8;

impl Avx2 {
    /// `y[i] = W xq[i]` for `t` tokens, Q4_K; the caller checked the
    /// shapes (`xq` is `t` rows of `nb` super-blocks, `w` is `rows x nb`,
    /// `y` is `t x rows`, token-major).
    pub(crate) fn gemm_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Avx2::new` passed,
        // so the CPU has the features `gemm_q4_k_k` is compiled for.
        unsafe { gemm_q4_k_k(self, w, xq, t, y) }
    }

    /// As [`Avx2::gemm_q4_k`], Q6_K weights.
    pub(crate) fn gemm_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemm_q4_k`.
        unsafe { gemm_q6_k_k(self, w, xq, t, y) }
    }
}

/// 32 bytes of `v` as a ymm.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load<T: bytemuck::Pod>(v: &[T; 8]) -> __m256i {
    assert!(size_of::<[T; 8]>() == 32);
    // SAFETY: `v` is 32 readable bytes (checked above, at compile time for
    // the u32 / f32 callers); loadu needs no alignment.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// Two i16 in the halves of a u32 (`lo` in the low half).
#[inline]
fn pair(lo: i16, hi: i16) -> u32 {
    u32::from(lo as u16) | (u32::from(hi as u16) << 16)
}

/// One f16 (bits) widened with `vcvtph2ps`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// One panel of up to 8 tokens' activations, transposed (module docs).
pub(super) struct Panel {
    /// `[b][k][j]`: bytes `4k..4k+4` of token `j`'s super-block `b`.
    pub(super) x: [[[u32; TOK]; G]; PB],
    /// `[b][i][j]`: token `j`'s `bsums[2i]`, `bsums[2i + 1]` as i16 pair.
    pub(super) bs: [[[u32; TOK]; 8]; PB],
    /// `[b][j]`: token `j`'s scale of super-block `b`.
    pub(super) dx: [[f32; TOK]; PB],
}

impl Panel {
    fn new() -> Self {
        Panel {
            x: [[[0; TOK]; G]; PB],
            bs: [[[0; TOK]; 8]; PB],
            dx: [[0.0; TOK]; PB],
        }
    }

    /// Fills super-blocks `0..nbp` from tokens `i0..i0 + n` (`n <= 8`;
    /// the other lanes zero), columns `p0..p0 + nbp` of rows of `nb`.
    fn prepare(
        &mut self,
        xq: &[BlockQ8_K],
        nb: usize,
        (i0, n): (usize, usize),
        (p0, nbp): (usize, usize),
    ) {
        let zero = BlockQ8_K::default();
        for b in 0..nbp {
            for j in 0..TOK {
                let x = if j < n {
                    &xq[(i0 + j) * nb + p0 + b]
                } else {
                    &zero
                };
                let words: [[u8; 4]; G] = bytemuck::cast(x.qs);
                for (xk, wd) in self.x[b].iter_mut().zip(words) {
                    xk[j] = u32::from_le_bytes(wd);
                }
                for (i, bs) in self.bs[b].iter_mut().enumerate() {
                    bs[j] = pair(x.bsums[2 * i], x.bsums[2 * i + 1]);
                }
                self.dx[b][j] = x.d;
            }
        }
    }
}

/// The weights of a tile of `N` rows over a panel, unpacked so that the
/// product loop broadcasts each 4-byte group and each scale with a load.
pub(super) struct Tile<const N: usize> {
    /// `[r][b][k]`: quants 4k..4k+4 as bytes (Q4_K 0..=15, Q6_K 0..=63).
    pub(super) q: [[[u32; G]; PB]; N],
    /// `[r][b]`: the scales as i16 pairs or i32 ([`Batched::unpack`]).
    pub(super) sc: [[[u32; 24]; PB]; N],
    /// `[r][b]`: `d` and (Q4_K) `dmin` as f32.
    pub(super) d: [[[f32; 2]; PB]; N],
}

impl<const N: usize> Tile<N> {
    fn new() -> Self {
        Tile {
            q: [[[0; G]; PB]; N],
            sc: [[[0; 24]; PB]; N],
            d: [[[0.0; 2]; PB]; N],
        }
    }

    /// Unpacks super-blocks `0..nbp` of each row for `k`. Never inlined
    /// (as in `gemm.rs`: the product loop then broadcasts from memory).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline(never)]
    fn fill<W: Batched, K: Product<W>>(&mut self, k: K, rows: [&[W]; N], nbp: usize) {
        for (r, row) in rows.iter().enumerate() {
            for (b, w) in row[..nbp].iter().enumerate() {
                self.d[r][b] = k.unpack(w, &mut self.q[r][b], &mut self.sc[r][b]);
            }
        }
    }
}

/// A weight super-block type's unpacking for the batched loop.
pub(super) trait Batched: Copy {
    /// Writes the quants as bytes in element order to `q` and the scales
    /// to `sc` (Q4_K: `[0..8]` `(sc[s], sc[s])`, `[8..16]` `(m[s], m[s])`;
    /// Q6_K: `[0..16]` `(sc[j], sc[j])`, `[16..24]` `(-32 sc[2i],
    /// -32 sc[2i + 1])`; with `I32` the sub-block scales `[0..8]` /
    /// `[0..16]` as one i32 each instead of pairs); returns `[d, dmin]`
    /// as f32.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    unsafe fn unpack<const I32: bool>(&self, q: &mut [u32; G], sc: &mut [u32; 24]) -> [f32; 2];
}

/// An instruction set's product loop over the unpacked tiles, and the
/// GEMV it runs for small groups; the value is the CPU proof.
pub(super) trait Product<W>: Copy {
    /// A group of fewer tokens than this runs the GEMV once per token
    /// instead (a group costs about the same whatever its count; measured
    /// in the module docs).
    const MIN_GROUP: usize;

    /// The panel's `nbp` super-blocks of a tile times its 8 tokens, added
    /// to `acc` (per row, 8 lanes of token sums).
    fn tile<const N: usize>(
        self,
        p: &Panel,
        nbp: usize,
        u: &Tile<N>,
        acc: [__m256; N],
    ) -> [__m256; N];

    /// `y = W x` for one token.
    fn gemv(self, w: &[W], xq: &[BlockQ8_K], y: &mut [f32]);

    /// [`Batched::unpack`] with the scale layout of this product loop.
    fn unpack(self, w: &W, q: &mut [u32; G], sc: &mut [u32; 24]) -> [f32; 2];
}

impl Batched for BlockQ4_K {
    #[inline(always)]
    unsafe fn unpack<const I32: bool>(&self, q: &mut [u32; G], sc: &mut [u32; 24]) -> [f32; 2] {
        // SAFETY: CPU features per this fn's contract.
        unsafe { unpack_q4_k::<I32>(self, q, sc) }
    }
}

impl Batched for BlockQ6_K {
    #[inline(always)]
    unsafe fn unpack<const I32: bool>(&self, q: &mut [u32; G], sc: &mut [u32; 24]) -> [f32; 2] {
        // SAFETY: CPU features per this fn's contract.
        unsafe { unpack_q6_k::<I32>(self, q, sc) }
    }
}

/// `impl Product<$block> for $isa`: its tile kernel `$tile`, its GEMV
/// method `$gemv`, and the unpacking of weights with i32 scales (`$i32`)
/// or i16 ones.
macro_rules! product {
    ($isa:ty, $block:ty, $min_group:expr, $tile:path, $gemv:ident, $i32:literal) => {
        impl Product<$block> for $isa {
            const MIN_GROUP: usize = $min_group;

            #[inline(always)]
            fn tile<const N: usize>(
                self,
                p: &Panel,
                nbp: usize,
                u: &Tile<N>,
                acc: [__m256; N],
            ) -> [__m256; N] {
                // SAFETY: `self` proves the CPU features of the tile kernel.
                unsafe { $tile(p, nbp, u, acc) }
            }

            fn gemv(self, w: &[$block], xq: &[BlockQ8_K], y: &mut [f32]) {
                self.$gemv(w, xq, y)
            }

            #[inline(always)]
            fn unpack(self, w: &$block, q: &mut [u32; G], sc: &mut [u32; 24]) -> [f32; 2] {
                // SAFETY: `self` proves AVX2, FMA and F16C (every ISA here
                // includes them).
                unsafe { w.unpack::<$i32>(q, sc) }
            }
        }
    };
}
pub(super) use product;

product!(Avx2, BlockQ4_K, 3, tile_q4_k, gemv_q4_k, false);
product!(Avx2, BlockQ6_K, 4, tile_q6_k, gemv_q6_k, false);

/// Stores `v` to `q[at..at + 8]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store8<const L: usize>(q: &mut [u32; L], at: usize, v: __m256i) {
    let q = &mut q[at..at + 8];
    // SAFETY: `q` is 8 u32 = 32 writable bytes; storeu needs no alignment.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), v) };
}

/// Stores the 8 i32 lanes of `v` (each in -32768..=32767) as i16 pairs
/// `(v, v)` to `sc[at..at + 8]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_pairs(sc: &mut [u32; 24], at: usize, v: __m256i) {
    let lo = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF));
    store8(sc, at, _mm256_or_si256(lo, _mm256_slli_epi32::<16>(v)));
}

/// [`Batched::unpack`] for Q4_K: byte `32 c + l` holds elements `64 c + l`
/// (low nibble) and `64 c + 32 + l` (high).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unpack_q4_k<const I32: bool>(w: &BlockQ4_K, q: &mut [u32; G], sc: &mut [u32; 24]) -> [f32; 2] {
    let m4 = _mm256_set1_epi8(0x0F);
    let qs: &[[u8; 32]; 4] = bytemuck::cast_ref(&w.qs);
    for (c, qs) in qs.iter().enumerate() {
        // SAFETY: `qs` is 32 readable bytes; loadu needs no alignment.
        let v = unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) };
        store8(q, 16 * c, _mm256_and_si256(v, m4));
        store8(
            q,
            16 * c + 8,
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
        );
    }
    // SAFETY: the 16 bytes are readable; loadu needs no alignment.
    let sm = unsafe { _mm_loadu_si128(w.scales_mins().as_ptr().cast()) };
    if I32 {
        store8(sc, 0, _mm256_cvtepu8_epi32(sm));
    } else {
        store_pairs(sc, 0, _mm256_cvtepu8_epi32(sm));
    }
    store_pairs(sc, 8, _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(sm, sm)));
    [f16_to_f32(w.d.to_bits()), f16_to_f32(w.dmin.to_bits())]
}

/// [`Batched::unpack`] for Q6_K: per half `h`, quant `k` of 4 from `ql`
/// (low or high nibble) and bits `2k..2k+2` of `qh` (as the GEMV).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn unpack_q6_k<const I32: bool>(w: &BlockQ6_K, q: &mut [u32; G], sc: &mut [u32; 24]) -> [f32; 2] {
    let m4 = _mm256_set1_epi8(0x0F);
    let ql: &[[u8; 32]; 4] = bytemuck::cast_ref(&w.ql);
    let qh: &[[u8; 32]; 2] = bytemuck::cast_ref(&w.qh);
    for h in 0..2 {
        // SAFETY: each is 32 readable bytes; loadu needs no alignment.
        let (l0, l1, qh) = unsafe {
            (
                _mm256_loadu_si256(ql[2 * h].as_ptr().cast()),
                _mm256_loadu_si256(ql[2 * h + 1].as_ptr().cast()),
                _mm256_loadu_si256(qh[h].as_ptr().cast()),
            )
        };
        let m2 = _mm256_set1_epi8(0x30);
        let high = [
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
            _mm256_and_si256(qh, m2),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
        ];
        let low = [
            _mm256_and_si256(l0, m4),
            _mm256_and_si256(l1, m4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
        ];
        for (k, (lo, hi)) in low.into_iter().zip(high).enumerate() {
            store8(q, 32 * h + 8 * k, _mm256_or_si256(lo, hi));
        }
    }
    // SAFETY: `w.scales` is 16 readable bytes; loadu needs no alignment.
    let s8 = unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) };
    let (lo, hi) = (
        _mm256_cvtepi8_epi32(s8),
        _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(s8, s8)),
    );
    if I32 {
        store8(sc, 0, lo);
        store8(sc, 8, hi);
    } else {
        store_pairs(sc, 0, lo);
        store_pairs(sc, 8, hi);
    }
    // -32 sc as 16 x i16: pairs (2i, 2i + 1) in u32 lane i.
    let off = _mm256_slli_epi16::<5>(_mm256_sub_epi16(
        _mm256_setzero_si256(),
        _mm256_cvtepi8_epi16(s8),
    ));
    store8(sc, 16, off);
    [f16_to_f32(w.d.to_bits()), 0.0]
}

/// Adds super-block `b`'s f32 term of each row `r` to `acc[r]`, given the
/// rows' exact scaled sums `isum`: Q4_K subtracts the mins times the
/// activation's bsums, `(d_w d_x) f32(isum) - (dmin_w d_x) f32(msum)`
/// per token lane, the scalar twin's operations (module docs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn finish_q4_k<const N: usize>(
    p: &Panel,
    u: &Tile<N>,
    b: usize,
    isum: [__m256i; N],
    acc: &mut [__m256; N],
) {
    let splat = |v: u32| _mm256_set1_epi32(v as i32);
    let dx = _mm256_castsi256_ps(load(&p.dx[b]));
    for (r, (a, i)) in acc.iter_mut().zip(isum).enumerate() {
        let mut msum = _mm256_setzero_si256();
        for s in 0..8 {
            let m = _mm256_madd_epi16(load(&p.bs[b][s]), splat(u.sc[r][b][8 + s]));
            msum = _mm256_add_epi32(msum, m);
        }
        let [dw, dmin] = u.d[r][b];
        let d = _mm256_mul_ps(_mm256_set1_ps(dw), dx);
        let dm = _mm256_mul_ps(_mm256_set1_ps(dmin), dx);
        let term = _mm256_sub_ps(
            _mm256_mul_ps(d, _mm256_cvtepi32_ps(i)),
            _mm256_mul_ps(dm, _mm256_cvtepi32_ps(msum)),
        );
        *a = _mm256_add_ps(*a, term);
    }
}

/// As [`finish_q4_k`] for Q6_K: the `-32` offset of every quant (its
/// scales times the bsums) added to `isum`, then `(d_w d_x) f32(isum)`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn finish_q6_k<const N: usize>(
    p: &Panel,
    u: &Tile<N>,
    b: usize,
    isum: [__m256i; N],
    acc: &mut [__m256; N],
) {
    let splat = |v: u32| _mm256_set1_epi32(v as i32);
    let dx = _mm256_castsi256_ps(load(&p.dx[b]));
    for (r, (a, mut i)) in acc.iter_mut().zip(isum).enumerate() {
        for s in 0..8 {
            let o = _mm256_madd_epi16(load(&p.bs[b][s]), splat(u.sc[r][b][16 + s]));
            i = _mm256_add_epi32(i, o);
        }
        let d = _mm256_mul_ps(_mm256_set1_ps(u.d[r][b][0]), dx);
        *a = _mm256_add_ps(*a, _mm256_mul_ps(d, _mm256_cvtepi32_ps(i)));
    }
}

/// [`Batched::tile`] for Q4_K (module docs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_q4_k<const N: usize>(
    p: &Panel,
    nbp: usize,
    u: &Tile<N>,
    mut acc: [__m256; N],
) -> [__m256; N] {
    let splat = |v: u32| _mm256_set1_epi32(v as i32);
    for b in 0..nbp {
        let mut isum = [_mm256_setzero_si256(); N];
        for s in 0..8 {
            let mut i16s = [_mm256_setzero_si256(); N];
            for k in 8 * s..8 * s + 8 {
                let xk = load(&p.x[b][k]);
                for (v, q) in i16s.iter_mut().zip(&u.q) {
                    *v = _mm256_add_epi16(*v, _mm256_maddubs_epi16(splat(q[b][k]), xk));
                }
            }
            for ((i, v), sc) in isum.iter_mut().zip(i16s).zip(&u.sc) {
                *i = _mm256_add_epi32(*i, _mm256_madd_epi16(v, splat(sc[b][s])));
            }
        }
        finish_q4_k(p, u, b, isum, &mut acc);
    }
    acc
}

/// [`Batched::tile`] for Q6_K (module docs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_q6_k<const N: usize>(
    p: &Panel,
    nbp: usize,
    u: &Tile<N>,
    mut acc: [__m256; N],
) -> [__m256; N] {
    let splat = |v: u32| _mm256_set1_epi32(v as i32);
    for b in 0..nbp {
        let mut isum = [_mm256_setzero_si256(); N];
        for g in 0..G / 2 {
            let (x0, x1) = (load(&p.x[b][2 * g]), load(&p.x[b][2 * g + 1]));
            for ((i, q), sc) in isum.iter_mut().zip(&u.q).zip(&u.sc) {
                let v = _mm256_add_epi16(
                    _mm256_maddubs_epi16(splat(q[b][2 * g]), x0),
                    _mm256_maddubs_epi16(splat(q[b][2 * g + 1]), x1),
                );
                *i = _mm256_add_epi32(*i, _mm256_madd_epi16(v, splat(sc[b][g / 2])));
            }
        }
        finish_q6_k(p, u, b, isum, &mut acc);
    }
    acc
}

/// The running sums of rows `r0..r0 + N` for tokens `i0..i0 + n` (lanes),
/// from `y`, or zero for the first panel.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn get<const N: usize>(
    y: &[f32],
    rows: usize,
    (i0, n): (usize, usize),
    r0: usize,
    first: bool,
) -> [__m256; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    if !first {
        for (r, a) in acc.iter_mut().enumerate() {
            let mut v = [0.0f32; TOK];
            for (j, v) in v.iter_mut().take(n).enumerate() {
                *v = y[(i0 + j) * rows + r0 + r];
            }
            *a = _mm256_castsi256_ps(load(&v));
        }
    }
    acc
}

/// Writes the `n` token lanes of `acc[r]` to `y[(i0 + j) * rows + r0 + r]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn put<const N: usize>(
    acc: [__m256; N],
    y: &mut [f32],
    rows: usize,
    (i0, n): (usize, usize),
    r0: usize,
) {
    for (r, a) in acc.iter().enumerate() {
        let mut v = [0.0f32; TOK];
        // SAFETY: `v` is 8 writable f32; storeu needs no alignment.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *a) };
        for (j, v) in v.iter().take(n).enumerate() {
            y[(i0 + j) * rows + r0 + r] = *v;
        }
    }
}

/// The loop of the module docs, with `k`'s product loop.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn gemm_blocks<W: Batched, K: Product<W>>(
    k: K,
    w: &[W],
    xq: &[BlockQ8_K],
    t: usize,
    y: &mut [f32],
) {
    let (nb, rows) = kquant::gemm_shape(w.len(), xq.len(), t, y.len());
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let mut ps: [Panel; GB] = core::array::from_fn(|_| Panel::new());
    let (mut u, mut u1) = (Tile::<R>::new(), Tile::<1>::new());
    for i0 in (0..t).step_by(TOK * GB) {
        // This batch's groups of 8 tokens; a last group of fewer than
        // MIN_GROUP runs the GEMV per token.
        let mut groups = [(0, 0); GB];
        let mut ng = 0;
        for g0 in (i0..t.min(i0 + TOK * GB)).step_by(TOK) {
            let n = TOK.min(t - g0);
            if n < K::MIN_GROUP {
                for i in g0..g0 + n {
                    k.gemv(
                        w,
                        &xq[i * nb..(i + 1) * nb],
                        &mut y[i * rows..(i + 1) * rows],
                    );
                }
            } else {
                groups[ng] = (g0, n);
                ng += 1;
            }
        }
        let groups = &groups[..ng];
        if groups.is_empty() {
            continue;
        }
        for p0 in (0..nb).step_by(PB) {
            let nbp = PB.min(nb - p0);
            for (p, &g) in ps.iter_mut().zip(groups) {
                p.prepare(xq, nb, g, (p0, nbp));
            }
            let row = |r: usize| &w[r * nb + p0..r * nb + p0 + nbp];
            let mut r0 = 0;
            while r0 + R <= rows {
                u.fill(k, core::array::from_fn(|r| row(r0 + r)), nbp);
                for (p, &g) in ps.iter().zip(groups) {
                    let acc = get::<R>(y, rows, g, r0, p0 == 0);
                    let acc = k.tile(p, nbp, &u, acc);
                    put(acc, y, rows, g, r0);
                }
                r0 += R;
            }
            for r in r0..rows {
                u1.fill(k, [row(r)], nbp);
                for (p, &g) in ps.iter().zip(groups) {
                    let acc = get::<1>(y, rows, g, r, p0 == 0);
                    let acc = k.tile(p, nbp, &u1, acc);
                    put(acc, y, rows, g, r);
                }
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_q4_k_k(a: Avx2, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm_blocks(a, w, xq, t, y)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_q6_k_k(a: Avx2, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm_blocks(a, w, xq, t, y)
}
