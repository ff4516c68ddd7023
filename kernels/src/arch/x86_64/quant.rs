//! Q8_0 / Q4_0 GEMV with Q8_0 activations on AVX2 (`vpmaddubsw` +
//! `vpmaddwd`, as ggml's `mul_sum_i8_pairs_float`), and the AVX-512
//! backend's route to it.
//!
//! One block pair per step, one row at a time:
//!
//! ```text
//! for r in rows:
//!     acc = 0                                     (1 ymm: 8 x f32)
//!     for b in blocks:
//!         w = 32 x i8 (Q8_0 qs; Q4_0: nibbles unpacked to [lo 16 | hi 16] - 8)
//!         x = 32 x i8 (activation qs, in -127..=127)
//!         aw = |w| as u8; sx = x * sign(w)         (vpsignb: product sign moved to x)
//!         p16 = aw[2i] sx[2i] + aw[2i+1] sx[2i+1]   (16 x i16, vpmaddubsw; <= 2*128*127, no saturation)
//!         p32 = p16[2i] + p16[2i+1]                 (8 x i32, vpmaddwd by 1; lanes sum to isum)
//!         acc += splat(d_w * d_x) * f32(p32)        (lanes < 2^24: exact conversion)
//!     y[r] = hsum(acc)
//! ```
//! There is no column tail: rows are whole blocks. A row of Q8_0 `x` is
//! 34 bytes per 32 columns, so `x` stays in L1 for every row length the
//! engine has, and rows are read one after the other as one stream (the
//! one-row reasoning of `bank::gemv`). Not yet measured against 4-row
//! blocks or 2 accumulators.
//!
//! `vpsignb` takes the sign from the weight byte: `|-128|` is 128 as u8, so
//! any weight byte is exact; the activation byte is negated, which is why
//! activations must not hold -128 (see [`crate::quant`]).

use core::arch::x86_64::*;

use half::f16;

use super::avx2::Avx2;
use super::avx512::Avx512;
use crate::quant::{self, BlockQ4_0, BlockQ8_0};

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

/// AVX-512 has no quantized kernel of its own yet (VNNI `vpdpbusd` is the
/// next step): it runs the AVX2 one, which every AVX-512 CPU shipped so far
/// can run, and the scalar one on a CPU without AVX2.
impl Avx512 {
    pub(crate) fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        match Avx2::new() {
            Some(a) => a.gemv_q8_0(w, xq, y),
            None => quant::gemv_q8_0(w, xq, y),
        }
    }

    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        match Avx2::new() {
            Some(a) => a.gemv_q4_0(w, xq, y),
            None => quant::gemv_q4_0(w, xq, y),
        }
    }
}

/// The product of two f16 scales, widened with F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale(a: f16, b: f16) -> f32 {
    let h = _mm_cvtsi32_si128(i32::from(a.to_bits()) | (i32::from(b.to_bits()) << 16));
    let f = _mm_cvtph_ps(h);
    _mm_cvtss_f32(_mm_mul_ss(f, _mm_movehdup_ps(f)))
}

/// 8 x i32 partial sums of `w . x` (signed bytes), adding up to the block's
/// `isum` (see the module docs).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn isum8(w: __m256i, x: __m256i) -> __m256i {
    let aw = _mm256_sign_epi8(w, w);
    let sx = _mm256_sign_epi8(x, w);
    let p16 = _mm256_maddubs_epi16(aw, sx);
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// The 32 activation bytes of a block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_q8(b: &BlockQ8_0) -> __m256i {
    // SAFETY: `b.qs` is 32 readable bytes; loadu needs no alignment; avx per
    // this fn's target features.
    unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) }
}

/// The 32 weights of a Q4_0 block as signed bytes `q - 8`, in element order
/// (low nibbles are elements 0..16, high nibbles 16..32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_q4(b: &BlockQ4_0) -> __m256i {
    // SAFETY: `b.qs` is 16 readable bytes; loadu needs no alignment.
    let t = unsafe { _mm_loadu_si128(b.qs.as_ptr().cast()) };
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(t, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(t), m);
    _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The loop of the module docs, given how to load a weight block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn gemv_blocks<W>(w: &[W], xq: &[BlockQ8_0], y: &mut [f32], load_w: impl Fn(&W) -> (f16, __m256i)) {
    let nb = xq.len();
    assert_eq!(w.len(), y.len() * nb, "gemv_q: weight shape");
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(nb)) {
        let mut acc = _mm256_setzero_ps();
        for (wb, xb) in row.iter().zip(xq) {
            let (dw, qw) = load_w(wb);
            let p = _mm256_cvtepi32_ps(isum8(qw, load_q8(xb)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(scale(dw, xb.d)), p, acc);
        }
        *yr = hsum(acc);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q8_0_k(w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, |b| (b.d, load_q8(b)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q4_0_k(w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
    gemv_blocks(w, xq, y, |b| (b.d, load_q4(b)))
}
