//! Proof that the CPU has AVX-512 VNNI, BW and VL. The AVX-512 backend's
//! quantized kernels take one before they call code compiled for
//! `avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni`; without it
//! (Skylake-X, or a hypervisor that hides VNNI) they run the AVX2 ones.

/// Only [`Vnni::new`] builds it, after the CPU check returned true.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vnni(());

impl Vnni {
    pub(crate) fn new() -> Option<Self> {
        super::has_avx512_vnni().then_some(Vnni(()))
    }
}
