//! NEON with the dotprod extension (FEAT_DotProd, ARMv8.2-A; Cortex-A55,
//! A76 and later: Pi 5, RK3588, phones since about 2018).
//!
//! The extension adds one thing we use, `SDOT Vd.4S, Vn.16B, Vm.16B`: each
//! i32 lane `j` of `Vd` gains `sum_{k<4} Vn[4j+k] * Vm[4j+k]` (signed bytes,
//! exact). It serves the quantized GEMVs (`quant.rs`); f32 kernels have no
//! use for it and run the NEON ones. Its intrinsic `vdotq_s32` is unstable
//! (`stdarch_neon_dotprod`), so it is issued with a one-instruction `asm!`.

use core::arch::aarch64::*;
use core::arch::asm;

use super::neon::Neon;

/// Proof that the CPU has NEON and dotprod: only `new` builds it, after
/// the CPU check returned true.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NeonDotprod(Neon);

impl NeonDotprod {
    pub(crate) fn new() -> Option<Self> {
        if super::has_dotprod() {
            Neon::new().map(NeonDotprod)
        } else {
            None
        }
    }

    // The f32 kernels: NEON's.

    /// `y = W x`; the caller checked `w.len() == y.len() * x.len()`.
    pub(crate) fn gemv(self, w: crate::Weights<'_>, x: &[f32], y: &mut [f32]) {
        self.0.gemv(w, x, y)
    }

    pub(crate) fn gemm(self, w: crate::Weights<'_>, x: &[f32], t: usize, y: &mut [f32]) {
        self.0.gemm(w, x, t, y)
    }

    pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        self.0.dot(a, b)
    }

    pub(crate) fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        self.0.axpy(y, a, x)
    }

    pub(crate) fn read_sum(self, bytes: &[u8]) -> u64 {
        self.0.read_sum(bytes)
    }
}

/// `acc[j] += sum_{k<4} w[4j+k] * x[4j+k]` for the 4 i32 lanes (`SDOT`).
/// Exact for every byte pair: 4 products of at most `128 * 128` each.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn sdot(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: SDOT (vector) is FEAT_DotProd, this fn's target feature; it
    // reads the three registers, writes only `acc`'s, touches no memory,
    // stack or flags.
    unsafe {
        asm!(
            "sdot {a:v}.4s, {w:v}.16b, {x:v}.16b",
            a = inout(vreg) acc,
            w = in(vreg) w,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}
