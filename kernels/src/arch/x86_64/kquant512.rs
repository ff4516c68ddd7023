//! Q6_K GEMV with Q8_K activations on AVX-512 (BW + VNNI): the loop of
//! `kquant.rs` on 512-bit registers, 64 weights per `vpmaddubsw` and the
//! sub-block scales applied by `vpdpwssd` (`vpmaddwd` and the add in
//! one). The AVX-512 backend runs it when the CPU has VNNI ([`Vnni`]),
//! else the AVX2 kernel, else the scalar twin. Q4_K runs the AVX2 kernel
//! on every AVX-512 CPU: its 512-bit version (below) was slower.
//!
//! ```text
//! for r in rows:                                   (one stream, as kquant.rs)
//!     sum = 0.0
//!     for b in super-blocks of the row:
//!         per 128 weights h (2 steps):             ql[64h..+64] is one load: its low nibbles
//!                                                  are quants k = 0 | 1, its high ones k = 2 | 3
//!             s   = qh[32h..+32] in both halves, the high half >> 2 (vpsrlvw)
//!             q01 = (ql & 0x0F) | (s << 4 & 0x30)  (vpternlogd)
//!             q23 = (ql >> 4 & 0x0F) | (s & 0x30)
//!             acc += dpwssd(maddubs(q01, x[128h..+64]),    sc[8h + i/8] per word i)
//!                  + dpwssd(maddubs(q23, x[128h+64..+64]), sc[8h + 4 + i/8])
//!             acc -= 32 madd(bsums, sc)            (the -32 offset, once, as AVX2)
//!         isum = hsum(acc)                         (exact i32, bounds in `kquant`)
//!         sum += (d_w d_x) f32(isum)               (the twin's f32 ops)
//!     y[r] = sum
//! ```
//!
//! No column tail (rows are whole super-blocks); `maddubs` never saturates
//! (pairs at most `2 * 63 * 128`) and `vpdpwssd` does not saturate at all
//! (the `s` form would; it is not used). Each super-block's integers are
//! reduced to `isum` and meets its scales in the twin's f32
//! operations and order (the helpers of `kquant.rs`), so the result equals
//! [`crate::kquant`]'s scalar GEMV bit for bit.
//!
//! Per super-block that is ~28 vector instructions for the weights
//! (AVX2: ~46), beside ~20 of scales, horizontal sums and f32 terms that
//! both share.
//!
//! Measured with `cargo bench --bench gemv -- q4_k q6_k` (weights from
//! DRAM, TinyLlama-1.1B's 5632x2048, 2048x5632, 32000x2048; ratio to the
//! AVX-512 read loop on the same bytes, avx512 and avx2 rows of the same
//! run), 2-vCPU AMD Zen 4 VM shared with other builds (load ~6), two
//! runs, 1 and 2 threads:
//!
//! | | AVX2 (`kquant.rs`) | this file |
//! |---|---|---|
//! | Q6_K | 0.62-0.81 | 0.72-0.88 (ahead in 12 of 12 rows, ~10%) |
//! | Q4_K | 0.47-0.62 | 0.49-0.59 (behind in 10 of 12, by 0.02-0.04) |
//!
//! The Q4_K row is a 512-bit kernel measured in the same runs and then
//! removed (commit history): per 64 weights one `vbroadcasti64x4` of 32
//! bytes of nibbles, the high half shifted by a masked `vpsrlw`, `& 0x0F`,
//! one `vpmaddubsw` with `x[64c..+64]` and one `vpdpwssd` with
//! `[sc[2c] x16 | sc[2c+1] x16]` (`vpermw`): ~24 instructions per
//! super-block against AVX2's ~48, yet no faster. Zen 4 runs a zmm
//! operation as two 256-bit halves, so halving the instructions does not
//! halve the execution slots (unpacking, `maddubs` and the scale product
//! cost the same per weight); both sit at ~17 GB/s per thread.

use core::arch::x86_64::*;

use super::avx2::Avx2;
use super::avx512::Avx512;
use super::kquant::{gemv_rows, hsum1, load32};
use super::vnni::Vnni;
use crate::kquant::{self, BlockQ4_K, BlockQ6_K, BlockQ8_K};

