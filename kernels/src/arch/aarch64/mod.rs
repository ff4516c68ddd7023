//! aarch64 backends: NEON (base ARMv8-A AdvSIMD, every 64-bit Pi) and
//! NEON with the dotprod extension (ARMv8.2-A `sdot`: Cortex-A55/A76 and
//! later, Pi 5, RK3588). The second differs only in the quantized GEMVs.

pub(crate) mod dotprod;
mod gemm;
mod kquant;
mod kx8;
pub(crate) mod neon;
mod quant;

/// NEON: enabled at compile time (the default for aarch64 targets), or
/// detected at run time (std).
pub(crate) fn has_neon() -> bool {
    cfg!(target_feature = "neon") || detect_neon()
}

/// NEON and dotprod: enabled at compile time (`-C target-feature=+dotprod`
/// or a `target-cpu` that has it), or detected at run time (std). Without
/// either, the NEON backend's `smull` path is the one that runs.
pub(crate) fn has_dotprod() -> bool {
    has_neon() && (cfg!(target_feature = "dotprod") || detect_dotprod())
}

// `is_aarch64_feature_detected!` caches the kernel's HWCAP bits in a
// static, so these are an atomic load and a bit test after the first call.
#[cfg(feature = "std")]
fn detect_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(feature = "std")]
fn detect_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

#[cfg(not(feature = "std"))]
fn detect_neon() -> bool {
    false
}

#[cfg(not(feature = "std"))]
fn detect_dotprod() -> bool {
    false
}
