//! Q4_K / Q6_K GEMV with Q8_K activations on AVX2 (`vpmaddubsw` +
//! `vpmaddwd`, the sub-block scales applied as 16-bit integers as
//! llama.cpp's AVX2 path does). The AVX-512 backend runs it on a CPU
//! without VNNI (`kquant512.rs`); the row loop and the helpers that meet
//! the integer sums with their f32 scales are shared with that file.
//!
//! ```text
//! for r in rows:                                   (one row after the other: one stream)
//!     sum = 0.0                                    (f32, as the scalar twin)
//!     for b in super-blocks of the row:
//!         prefetch the super-block PREFETCH_BYTES ahead
//!         Q4_K, per 64 weights c (4 steps):         32 bytes of nibbles -> lo / hi (vpand, vpsrlw)
//!             acc += madd(sc[2c],   maddubs(lo, x[64c..+32]))      (8 x i32)
//!                  + madd(sc[2c+1], maddubs(hi, x[64c+32..+32]))
//!             mins: madd(m[0..8], bsums pairwise (vphaddw))         (4 x i32, once)
//!         Q6_K, per 128 weights h (2 steps):       ql, ql+32, qh -> 4 x 32 quants in 0..=63
//!             acc += madd(sc[e/16] (2 per ymm), maddubs(q_k, x[128h+32k..+32]))   (k < 4;
//!                    the 16 scales widened to i16 once, then one vpshufb per 32 weights)
//!             acc -= 32 madd(bsums, sc)                             (the -32 offset, once)
//!         isum, msum = hsum(acc), hsum(mins)       (exact i32: bounds in `kquant`)
//!         sum += (d_w d_x) f32(isum) [- (dmin_w d_x) f32(msum)]   (scalar f32, the twin's ops)
//!     y[r] = sum
//! ```
//!
//! Rows are whole super-blocks, so there is no column tail. Products never
//! saturate: `maddubs` pairs are at most `2 * 63 * 128 = 16128` (Q6_K) and
//! `2 * 15 * 128` (Q4_K), any activation byte included; `madd` with a scale
//! of at most 128 stays far inside i32. Each super-block's integers are
//! reduced to one `isum` (and `msum`) and meet their f32 scales in the same
//! operations, in the same order, as [`crate::kquant`]'s scalar twin, so
//! the result equals it bit for bit (llama.cpp instead scales the 8 lanes
//! apart and adds them in f32).
//!
//! Q4_K's 12 bytes of 6-bit scales and mins are unpacked as
//! [`BlockQ4_K::scales_mins`] does (u32 masks and shifts), in one xmm,
//! then widened with one `vpmovzxbw`.
//!
//! Thread CPU time per 256 weights in L2 (228 x 2048), 2-core AMD EPYC
//! (Zen 3) VM shared with other work (load ~7), best of 9 x 2000 GEMVs,
//! same run: Q4_0 (`quant.rs`, 8 blocks) 9.7 ns, Q4_K 10.0, Q6_K 12.8;
//! the scalar unpacking of the Q4_K scales cost 12.0, widening the Q6_K
//! scales per 32 weights (`vpshufb` xmm + `vpmovsxbw`) 14.2. Run to run
//! the numbers move by 10-30% on this machine.

use core::arch::x86_64::*;

use super::avx2::Avx2;
use crate::kquant::{BlockQ4_K, BlockQ6_K, BlockQ8_K};

/// Weight bytes prefetched ahead of the row loop: the distance measured
/// for Q8_0 / Q4_0 (`quant.rs`, `PREFETCH_BYTES`), 28 Q4_K or 19 Q6_K
/// super-blocks.
const PREFETCH_BYTES: usize = 4096;

impl Avx2 {
    /// `y = W x`, Q4_K; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Avx2::new` passed,
        // so the CPU has the features `gemv_q4_k_k` is compiled for.
        unsafe { gemv_q4_k_k(w, xq, y) }
    }

    /// `y = W x`, Q6_K; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k`.
        unsafe { gemv_q6_k_k(w, xq, y) }
    }
}

/// The 32 bytes from element `at` of `s` on.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load32<T>(s: &[T], at: usize) -> __m256i {
    let s = &s[at..];
    assert!(size_of_val(s) >= 32);
    // SAFETY: at least 32 readable bytes at `s` (checked above, and the
    // check is removed for the constant offsets of the callers); loadu
    // needs no alignment.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Pattern for `vpshufb` that repeats the 16-bit lane `i` of each 128-bit
