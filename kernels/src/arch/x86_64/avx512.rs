//! AVX-512F kernels: 16 f32 lanes per `__m512`.
//!
//! Only AVX-512F is required (f16 via `vcvtph2ps zmm`, bf16 via zero-extend +
//! shift). AVX512_BF16 dot instructions are deliberately not used: they round
//! products and would not match the f32-accumulation reference.

use core::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::bank::{backend, Bank, Load};

backend!(Avx512, "avx512f", super::has_avx512);

/// 16 f32 lanes per `__m512`.
impl Bank for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    const ONE_ROW_MAX_COLS: usize = super::ONE_ROW_MAX_COLS;
    /// 31 of the 32 registers.
    const GEMM_TILE: (usize, usize) = (4, 4);

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: avx512f per the trait contract.
        unsafe { _mm512_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn splat(a: f32) -> __m512 {
        // SAFETY: avx512f per the trait contract.
        unsafe { _mm512_set1_ps(a) }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: 16 readable f32 at `p` and avx512f (trait contract); unaligned.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: 16 writable f32 at `p` and avx512f (trait contract); unaligned.
        unsafe { _mm512_storeu_ps(p, v) }
    }

    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: avx512f per the trait contract.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: avx512f per the trait contract.
        unsafe { _mm512_add_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        // SAFETY: avx512f per the trait contract.
        unsafe { _mm512_reduce_add_ps(v) }
    }
}

impl Load<f32> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(p: *const f32) -> __m512 {
        // SAFETY: as `Bank::load` (trait contract).
        unsafe { Self::load(p) }
    }
}

impl Load<f16> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(p: *const f16) -> __m512 {
        // SAFETY: 16 readable f16 = 32 bytes at `p`, and avx512f (trait
        // contract).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

impl Load<bf16> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(p: *const bf16) -> __m512 {
        // SAFETY: 16 readable bf16 = 32 bytes at `p`, and avx512f (trait
        // contract). bf16 is the top half of an f32: zero-extend u16 -> u32,
        // shift left 16.
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

/// Memory-read ceiling: wrapping sum of `bytes` as u64 words.
///
/// ```text
/// acc[0..8] = 0 (8 zmm of 8 x u64); for c step 512: acc[j] += load(bytes[c+64j..+64])
/// result = sum of all lanes + scalar sum of the last len % 512 bytes
/// ```
#[target_feature(enable = "avx512f")]
fn read_sum_k(bytes: &[u8]) -> u64 {
    let body = bytes.len() / 512 * 512;
    let p = bytes.as_ptr();
    let mut acc = [_mm512_setzero_si512(); 8];
    let mut c = 0;
    // SAFETY: each load reads bytes[c + 64j..c + 64j + 64] with j < 8 and
    // c + 512 <= body <= bytes.len(); loadu needs no alignment. CPU feature:
    // this fn's target feature, guaranteed by the caller.
    unsafe {
        while c < body {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(c + 64 * j).cast()));
            }
            c += 512;
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_si512(), |s, a| _mm512_add_epi64(s, *a));
    (_mm512_reduce_add_epi64(s) as u64).wrapping_add(crate::scalar::read_sum(&bytes[body..]))
}