/// The AVX-512 backend's K-quant GEMV: the kernels here when the CPU has
/// VNNI, BW and VL, else AVX2's (every AVX-512 CPU shipped so far has
/// AVX2), else the scalar twin.
impl Avx512 {
    pub(crate) fn gemv_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemv_q4_k(w, xq, y),
            (None, Some(a)) => a.gemv_q4_k(w, xq, y),
            (None, None) => kquant::gemv_q4_k(w, xq, y),
        }
    }

    pub(crate) fn gemv_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemv_q6_k(w, xq, y),
            (None, Some(a)) => a.gemv_q6_k(w, xq, y),
            (None, None) => kquant::gemv_q6_k(w, xq, y),
        }
    }
}

impl Vnni {
    /// `y = W x`, Q4_K: the AVX2 kernel (faster on Zen 4, module docs);
    /// the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Vnni::new`
        // passed, and it checks AVX2, FMA and F16C, the features
        // `gemv_q4_k_k` is compiled for.
        unsafe { super::kquant::gemv_q4_k_k(w, xq, y) }
    }

    /// `y = W x`, Q6_K; the caller checked `w.len() == y.len() * xq.len()`.
    pub(crate) fn gemv_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Vnni::new`
        // passed, so the CPU has the features `gemv_q6_k_k` is compiled for.
        unsafe { gemv_q6_k_k(w, xq, y) }
    }
}

/// The 64 bytes from element `at` of `s` on.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn load64<T>(s: &[T], at: usize) -> __m512i {
    let s = &s[at..];
    assert!(size_of_val(s) >= 64);
    // SAFETY: at least 64 readable bytes at `s` (checked above, and the
    // check is removed for the constant offsets of the callers); loadu
    // needs no alignment.
    unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
}

/// Index for `vpermw`: word `i` of 32 takes word `lo + i / step` of the
/// table (`step` = 16: two scales, one per 256-bit half; 8: four).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn spread(lo: i64, step: usize) -> __m512i {
    let q = |i: usize| 0x0001_0001_0001_0001 * (lo + (4 * i / step) as i64);
    _mm512_set_epi64(q(7), q(6), q(5), q(4), q(3), q(2), q(1), q(0))
}

/// `[sum of 16 lanes' low 8 + high 8]`: the 8 i32 of `a`'s two halves added.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn fold(a: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a))
}

/// One Q6_K super-block times one Q8_K super-block (the module docs).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn dot_q6_k(w: &BlockQ6_K, x: &BlockQ8_K) -> f32 {
    // SAFETY: `w.scales` is 16 readable bytes; loadu needs no alignment.
    let scales = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) });
    // 32 sum_j sc[j] bsums[j]: the `- 32` of every quant, 8 x i32.
    let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(load32(&x.bsums, 0), scales));
    let table = _mm512_castsi256_si512(scales);
    let (m4, m2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
    // Shift counts per word: 0 in the low half, 2 in the high half.
    let by = _mm512_set_epi64(
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
        0x0002_0002_0002_0002,
        0,
        0,
        0,
        0,
    );
    let mut acc = _mm512_setzero_si512();
    for h in 0..2 {
        let l = load64(&w.ql, 64 * h);
        let s = _mm512_srlv_epi16(_mm512_broadcast_i64x4(load32(&w.qh, 32 * h)), by);
        // (a & b) | c: 0xF0 & 0xCC | 0xAA.
        let q01 = _mm512_ternarylogic_epi32::<0xEA>(
            l,
            m4,
            _mm512_and_si512(_mm512_slli_epi16::<4>(s), m2),
        );
        let q23 = _mm512_ternarylogic_epi32::<0xEA>(
            _mm512_srli_epi16::<4>(l),
            m4,
            _mm512_and_si512(s, m2),
        );
        for (p, q) in [q01, q23].into_iter().enumerate() {
            let sc = _mm512_permutexvar_epi16(spread((8 * h + 4 * p) as i64, 8), table);
            let prod = _mm512_maddubs_epi16(q, load64(&x.qs, 128 * h + 64 * p));
            acc = _mm512_dpwssd_epi32(acc, prod, sc);
        }
    }
    let isum = hsum1(_mm256_sub_epi32(fold(acc), offset));
    // (d_w d_x) f32(isum), as the scalar twin.
    let d = _mm_mul_ss(
        _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(w.d.to_bits()))),
        _mm_set_ss(x.d),
    );
    _mm_cvtss_f32(_mm_mul_ss(d, _mm_cvtepi32_ps(isum)))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemv_q6_k_k(w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
    gemv_rows(w, xq, y, |w, x| dot_q6_k(w, x))
}
