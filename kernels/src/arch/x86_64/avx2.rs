//! AVX2 + FMA + F16C kernels: 8 f32 lanes per `__m256`.

use core::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::bank::{backend, Bank, Load};

backend!(Avx2, "avx2,fma,f16c", super::has_avx2);

/// 8 f32 lanes per `__m256`; AVX2 for the integer widening, FMA, F16C.
impl Bank for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    const ONE_ROW_MAX_COLS: usize = super::ONE_ROW_MAX_COLS;
    /// 13 of the 16 registers (see `bank::gemm`).
    const GEMM_TILE: (usize, usize) = (3, 3);

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: avx per the trait contract.
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn splat(a: f32) -> __m256 {
        // SAFETY: avx per the trait contract.
        unsafe { _mm256_set1_ps(a) }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: 8 readable f32 at `p` and avx (trait contract); unaligned.
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: 8 writable f32 at `p` and avx (trait contract); unaligned.
        unsafe { _mm256_storeu_ps(p, v) }
    }

    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: fma per the trait contract.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: avx per the trait contract.
        unsafe { _mm256_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: avx and sse3 (implied by avx2) per the trait contract.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
}

impl Load<f32> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(p: *const f32) -> __m256 {
        // SAFETY: as `Bank::load` (trait contract).
        unsafe { Self::load(p) }
    }
}

impl Load<f16> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(p: *const f16) -> __m256 {
        // SAFETY: 8 readable f16 = 16 bytes at `p`, and f16c (trait contract).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

impl Load<bf16> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(p: *const bf16) -> __m256 {
        // SAFETY: 8 readable bf16 = 16 bytes at `p`, and avx2 (trait
        // contract). bf16 is the top half of an f32: zero-extend u16 -> u32,
        // shift left 16.
        unsafe {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

/// Memory-read ceiling: wrapping sum of `bytes` as u64 words.
///
/// ```text
/// acc[0..8] = 0 (8 ymm of 4 x u64); for c step 256: acc[j] += load(bytes[c+32j..+32])
/// result = sum of all lanes + scalar sum of the last len % 256 bytes
/// ```
#[target_feature(enable = "avx2,fma,f16c")]
fn read_sum_k(bytes: &[u8]) -> u64 {
    let body = bytes.len() / 256 * 256;
    let p = bytes.as_ptr();
    let mut acc = [_mm256_setzero_si256(); 8];
    let mut c = 0;
    // SAFETY: each load reads bytes[c + 32j..c + 32j + 32] with j < 8 and
    // c + 256 <= body <= bytes.len(); loadu needs no alignment. CPU features:
    // this fn's target features, guaranteed by the caller.
    unsafe {
        while c < body {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(c + 32 * j).cast()));
            }
            c += 256;
        }
    }
    let mut lanes = [0u64; 4];
    for a in acc {
        let mut v = [0u64; 4];
        // SAFETY: `v` is 32 writable bytes; storeu needs no alignment.
        unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), a) };
        for (l, v) in lanes.iter_mut().zip(v) {
            *l = l.wrapping_add(v);
        }
    }
    lanes
        .iter()
        .fold(crate::scalar::read_sum(&bytes[body..]), |s, l| {
            s.wrapping_add(*l)
        })
}
