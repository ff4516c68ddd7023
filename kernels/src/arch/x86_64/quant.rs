//! Q8_0 / Q4_0 GEMV with Q8_0 activations on AVX2 (`vpmaddubsw` +
//! `vpmaddwd`), and Q4_0 on AVX-512 VNNI (`vpdpbusd`, the same loop with
//! one instruction per block pair, see [`gemv_q4_0_vnni`]). The batched
//! (prefill) kernel is in [`super::gemm`].
//!
//! ```text
//! per panel of up to PANEL activation blocks (one panel up to 8192 columns):
//!     dx[b] = f32(d_x[b]); Q4_0 also m8[b] = maddubs(8, x[b])   (stack, once per panel)
//!     for r in rows:                            (one row after the other: one stream)
//!         acc = 0                               (1 ymm: 8 x f32, lane k = block k of a group)
//!         for g in groups of 8 blocks (the last one zero-padded):
//!             prefetch the group's lines PREFETCH_BYTES ahead
//!             p[k] = isum8(w[g+k], x[g+k])      (k < 8: 8 x i32 each, adding up to the block's isum)
//!             isum = reduce8(p)                 (lane k = block k's exact isum: 21 unpacks/adds)
//!             s = f32(d_w[g..g+8]) * dx[g..g+8] (one vcvtph2ps for the 8 weight scales)
//!             acc += s * f32(isum)              (|isum| < 2^24: exact conversion)
//!         y[r] = hsum(acc)                      (+= from the second panel on)
//!
//! isum8, Q8_0: aw = |w| as u8; sx = x * sign(w)     (vpsignb: the product's sign moved to x)
//!              madd(maddubs(aw, sx), 1)              (16 x i16 <= 2*128*127, no saturation)
//! isum8, Q4_0: q = nibbles as u8 in 0..=15, [lo 16 | hi 16] (vbroadcasti128, vpsrlvq, vpand)
//!              madd(maddubs(q, x) - m8, 1)           (pairs (q - 8) x, |.| <= 2048: exact)
//! ```
//! Rows are whole blocks, so there is no column tail. Q8_0 `x` is 34
//! bytes per 32 columns and stays in L1 for every row length the engine
//! has; rows are read one after the other as one stream (the one-row
//! reasoning of `bank::gemv`). Every block meets its scale as one exact
//! integer, as in the scalar twin: scaling the 8 partial lanes instead
//! rounds `d_w d_x lane` on lanes that can be far larger than the block's
//! sum when they cancel (a test input showed 4e-5 relative error).
//!
//! Against the kernel this replaced (one block per step, its scale made
//! with `vmovd` + `vcvtph2ps` + `vmulss` + broadcast, one FMA chain, Q4_0
//! as `q - 8` with two `vpsignb`), on a 2-core AMD EPYC (Zen 3) VM shared
//! with other work, thread CPU time, best of 5: in L1/L2 (228 x 2048)
//! Q8_0 0.84 -> 0.77 ns per block, Q4_0 1.56 -> 0.71; from DRAM
//! (5632 x 2048 rotating through 256 MiB, 1 thread, medians of 8, read
//! loop 18.5 / 19.5 GB/s on the same bytes) Q8_0 10.7 -> 14.8 GB/s,
//! Q4_0 7.2 -> 13.0 GB/s. Most of the DRAM gain is the prefetch (see
//! [`PREFETCH_BYTES`]).
//!
//! `vpsignb` takes the sign from the weight byte: `|-128|` is 128 as u8, so
//! any weight byte is exact; the activation byte is negated, which is why
//! Q8_0 activations must not hold -128 (see [`crate::quant`]). The Q4_0
//! path has no sign trick and takes any activation byte.

use core::arch::x86_64::*;

use half::f16;

use super::avx2::Avx2;
use super::avx512::Avx512;
use super::vnni::Vnni;
use crate::quant::{self, BlockQ4_0, BlockQ8_0};

/// Activation blocks whose scales (and Q4_0's `m8`) are prepared at once
/// on the stack (9 KiB; with `x` 18 KiB, in L1 beside the weight stream):
/// rows up to 8192 columns are one panel.
const PANEL: usize = 256;