/// half across it.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn word_pattern(i: usize) -> __m256i {
    _mm256_set1_epi16((((2 * i + 1) << 8) | (2 * i)) as i16)
}

/// Lanes 0 and 1 of `[isum, msum, ..]` (exact i32) met with their scales
/// `[d_w, dmin_w]` (f16 bits) and `d_x`, as the scalar twin does:
/// `(d_w d_x) f32(isum) - (dmin_w d_x) f32(msum)`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn scale_sums(sums: __m128i, dw_bits: i32, dx: f32) -> f32 {
    let d = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(dw_bits)), _mm_set1_ps(dx));
    let p = _mm_mul_ps(d, _mm_cvtepi32_ps(sums));
    _mm_cvtss_f32(_mm_sub_ss(p, _mm_movehdup_ps(p)))
}

/// `[sum a, sum b, sum a, sum b]` of 8 and 4 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum2(a: __m256i, b: __m128i) -> __m128i {
    let a = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
    let h = _mm_hadd_epi32(a, b);
    _mm_hadd_epi32(h, h)
}

/// [`BlockQ4_K::scales_mins`] in a register: 16 bytes from `scales` on
/// (the 12 bytes and 4 of `qs`, unused) as u32 lanes `[a, b, c, _]`, then
/// `[a & 63s, c & 15s | (a >> 6 & 3s) << 4, b & 63s, c >> 4 & 15s | (b >> 6 & 3s) << 4]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn scales_mins(w: &BlockQ4_K) -> __m128i {
    let bytes = bytemuck::bytes_of(w);
    // SAFETY: bytes 4..20 of the 144-byte block are readable; loadu needs
    // no alignment.
    let v = unsafe { _mm_loadu_si128(bytes[4..20].as_ptr().cast()) };
    let acbc = _mm_shuffle_epi32::<0b10_01_10_00>(v);
    let aabb = _mm_shuffle_epi32::<0b01_01_00_00>(v);
    let (low6, low4, top2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let lo = _mm_and_si128(acbc, _mm_set_epi32(0, low6, 0, low6));
    let nib = _mm_and_si128(
        _mm_srlv_epi32(acbc, _mm_set_epi32(4, 0, 0, 0)),
        _mm_set_epi32(low4, 0, low4, 0),
    );
    let top = _mm_slli_epi32::<4>(_mm_and_si128(
        _mm_srli_epi32::<6>(aabb),
        _mm_set_epi32(top2, 0, top2, 0),
    ));
    _mm_or_si128(lo, _mm_or_si128(nib, top))
}

/// The sum of 8 i32 lanes, in lane 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum1(a: __m256i) -> __m128i {
    let a = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
    let a = _mm_add_epi32(a, _mm_shuffle_epi32::<0b01_00_11_10>(a));
    _mm_add_epi32(a, _mm_shuffle_epi32::<0b10_11_00_01>(a))
}

/// One Q4_K super-block times one Q8_K super-block (the module docs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_q4_k(w: &BlockQ4_K, x: &BlockQ8_K) -> f32 {
    let sm = _mm256_cvtepu8_epi16(scales_mins(w));
    // 8 mins x (bsums[2s] + bsums[2s + 1]): 4 x i32.
    let bs = load32(&x.bsums, 0);
    let pairs = _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    );
    let mins = _mm_madd_epi16(_mm256_extracti128_si256::<1>(sm), pairs);
    // The 8 scales as i16 in both halves.
    let scales = _mm256_permute2x128_si256::<0x00>(sm, sm);
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_si256();
    for c in 0..4 {
        let q = load32(&w.qs, 32 * c);
        let lo = _mm256_and_si256(q, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
        let sc_lo = _mm256_shuffle_epi8(scales, word_pattern(2 * c));
        let sc_hi = _mm256_shuffle_epi8(scales, word_pattern(2 * c + 1));
        let p_lo = _mm256_madd_epi16(sc_lo, _mm256_maddubs_epi16(lo, load32(&x.qs, 64 * c)));
        let p_hi = _mm256_madd_epi16(sc_hi, _mm256_maddubs_epi16(hi, load32(&x.qs, 64 * c + 32)));
        acc = _mm256_add_epi32(acc, _mm256_add_epi32(p_lo, p_hi));
    }
    let dw = i32::from(w.d.to_bits()) | (i32::from(w.dmin.to_bits()) << 16);
    scale_sums(hsum2(acc, mins), dw, x.d)
}

