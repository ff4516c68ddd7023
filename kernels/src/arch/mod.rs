//! Per-architecture SIMD backends.
//!
//! Each backend module exposes a zero-sized *token* type (`Avx2`, `Avx512`,
//! `Neon`) whose only constructor checks that the CPU supports the backend's
//! instructions. The token's methods are safe; they call the module's
//! `#[target_feature]` kernels inside `unsafe` blocks whose invariant (the CPU
//! features are present) is established by the token's existence.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod bank;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;

use half::{bf16, f16};

/// Scalar widening of one stored weight, for the column tails of SIMD kernels.
pub(crate) trait Widen: Copy {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for f16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Widen for bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// Scalar dot product of a column tail (fewer elements than one vector).
#[inline(always)]
#[allow(dead_code)] // unused on targets without a SIMD backend
pub(crate) fn tail_dot<E: Widen>(w: &[E], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a.widen() * b).sum()
}