/// Weight bytes prefetched ahead of the row loop. The hardware prefetcher
/// alone leaves the GEMV at 55-65% of the read loop from DRAM (it reads
/// 34 or 18 bytes per ~3 cycles, the read loop 256 per iteration). With
/// the kernel's first version (partial lanes scaled per block; the same
/// speed), 1 thread, thread CPU time, 5632 x 2048 rotating through 256
/// MiB, Zen 3 VM, medians of 8, GB/s Q8_0 / Q4_0 (read loop 14.6 / 17.2):
/// none 10.7 / 9.9, 2 KiB 12.5 / 11.5, 3 KiB 12.2 / 12.4, 4 KiB 12.3 /
/// 13.0, 8 KiB 12.1 / 13.0.
const PREFETCH_BYTES: usize = 4096;

impl Avx2 {
    /// `y = W x`, Q8_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Avx2::new` passed,
        // so the CPU has the features `gemv_q8_0_k` is compiled for.
        unsafe { gemv_q8_0_k(w, xq, y) }
    }

    /// `y = W x`, Q4_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: as in `gemv_q8_0`.
        unsafe { gemv_q4_0_k(w, xq, y) }
    }
}

/// AVX-512 runs the VNNI kernels where the CPU has VNNI, BW and VL, the
/// AVX2 ones without (every AVX-512 CPU shipped so far has AVX2), and the
/// scalar ones on a CPU without AVX2.
impl Avx512 {
    /// The AVX2 kernel even with VNNI: a `vpdpbusd` version (weights
    /// biased to unsigned, `-128 sum x` as the starting sum) read its
    /// weights from DRAM at 0.84-0.87 of the read loop against AVX2's
    /// 0.91-1.02 on Zen 4 (`cargo bench --bench gemv -- q8_0`, 1 thread,
    /// 2048x5632 and 32000x2048; slower in 5 of 6 rows in each of two
    /// runs), and equal in L2.
    pub(crate) fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        match Avx2::new() {
            Some(a) => a.gemv_q8_0(w, xq, y),
            None => quant::gemv_q8_0(w, xq, y),
        }
    }

    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemv_q4_0(w, xq, y),
            (None, Some(a)) => a.gemv_q4_0(w, xq, y),
            (None, None) => quant::gemv_q4_0(w, xq, y),
        }
    }

    pub(crate) fn gemm_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemm_q8_0(w, xq, t, y),
            (None, Some(a)) => a.gemm_q8_0(w, xq, t, y),
            (None, None) => quant::gemm_q8_0(w, xq, t, y),
        }
    }

    pub(crate) fn gemm_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemm_q4_0(w, xq, t, y),
            (None, Some(a)) => a.gemm_q4_0(w, xq, t, y),
            (None, None) => quant::gemm_q4_0(w, xq, t, y),
        }
    }
}

impl Vnni {
    /// `y = W x`, Q4_0; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Vnni::new`
        // passed, so the CPU has the features `gemv_q4_0_vnni` is
        // compiled for.
        unsafe { gemv_q4_0_vnni(w, xq, y) }
    }
}

/// A weight block's scale, for either block type.
pub(super) trait Scaled: Copy + Default {
    fn d(&self) -> f16;
}

impl Scaled for BlockQ8_0 {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl Scaled for BlockQ4_0 {
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

/// The scales of 8 blocks widened at once.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn scales8<W: Scaled>(b: &[W; 8]) -> __m256 {
    f16x8(|i| b[i].d().to_bits())
}

/// 8 f16 given by their bits, widened with one `vcvtph2ps` (two u64 of
/// bits, `vmovq` + `vpinsrq`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f16x8(bits: impl Fn(usize) -> u16) -> __m256 {
    let b = |i: usize| u64::from(bits(i));
    let lo = b(0) | b(1) << 16 | b(2) << 32 | b(3) << 48;
    let hi = b(4) | b(5) << 16 | b(6) << 32 | b(7) << 48;
    _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
}

/// The 32 bytes of a Q8_0 block (activation or weight).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load_q8(b: &BlockQ8_0) -> __m256i {
    // SAFETY: `b.qs` is 32 readable bytes; loadu needs no alignment; avx per
    // this fn's target features.
    unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) }
}

/// The 32 weights of a Q4_0 block as unsigned nibbles `q` in 0..=15, in
/// element order (low nibbles are elements 0..16, high nibbles 16..32):
/// the 16 bytes in both halves, the high half shifted right by 4, masked.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load_q4(b: &BlockQ4_0) -> __m256i {
    // SAFETY: `b.qs` is 16 readable bytes; loadu needs no alignment.
    let t = unsafe { _mm_loadu_si128(b.qs.as_ptr().cast()) };
    let t = _mm256_broadcastsi128_si256(t);
    // A 64-bit shift moves bits across bytes; the mask keeps each byte's own.
    let hi = _mm256_srlv_epi64(t, _mm256_set_epi64x(4, 4, 0, 0));
    _mm256_and_si256(hi, _mm256_set1_epi8(0x0F))
}

