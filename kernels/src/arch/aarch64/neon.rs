//! NEON kernels: 4 f32 lanes per `float32x4_t`, base ARMv8-A only.
//!
//! f16 is widened with `FCVTL` (base AdvSIMD). Its intrinsic
//! `vcvt_f32_f16` needs the unstable `float16x4_t` type, so it is issued with
//! a one-instruction `asm!`. bf16 is widened with `vshll_n_u16::<16>`.

use core::arch::aarch64::*;
use core::arch::asm;

use half::{bf16, f16};

use crate::arch::bank::{backend, Bank, Load};

backend!(Neon, "neon", super::has_neon);

/// 4 f32 lanes per `float32x4_t`.
impl Bank for Neon {
    type V = float32x4_t;
    const LANES: usize = 4;
    /// Every row count in 4-row blocks: not yet measured on ARM hardware
    /// against one-row streaming (which won on x86).
    const ONE_ROW_MAX_COLS: usize = 0;
    /// The tile measured on AVX2; not timed on a Pi yet.
    const GEMM_TILE: (usize, usize) = (3, 3);

    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        // SAFETY: neon per the trait contract.
        unsafe { vdupq_n_f32(0.0) }
    }

    #[inline(always)]
    unsafe fn splat(a: f32) -> float32x4_t {
        // SAFETY: neon per the trait contract.
        unsafe { vdupq_n_f32(a) }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: 4 readable f32 at `p` and neon (trait contract); ld1 needs
        // no alignment.
        unsafe { vld1q_f32(p) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: 4 writable f32 at `p` and neon (trait contract).
        unsafe { vst1q_f32(p, v) }
    }

    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: neon per the trait contract. vfmaq_f32(c, a, b) = c + a * b.
        unsafe { vfmaq_f32(c, a, b) }
    }

    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: neon per the trait contract.
        unsafe { vaddq_f32(a, b) }
    }

    #[inline(always)]
    unsafe fn hsum(v: float32x4_t) -> f32 {
        // SAFETY: neon per the trait contract.
        unsafe { vaddvq_f32(v) }
    }
}

impl Load<f32> for Neon {
    #[inline(always)]
    unsafe fn load_w(p: *const f32) -> float32x4_t {
        // SAFETY: as `Bank::load` (trait contract).
        unsafe { Self::load(p) }
    }
}

impl Load<f16> for Neon {
    #[inline(always)]
    unsafe fn load_w(p: *const f16) -> float32x4_t {
        // SAFETY: 4 readable f16 = 8 bytes at `p`, and neon (trait contract).
        let h = unsafe { vld1_u16(p.cast()) };
        let out: float32x4_t;
        // SAFETY: FCVTL Vd.4S, Vn.4H is base ARMv8-A AdvSIMD (neon, per the
        // trait contract); it reads only `h`'s register, writes only
        // `out`'s, touches no memory, stack or flags. Widening is exact.
        unsafe {
            asm!(
                "fcvtl {o:v}.4s, {i:v}.4h",
                o = lateout(vreg) out,
                i = in(vreg) h,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        out
    }
}

impl Load<bf16> for Neon {
    #[inline(always)]
    unsafe fn load_w(p: *const bf16) -> float32x4_t {
        // SAFETY: 4 readable bf16 = 8 bytes at `p`, and neon (trait
        // contract). bf16 is the top half of an f32: widen u16 -> u32
        // shifted left by 16.
        unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast()))) }
    }
}

/// Memory-read ceiling: wrapping sum of `bytes` as u64 words.
///
/// ```text
/// acc[0..8] = 0 (8 q-regs of 2 x u64); for c step 128: acc[j] += ld1(bytes[c+16j..+16])
/// result = sum of all lanes + scalar sum of the last len % 128 bytes
/// ```
#[target_feature(enable = "neon")]
fn read_sum_k(bytes: &[u8]) -> u64 {
    let body = bytes.len() / 128 * 128;
    let p = bytes.as_ptr();
    let mut acc = [vdupq_n_u64(0); 8];
    let mut c = 0;
    // SAFETY: each load reads bytes[c + 16j..c + 16j + 16] with j < 8 and
    // c + 128 <= body <= bytes.len(); ld1 needs no alignment. CPU feature:
    // this fn's target feature, guaranteed by the caller.
    unsafe {
        while c < body {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vaddq_u64(*a, vreinterpretq_u64_u8(vld1q_u8(p.add(c + 16 * j))));
            }
            c += 128;
        }
    }
    let s = acc.iter().fold(vdupq_n_u64(0), |s, a| vaddq_u64(s, *a));
    vaddvq_u64(s).wrapping_add(crate::scalar::read_sum(&bytes[body..]))
}