/// One Q6_K super-block times one Q8_K super-block (the module docs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_q6_k(w: &BlockQ6_K, x: &BlockQ8_K) -> f32 {
    // SAFETY: `w.scales` is 16 readable bytes; loadu needs no alignment.
    let scales = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) });
    // 32 sum_j sc[j] bsums[j]: the `- 32` of every quant, 8 x i32.
    let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(load32(&x.bsums, 0), scales));
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_si256();
    for h in 0..2 {
        // This half's 8 scales (i16) in both 128-bit halves.
        let sh = if h == 0 {
            _mm256_permute2x128_si256::<0x00>(scales, scales)
        } else {
            _mm256_permute2x128_si256::<0x11>(scales, scales)
        };
        let (l0, l1) = (load32(&w.ql, 64 * h), load32(&w.ql, 64 * h + 32));
        let qh = load32(&w.qh, 32 * h);
        // Quant k of 4: low nibble of ql (k = 0, 1) or high (k = 2, 3),
        // bits 2k..2k+2 of qh moved to bits 4..6 of the same byte.
        let hb = |k: u32| {
            let bits = _mm256_and_si256(qh, _mm256_set1_epi8((3u8 << (2 * k)) as i8));
            match k {
                0 => _mm256_slli_epi16::<4>(bits),
                1 => _mm256_slli_epi16::<2>(bits),
                2 => bits,
                _ => _mm256_srli_epi16::<2>(bits),
            }
        };
        let q = [
            _mm256_or_si256(_mm256_and_si256(l0, m4), hb(0)),
            _mm256_or_si256(_mm256_and_si256(l1, m4), hb(1)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), hb(2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), hb(3)),
        ];
        for (k, &q) in q.iter().enumerate() {
            // Scales 8h + 2k (low 16 weights, low 128 bits) and
            // 8h + 2k + 1 (high 16).
            let pat =
                _mm256_permute2x128_si256::<0x30>(word_pattern(2 * k), word_pattern(2 * k + 1));
            let sc = _mm256_shuffle_epi8(sh, pat);
            let p = _mm256_maddubs_epi16(q, load32(&x.qs, 128 * h + 32 * k));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(sc, p));
        }
    }
    let acc = _mm256_sub_epi32(acc, offset);
    let isum = hsum1(acc);
    // (d_w d_x) f32(isum), as the scalar twin.
    let d = _mm_mul_ss(
        _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(w.d.to_bits()))),
        _mm_set_ss(x.d),
    );
    _mm_cvtss_f32(_mm_mul_ss(d, _mm_cvtepi32_ps(isum)))
}

/// The loop of the module docs, given the super-block pair's f32 term.
/// No target feature of its own (`prefetcht0` is SSE): always inlined
/// into the caller, so `dot` is compiled with the caller's features
/// (the AVX-512 GEMV of `kquant512.rs` runs it too).
#[inline(always)]
pub(super) fn gemv_rows<W>(
    w: &[W],
    xq: &[BlockQ8_K],
    y: &mut [f32],
    dot: impl Fn(&W, &BlockQ8_K) -> f32,
) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_k: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(nb)) {
        let ahead = row.as_ptr().cast::<i8>().wrapping_add(PREFETCH_BYTES);
        let mut sum = 0.0f32;
        for (b, (wb, xb)) in row.iter().zip(xq).enumerate() {
            // A prefetch is a hint: an address past the weights
            // (wrapping_add, never dereferenced) is dropped, not a fault.
            let at = ahead.wrapping_add(b * size_of::<W>());
            for line in (0..size_of::<W>()).step_by(64) {
                // SAFETY: SSE is part of every x86-64 CPU (the target's
                // baseline); the address is never dereferenced.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line)) };
            }
            sum += dot(wb, xb);
        }
        *yr = sum;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemv_q4_k_k(w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv_rows(w, xq, y, |w, x| dot_q4_k(w, x))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q6_k_k(w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv_rows(w, xq, y, |w, x| dot_q6_k(w, x))
}
