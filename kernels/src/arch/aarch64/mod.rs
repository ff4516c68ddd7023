//! aarch64 backend: NEON (base ARMv8-A AdvSIMD only).

pub(crate) mod neon;
mod quant;

/// NEON: enabled at compile time (the default for aarch64 targets), or
/// detected at run time (std).
pub(crate) fn has_neon() -> bool {
    cfg!(target_feature = "neon") || detect_neon()
}

#[cfg(feature = "std")]
fn detect_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(not(feature = "std"))]
fn detect_neon() -> bool {
    false
}
