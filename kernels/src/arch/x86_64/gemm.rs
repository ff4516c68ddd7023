//! Q8_0 / Q4_0 GEMM for a batch of `t` tokens (prompt prefill) on AVX2
//! and, for Q8_0, AVX-512 VNNI ([`tile_vnni`]: one `vpdpbusd` per group
//! and row):
//! `y[i] = W x[i]` for every token `i`, each weight block read once per
//! 8 tokens and multiplied with all 8 in one instruction.
//!
//! The activations are transposed so that a ymm holds the same 4 columns
//! of 8 tokens (lane `j` = token `j`); a weight block's 4-byte group `k`
//! is broadcast to all lanes, so one `vpmaddubsw` does 4 columns of 8
//! tokens and the lanes stay tokens to the end: each lane ends as one
//! token's exact block sum, scaled once (no horizontal sums, no partial
//! lanes rounded apart).
//!
//! ```text
//! for each group of 8 tokens (the last one zero-padded; fewer than
//!                             MIN_GROUP tokens: the GEMV per token):
//!   for each panel of up to PB = 64 blocks:
//!     X[b][k] = 8 x u32, lane j: bytes 4k..4k+4 of token j's block b   (stack, 16 KiB)
//!     dx[b] = 8 tokens' f32 scales; Q4_0: c[b] = 8 tokens' 8 * sum qx
//!     for each tile of R = 4 rows (then single rows):
//!       q[r][b] = Q4_0 nibbles as u8 (0..=15) / Q8_0 |w|, d[r][b] = f32(d_w)
//!                   (Tile, 9 KiB, filled by a call: then each group is a broadcast load)
//!       acc[r] = 0                                    (R ymm: 8 tokens x f32 each)
//!       for b in panel:
//!         for k in 0..8:  xk = X[b][k];  for r: qk = splat(q[r][b][k])
//!           Q4_0: i16[r] += maddubs(qk, xk)           (|sum| <= 8 * 2 * 15 * 128 < 2^15)
//!           Q8_0: i32[r] += madd(maddubs(qk, sign(xk, splat(w_k))), 1)   (pairs <= 2 * 128 * 127)
//!         Q4_0: i32[r] = madd(i16[r], 1) - c[b]       (sum (q - 8) x, exact)
//!         acc[r] += splat(d[r][b]) * dx[b] * f32(i32[r])
//!       y[token][row] = acc lanes (+= after the first panel)
//! ```
//! Rows are whole blocks: no column tail. Q8_0 activations must not hold
//! -128 (the sign trick of [`super::quant`]); the Q4_0 path takes any byte.
//!
//! Per row, block and 8 tokens that is ~21 vector instructions for Q4_0
//! (16 in the k loop) and ~37 for Q8_0 (32: its pair sums need `vpmaddwd`
//! per group, two of them overflow i16), against ~8 per token for the
//! GEMV. Measured in L2 (a 256 KiB chunk of 228 x 2048, 64 tokens,
//! thread CPU time, Zen 3 VM): per token Q4_0 8 us against 17 us of
//! GEMV, Q8_0 12-14 us against 17 us.

use core::arch::x86_64::*;

use super::avx2::Avx2;
use super::quant::{f16x8, load_q4, load_q8, load_q8_biased, scales8, Scaled};
use super::vnni::Vnni;
use crate::quant::{BlockQ4_0, BlockQ8_0};

/// Tokens per ymm (one lane each).
const TOK: usize = 8;
/// Activation blocks transposed at once (16 KiB of `X`, half of L1d).
const PB: usize = 64;
/// Rows per tile.
const R: usize = 4;

impl Avx2 {
    /// `y[i] = W xq[i]` for `t` tokens, Q8_0; the caller checked the shapes
    /// (`xq` is `t` rows of `nb` blocks, `w` is `rows x nb`, `y` is
    /// `t x rows`, token-major).
    pub(crate) fn gemm_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Avx2::new` passed,
        // so the CPU has the features `gemm_q8_0_k` is compiled for.
        unsafe { gemm_q8_0_k(w, xq, t, y) }
    }

    /// As [`Avx2::gemm_q8_0`], Q4_0 weights.
    pub(crate) fn gemm_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemm_q8_0`.
        unsafe { gemm_q4_0_k(w, xq, t, y) }
    }
}