/// Q8_0 block pair: 8 x i32 adding up to `sum_j w_j x_j`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn isum_q8(w: &BlockQ8_0, x: __m256i) -> __m256i {
    let w = load_q8(w);
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// Q4_0 block pair: 8 x i32 adding up to `sum_j (q_j - 8) x_j`, given
/// `m8 = maddubs(8, x)`. Subtracting `8 x` pair by pair keeps every lane
/// the partial sum of `(q - 8) x` (as small as Q8_0's): a correction in
/// one lane would round `f32(lane) * scale` on a larger value.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn isum_q4(w: &BlockQ4_0, x: __m256i, m8: __m256i) -> __m256i {
    let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(load_q4(w), x), m8);
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// `maddubs(8, x)`: 16 x i16 pairs `8 x_2i + 8 x_2i+1` (Q4_0's offset).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn m8(x: &BlockQ8_0) -> __m256i {
    _mm256_maddubs_epi16(_mm256_set1_epi8(8), load_q8(x))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// A panel's activation scales and (Q4_0) offsets.
struct Panel {
    dx: [f32; PANEL],
    m8: [__m256i; PANEL],
}

impl Panel {
    /// Fills `dx` (and `m8` with `offset`) for the blocks `xp` (at most
    /// PANEL), zero from there to the end of the last group of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn prepare(&mut self, xp: &[BlockQ8_0], offset: Option<impl Fn(&BlockQ8_0) -> __m256i>) {
        let (xg, xt) = xp.as_chunks::<8>();
        let (dg, _) = self.dx.as_chunks_mut::<8>();
        let mut last = [BlockQ8_0::default(); 8];
        last[..xt.len()].copy_from_slice(xt);
        let tail = (!xt.is_empty()).then_some(&last);
        for (x8, d8) in xg.iter().chain(tail).zip(dg.iter_mut()) {
            // SAFETY: `d8` is 8 writable f32; storeu needs no alignment.
            unsafe { _mm256_storeu_ps(d8.as_mut_ptr(), scales8(x8)) };
        }
        if let Some(offset) = offset {
            let end = xp.len().next_multiple_of(8);
            for (m, x) in self.m8[..end]
                .iter_mut()
                .zip(xp.iter().chain(&last[xt.len()..]))
            {
                *m = offset(x);
            }
        }
    }
}

/// The 8 block sums of `p` (lane `k` = the sum of `p[k]`'s lanes), with
/// 1-uop unpacks and adds (21 per 8 blocks; `vphaddd` is several uops per
/// instruction on Zen): pairs of blocks, then quads, then the 128-bit
/// halves.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn reduce8(p: [__m256i; 8]) -> __m256i {
    // [a0+a2, b0+b2, a1+a3, b1+b3] per 128-bit half.
    let pair = |a, b| _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    // [a, b, c, d] per half, each that block's half sum.
    let quad =
        |ab, cd| _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    let lo = quad(pair(p[0], p[1]), pair(p[2], p[3]));
    let hi = quad(pair(p[4], p[5]), pair(p[6], p[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(lo, hi),
        _mm256_permute2x128_si256::<0x31>(lo, hi),
    )
}

/// One row of the panel: `sum_b d_w[b] dx[b] isum_b` (the module docs'
/// inner loop), 8 blocks per step, the last group zero-padded.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn row_dot<W: Scaled>(
    row: &[W],
    xp: &[BlockQ8_0],
    p: &Panel,
    isum: impl Fn(&W, __m256i, __m256i) -> __m256i + Copy,
) -> f32 {
    let (wg, wt) = row.as_chunks::<8>();
    let (xg, xt) = xp.as_chunks::<8>();
    let (dg, _) = p.dx.as_chunks::<8>();
    let (mg, _) = p.m8.as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    let ahead = row.as_ptr().cast::<i8>().wrapping_add(PREFETCH_BYTES);
    for (g, (((w8, x8), d8), m8)) in wg.iter().zip(xg).zip(dg).zip(mg).enumerate() {
        // One prefetch per line of the group (272 bytes of Q8_0, 144 of
        // Q4_0). A prefetch is a hint: an address past the weights
        // (wrapping_add, never dereferenced) is dropped, not a fault.
        let at = ahead.wrapping_add(g * size_of::<[W; 8]>());
        for line in (0..size_of::<[W; 8]>()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line));
        }
        acc = group(w8, x8, d8, m8, acc, isum);
    }
    if !wt.is_empty() {
        let g = wg.len();
        let (mut w8, mut x8) = ([W::default(); 8], [BlockQ8_0::default(); 8]);
        w8[..wt.len()].copy_from_slice(wt);
        x8[..xt.len()].copy_from_slice(xt);
        // `prepare` zero-padded dx and m8 to the end of this group, which
        // exists because the panel holds a partial group (g < PANEL / 8).
        acc = group(&w8, &x8, &dg[g], &mg[g], acc, isum);
    }
    hsum(acc)
}

