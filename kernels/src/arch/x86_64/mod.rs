//! x86-64 backends: AVX2+FMA+F16C and AVX-512F (with VNNI kernels for
//! the quantized types where the CPU has them).

pub(crate) mod avx2;
pub(crate) mod avx512;
mod gemm;
mod kgemm;
mod kgemm512;
mod kquant;
mod kquant512;
mod kx8;
mod quant;
pub(crate) mod vnni;

/// Rows up to this many columns (`x` up to 16 KiB, half of L1d beside the
/// streamed row) are read one at a time (see `bank::gemv`).
pub(crate) const ONE_ROW_MAX_COLS: usize = 4096;

/// AVX2 + FMA + F16C: enabled at compile time, or detected at run time (std).
pub(crate) fn has_avx2() -> bool {
    cfg!(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )) || detect_avx2()
}

/// AVX-512F: enabled at compile time, or detected at run time (std).
pub(crate) fn has_avx512() -> bool {
    cfg!(target_feature = "avx512f") || detect_avx512()
}

/// AVX-512 VNNI with BW and VL (and AVX2, FMA, F16C): `vpdpbusd` on ymm
/// and zmm, byte and word ops on zmm. Ice Lake, Sapphire Rapids, Zen 4.
pub(crate) fn has_avx512_vnni() -> bool {
    cfg!(all(
        target_feature = "avx512vnni",
        target_feature = "avx512bw",
        target_feature = "avx512vl",
        target_feature = "avx512f",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )) || detect_avx512_vnni()
}

// `is_x86_feature_detected!` caches its CPUID results in a static, so these
// are an atomic load and a bit test after the first call.
#[cfg(feature = "std")]
fn detect_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(feature = "std")]
fn detect_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

#[cfg(feature = "std")]
fn detect_avx512_vnni() -> bool {
    detect_avx2()
        && detect_avx512()
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(feature = "std"))]
fn detect_avx512_vnni() -> bool {
    false
}

#[cfg(not(feature = "std"))]
fn detect_avx2() -> bool {
    false
}

#[cfg(not(feature = "std"))]
fn detect_avx512() -> bool {
    false
}