impl Vnni {
    /// As [`Avx2::gemm_q8_0`], with `vpdpbusd` ([`tile_vnni`]).
    pub(crate) fn gemm_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Vnni::new`
        // passed, so the CPU has the features `gemm_q8_0_vnni` is
        // compiled for.
        unsafe { gemm_q8_0_vnni(w, xq, t, y) }
    }

    /// As [`Avx2::gemm_q4_0`], with `vpdpbusd` ([`tile_vnni`]).
    pub(crate) fn gemm_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemm_q8_0`.
        unsafe { gemm_q4_0_vnni(w, xq, t, y) }
    }
}

/// One panel of up to 8 tokens' activations, transposed (module docs).
struct Panel {
    /// `[b][k][j]`: bytes `4k..4k+4` of token `j`'s block `b`.
    x: [[[u32; TOK]; 8]; PB],
    /// `[b][j]`: token `j`'s scale of block `b`.
    dx: [[f32; TOK]; PB],
    /// `[b][j]`: `k * sum qs` of token `j`'s block `b`, for weights
    /// stored as unsigned `w + k` (Q4_0's nibbles: 8; VNNI Q8_0: 128).
    c: [[i32; TOK]; PB],
}

impl Panel {
    /// Fills blocks `0..nbp` from tokens `i0..i0 + n` (`n <= 8`; the other
    /// lanes zero), columns `p0..p0 + nbp` of rows of `nb` blocks; `c`
    /// with `offset = Some(k)`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn prepare(
        &mut self,
        xq: &[BlockQ8_0],
        nb: usize,
        (i0, n): (usize, usize),
        (p0, nbp): (usize, usize),
        offset: Option<i32>,
    ) {
        let tok = |j: usize, b: usize| &xq[(i0 + j) * nb + p0 + b];
        for b in 0..nbp {
            for j in 0..TOK {
                let words: [[u8; 4]; 8] = if j < n {
                    bytemuck::cast(tok(j, b).qs)
                } else {
                    [[0; 4]; 8]
                };
                for (xk, wd) in self.x[b].iter_mut().zip(words) {
                    xk[j] = u32::from_le_bytes(wd);
                }
                if let Some(k) = offset {
                    self.c[b][j] = if j < n { k * sum(tok(j, b)) } else { 0 };
                }
            }
            let d = f16x8(|j| if j < n { tok(j, b).d.to_bits() } else { 0 });
            // SAFETY: `self.dx[b]` is 8 writable f32; storeu needs no alignment.
            unsafe { _mm256_storeu_ps(self.dx[b].as_mut_ptr(), d) };
        }
    }
}

/// `sum_j qs[j]` of an activation block (the offsets' factor, per token).
#[inline(always)]
fn sum(x: &BlockQ8_0) -> i32 {
    x.qs.iter().map(|&q| i32::from(q)).sum::<i32>()
}

/// The weights of a tile of `N` rows over a panel, unpacked so that the
/// product loop broadcasts each 4-byte group `k` with a load.
struct Tile<const N: usize> {
    /// `[r][b][k]`: Q4_0 nibbles as bytes (0..=15), or Q8_0 `|w|`.
    q: [[[u32; 8]; PB]; N],
    /// `[r][b]`: the block's scale.
    d: [[f32; PB]; N],
}

impl<const N: usize> Tile<N> {
    fn new() -> Self {
        Tile {
            q: [[[0; 8]; PB]; N],
            d: [[0.0; PB]; N],
        }
    }

    /// Unpacks blocks `0..nbp` of each row with `unpack`, and their scales.
    /// Never inlined: inlined, LLVM would keep each unpacked block in a
    /// register and broadcast its groups with two shuffles each (on the
    /// two shuffle pipes), instead of eight broadcast loads.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline(never)]
    fn fill<W: Scaled>(&mut self, rows: [&[W]; N], nbp: usize, unpack: impl Fn(&W) -> __m256i) {
        for ((row, q), d) in rows.iter().zip(&mut self.q).zip(&mut self.d) {
            let row = &row[..nbp];
            for (w, q) in row.iter().zip(q.iter_mut()) {
                // SAFETY: `q` is 32 writable bytes; storeu needs no alignment.
                unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), unpack(w)) };
            }
            let (wg, wt) = row.as_chunks::<8>();
            let mut last = [W::default(); 8];
            last[..wt.len()].copy_from_slice(wt);
            let tail = (!wt.is_empty()).then_some(&last);
            for (w8, d8) in wg.iter().chain(tail).zip(d.as_chunks_mut::<8>().0) {
                // SAFETY: `d8` is 8 writable f32.
                unsafe { _mm256_storeu_ps(d8.as_mut_ptr(), scales8(w8)) };
            }
        }
    }
}