/// `acc + s * f32(isum)` for 8 blocks: `s = d_w * dx` (one `vcvtph2ps`),
/// `isum` the blocks' exact integer sums ([`reduce8`]), so the f32 terms
/// are the scalar twin's, added in another order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn group<W: Scaled>(
    w8: &[W; 8],
    x8: &[BlockQ8_0; 8],
    d8: &[f32; 8],
    m8: &[__m256i; 8],
    acc: __m256,
    isum: impl Fn(&W, __m256i, __m256i) -> __m256i,
) -> __m256 {
    let p = core::array::from_fn(|k| isum(&w8[k], load_q8(&x8[k]), m8[k]));
    // SAFETY: `d8` is 8 readable f32; loadu needs no alignment.
    let s = _mm256_mul_ps(scales8(w8), unsafe { _mm256_loadu_ps(d8.as_ptr()) });
    _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(reduce8(p)), acc)
}

/// The loop of the module docs, given the block pair's integer sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn gemv_blocks<W: Scaled>(
    w: &[W],
    xq: &[BlockQ8_0],
    y: &mut [f32],
    offset: Option<impl Fn(&BlockQ8_0) -> __m256i + Copy>,
    isum: impl Fn(&W, __m256i, __m256i) -> __m256i + Copy,
) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_q: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let mut p = Panel {
        dx: [0.0; PANEL],
        m8: [_mm256_setzero_si256(); PANEL],
    };
    for (i, xp) in xq.chunks(PANEL).enumerate() {
        p.prepare(xp, offset);
        let c0 = i * PANEL;
        for (r, yr) in y.iter_mut().enumerate() {
            let row = &w[r * nb + c0..r * nb + c0 + xp.len()];
            let s = row_dot(row, xp, &p, isum);
            *yr = if i == 0 { s } else { *yr + s };
        }
    }
}

/// No offset: Q8_0 on AVX2 (a closure type for `None`).
const NO_OFFSET: Option<fn(&BlockQ8_0) -> __m256i> = None;

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemv_q8_0_k(w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, NO_OFFSET, |w, x, _| isum_q8(w, x))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemv_q4_0_k(w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, Some(|x: &BlockQ8_0| m8(x)), |w, x, c| {
        isum_q4(w, x, c)
    })
}

/// `-k sum x` per 4-byte group of an activation block (8 x i32): the
/// offset of a weight stored as `q + k` unsigned, given to `vpdpbusd` as
/// its starting sum ([`gemv_q4_0_vnni`]).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
pub(super) fn neg_offset(k: u8, x: &BlockQ8_0) -> __m256i {
    let kx = _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        _mm256_set1_epi8(k as i8),
        load_q8(x),
    );
    _mm256_sub_epi32(_mm256_setzero_si256(), kx)
}

/// The Q8_0 weights of a block as unsigned bytes `w + 128` (`vpxor` of the
/// sign bit), for `vpdpbusd` (the batched kernel's VNNI tile).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load_q8_biased(w: &BlockQ8_0) -> __m256i {
    _mm256_xor_si256(load_q8(w), _mm256_set1_epi8(-128))
}

/// Q4_0 with VNNI: `vpdpbusd(-8 sum x, q, x)` with the nibbles `q` in
/// 0..=15 (AVX2: `vpmaddubsw`, `vpsubw`, `vpmaddwd`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn gemv_q4_0_vnni(w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    let offset = |x: &BlockQ8_0| neg_offset(8, x);
    gemv_blocks(w, xq, y, Some(offset), |w, x, c| {
        _mm256_dpbusd_epi32(c, load_q4(w), x)
    })
}