/// A weight block type's part of the batched loop.
trait Batched: Scaled {
    /// Whether the panel needs `c` (Q4_0's offset).
    const SUMS: bool;
    /// Whether the VNNI backend runs [`tile_vnni`] (else [`Batched::tile`]).
    const VNNI_TILE: bool;
    /// `k` of the unsigned weights `w + k` the VNNI tile multiplies.
    const VNNI_BIAS: u8;
    /// A group of fewer tokens than this runs the GEMV once per token
    /// instead (a group costs the same whatever its count). Measured in
    /// L2 (a 256 KiB chunk of 228 x 2048, thread CPU time, Zen 3 VM): a
    /// group costs ~100 us for Q8_0 and ~64 us for Q4_0, the GEMV ~17 us
    /// per token for either.
    const MIN_GROUP: usize;

    /// `N` rows (`rows[r]` = that row's `nbp` blocks of the panel) times
    /// the panel's 8 tokens: per row, 8 lanes of token sums.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    unsafe fn tile<const N: usize>(
        rows: [&[Self]; N],
        p: &Panel,
        nbp: usize,
        u: &mut Tile<N>,
    ) -> [__m256; N];

    /// `y = W x` for one token.
    ///
    /// # Safety
    /// As [`Batched::tile`].
    unsafe fn gemv(w: &[Self], xq: &[BlockQ8_0], y: &mut [f32]);

    /// The block's 32 weights as unsigned bytes `w + VNNI_BIAS`.
    ///
    /// # Safety
    /// As [`Batched::tile`].
    unsafe fn unpack_vnni(w: &Self) -> __m256i;

    /// [`Batched::gemv`] with VNNI.
    ///
    /// # Safety
    /// The CPU has the features of [`Vnni`].
    unsafe fn gemv_vnni(w: &[Self], xq: &[BlockQ8_0], y: &mut [f32]);
}

impl Batched for BlockQ4_0 {
    const SUMS: bool = true;
    /// The AVX2 tile's `vpmaddubsw` + `vpaddw` per group and row beat one
    /// `vpdpbusd` on Zen 4 (in L2, 228 x 2048, 64 tokens: 0.38 against
    /// 0.47-0.50 ns per block and token, `vpdpbusd` issuing about once a
    /// cycle), so Q4_0 keeps it.
    const VNNI_TILE: bool = false;
    const VNNI_BIAS: u8 = 8;
    const MIN_GROUP: usize = 4;

    #[inline(always)]
    unsafe fn tile<const N: usize>(
        rows: [&[Self]; N],
        p: &Panel,
        nbp: usize,
        u: &mut Tile<N>,
    ) -> [__m256; N] {
        // SAFETY: CPU features per this fn's contract.
        unsafe { tile_q4(rows, p, nbp, u) }
    }

    #[inline(always)]
    unsafe fn gemv(w: &[Self], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: CPU features per this fn's contract.
        unsafe { super::quant::gemv_q4_0_k(w, xq, y) }
    }

    #[inline(always)]
    unsafe fn unpack_vnni(w: &Self) -> __m256i {
        // SAFETY: CPU features per this fn's contract.
        unsafe { load_q4(w) }
    }

    #[inline(always)]
    unsafe fn gemv_vnni(w: &[Self], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: CPU features per this fn's contract.
        unsafe { super::quant::gemv_q4_0_vnni(w, xq, y) }
    }
}

impl Batched for BlockQ8_0 {
    const SUMS: bool = false;
    /// One `vpdpbusd` replaces two `vpsignb`, `vpmaddubsw`, `vpmaddwd` and
    /// `vpaddd` (in L2, 228 x 2048, 64 tokens: 0.48-0.52 against 0.69-0.71
    /// ns per block and token on Zen 4).
    const VNNI_TILE: bool = true;
    const VNNI_BIAS: u8 = 128;
    const MIN_GROUP: usize = 6;

    #[inline(always)]
    unsafe fn tile<const N: usize>(
        rows: [&[Self]; N],
        p: &Panel,
        nbp: usize,
        u: &mut Tile<N>,
    ) -> [__m256; N] {
        // SAFETY: CPU features per this fn's contract.
        unsafe { tile_q8(rows, p, nbp, u) }
    }

    #[inline(always)]
    unsafe fn gemv(w: &[Self], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: CPU features per this fn's contract.
        unsafe { super::quant::gemv_q8_0_k(w, xq, y) }
    }

    #[inline(always)]
    unsafe fn unpack_vnni(w: &Self) -> __m256i {
        // SAFETY: CPU features per this fn's contract.
        unsafe { load_q8_biased(w) }
    }

    #[inline(always)]
    unsafe fn gemv_vnni(w: &[Self], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: CPU features per this fn's contract (VNNI implies AVX2,
        // FMA and F16C); the AVX2 GEMV is the faster one (`quant.rs`).
        unsafe { super::quant::gemv_q8_0_k(w, xq, y) }
    }
}

/// [`Batched::tile`] for Q4_0: 8 broadcast groups of nibbles into i16
/// sums per row (module docs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_q4<const N: usize>(
    rows: [&[BlockQ4_0]; N],
    p: &Panel,
    nbp: usize,
    u: &mut Tile<N>,
) -> [__m256; N] {
    u.fill(rows, nbp, |w| load_q4(w));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    for b in 0..nbp {
        let mut i16s = [_mm256_setzero_si256(); N];
        for (k, xk) in p.x[b].iter().enumerate() {
            // SAFETY: `xk` is 32 readable bytes; loadu needs no alignment.
            let xk = unsafe { _mm256_loadu_si256(xk.as_ptr().cast()) };
            for (s, q) in i16s.iter_mut().zip(&u.q) {
                let wk = _mm256_set1_epi32(q[b][k] as i32);
                *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(wk, xk));
            }
        }
        // SAFETY: `p.dx[b]` and `p.c[b]` are 8 readable f32 / i32.
        let (dx, c) = unsafe {
            (
                _mm256_loadu_ps(p.dx[b].as_ptr()),
                _mm256_loadu_si256(p.c[b].as_ptr().cast()),
            )
        };
        for ((a, s), d) in acc.iter_mut().zip(i16s).zip(&u.d) {
            let i32s = _mm256_sub_epi32(_mm256_madd_epi16(s, ones), c);
            let sc = _mm256_mul_ps(_mm256_set1_ps(d[b]), dx);
            *a = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(i32s), *a);
        }
    }
    acc
}

/// [`Batched::tile`] for Q8_0: per group, the sign trick and i32 sums.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_q8<const N: usize>(
    rows: [&[BlockQ8_0]; N],
    p: &Panel,
    nbp: usize,
    u: &mut Tile<N>,
) -> [__m256; N] {
    u.fill(rows, nbp, |w| {
        let v = load_q8(w);
        _mm256_sign_epi8(v, v)
    });
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    for b in 0..nbp {
        // The signed weights, broadcast from the blocks themselves.
        let sw = rows.map(|row| bytemuck::cast::<[i8; 32], [u32; 8]>(row[b].qs));
        let mut i32s = [_mm256_setzero_si256(); N];
        for (k, xk) in p.x[b].iter().enumerate() {
            // SAFETY: `xk` is 32 readable bytes; loadu needs no alignment.
            let xk = unsafe { _mm256_loadu_si256(xk.as_ptr().cast()) };
            for ((s, q), w) in i32s.iter_mut().zip(&u.q).zip(&sw) {
                let aw = _mm256_set1_epi32(q[b][k] as i32);
                let sx = _mm256_sign_epi8(xk, _mm256_set1_epi32(w[k] as i32));
                let p16 = _mm256_maddubs_epi16(aw, sx);
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p16, ones));
            }
        }
        // SAFETY: `p.dx[b]` is 8 readable f32.
        let dx = unsafe { _mm256_loadu_ps(p.dx[b].as_ptr()) };
        for ((a, s), d) in acc.iter_mut().zip(i32s).zip(&u.d) {
            let sc = _mm256_mul_ps(_mm256_set1_ps(d[b]), dx);
            *a = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(s), *a);
        }
    }
    acc
}

/// [`Batched::tile`] with VNNI (Q8_0; see [`Batched::VNNI_TILE`]): per
/// group `k` and row, one `vpdpbusd` of the broadcast unsigned weights `w + bias`
/// with the 8 tokens' bytes into i32, which start at `-bias sum x`
/// (`c`): the exact `sum w x` per token, whatever the bytes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn tile_vnni<W: Batched, const N: usize>(
    rows: [&[W]; N],
    p: &Panel,
    nbp: usize,
    u: &mut Tile<N>,
) -> [__m256; N] {
    // SAFETY: this fn's target features include AVX2, FMA and F16C.
    u.fill(rows, nbp, |w| unsafe { W::unpack_vnni(w) });
    let mut acc = [_mm256_setzero_ps(); N];
    for b in 0..nbp {
        // SAFETY: `p.dx[b]` and `p.c[b]` are 8 readable f32 / i32.
        let (dx, c) = unsafe {
            (
                _mm256_loadu_ps(p.dx[b].as_ptr()),
                _mm256_loadu_si256(p.c[b].as_ptr().cast()),
            )
        };
        let mut i32s = [_mm256_sub_epi32(_mm256_setzero_si256(), c); N];
        for (k, xk) in p.x[b].iter().enumerate() {
            // SAFETY: `xk` is 32 readable bytes; loadu needs no alignment.
            let xk = unsafe { _mm256_loadu_si256(xk.as_ptr().cast()) };
            for (s, q) in i32s.iter_mut().zip(&u.q) {
                let wk = _mm256_set1_epi32(q[b][k] as i32);
                *s = _mm256_dpbusd_epi32(*s, wk, xk);
            }
        }
        for ((a, s), d) in acc.iter_mut().zip(i32s).zip(&u.d) {
            let sc = _mm256_mul_ps(_mm256_set1_ps(d[b]), dx);
            *a = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(s), *a);
        }
    }
    acc
}

/// [`Batched::tile`], or [`tile_vnni`] with `VNNI` where the type takes it.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and with `VNNI` the features of
/// [`Vnni`].
#[inline(always)]
unsafe fn tile<W: Batched, const N: usize, const VNNI: bool>(
    rows: [&[W]; N],
    p: &Panel,
    nbp: usize,
    u: &mut Tile<N>,
) -> [__m256; N] {
    // SAFETY: CPU features per this fn's contract.
    unsafe {
        if VNNI && W::VNNI_TILE {
            tile_vnni(rows, p, nbp, u)
        } else {
            W::tile(rows, p, nbp, u)
        }
    }
}

/// Writes (`first`) or adds the `n` token lanes of `acc[r]` to
/// `y[(i0 + j) * rows + r0 + r]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn put<const N: usize>(
    acc: [__m256; N],
    y: &mut [f32],
    rows: usize,
    (i0, n): (usize, usize),
    r0: usize,
    first: bool,
) {
    for (r, a) in acc.iter().enumerate() {
        let mut v = [0.0f32; TOK];
        // SAFETY: `v` is 8 writable f32.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *a) };
        for (j, v) in v.iter().take(n).enumerate() {
            let o = &mut y[(i0 + j) * rows + r0 + r];
            *o = if first { *v } else { *o + v };
        }
    }
}

/// The loop of the module docs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn gemm_blocks<W: Batched, const VNNI: bool>(w: &[W], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    let (nb, rows) = crate::quant::gemm_shape(w.len(), xq.len(), t, y.len());
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let mut p = Panel {
        x: [[[0; TOK]; 8]; PB],
        dx: [[0.0; TOK]; PB],
        c: [[0; TOK]; PB],
    };
    let (mut u, mut u1) = (Tile::<R>::new(), Tile::<1>::new());
    for i0 in (0..t).step_by(TOK) {
        let n = TOK.min(t - i0);
        if n < W::MIN_GROUP {
            for i in i0..i0 + n {
                let y = &mut y[i * rows..(i + 1) * rows];
                let x = &xq[i * nb..(i + 1) * nb];
                // SAFETY: this fn's target features are the ones `gemv`
                // needs; with `VNNI` the caller checked the CPU for VNNI.
                unsafe {
                    if VNNI {
                        W::gemv_vnni(w, x, y)
                    } else {
                        W::gemv(w, x, y)
                    }
                };
            }
            continue;
        }
        for p0 in (0..nb).step_by(PB) {
            let nbp = PB.min(nb - p0);
            let offset = match (VNNI && W::VNNI_TILE, W::SUMS) {
                (true, _) => Some(i32::from(W::VNNI_BIAS)),
                (false, true) => Some(8),
                (false, false) => None,
            };
            p.prepare(xq, nb, (i0, n), (p0, nbp), offset);
            let row = |r: usize| &w[r * nb + p0..r * nb + p0 + nbp];
            let mut r0 = 0;
            while r0 + R <= rows {
                let rows4 = core::array::from_fn(|r| row(r0 + r));
                // SAFETY: as above.
                let acc = unsafe { tile::<W, R, VNNI>(rows4, &p, nbp, &mut u) };
                put(acc, y, rows, (i0, n), r0, p0 == 0);
                r0 += R;
            }
            for r in r0..rows {
                // SAFETY: as above.
                let acc = unsafe { tile::<W, 1, VNNI>([row(r)], &p, nbp, &mut u1) };
                put(acc, y, rows, (i0, n), r, p0 == 0);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_q8_0_k(w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    gemm_blocks::<_, false>(w, xq, t, y)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_q4_0_k(w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    gemm_blocks::<_, false>(w, xq, t, y)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_q8_0_vnni(w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    gemm_blocks::<_, true>(w, xq, t, y)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_q4_0_vnni(w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
    gemm_blocks::<_, true>(w, xq, t, y)
}
