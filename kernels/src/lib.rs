//! tpi-kernels: the numeric kernels of tpi.
//!
//! Every public function takes slices, checks shapes once (documented under
//! `# Panics`) and forwards to the backend chosen by [`Backend`]. The scalar
//! backend is the reference every SIMD path is tested against.
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "std")]
extern crate std;

pub use half::{bf16, f16};
pub use kquant::{BlockQ4_K, BlockQ6_K, BlockQ8_K};
pub use kx8::BlockQ4_Kx8;
pub use quant::{BlockQ4_0, BlockQ8_0};

mod arch;
pub mod kquant;
pub mod kx8;
pub mod quant;
pub mod scalar;

#[cfg(feature = "std")]
pub mod pool;

/// A weight matrix or vector in its stored dtype. Row-major `[rows][cols]`.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> Weights<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
            Weights::BF16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per stored element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            Weights::F32(_) => 4,
            Weights::F16(_) | Weights::BF16(_) => 2,
        }
    }

    /// Elements `start..end` (for splitting rows across threads).
    pub fn slice(&self, start: usize, end: usize) -> Weights<'a> {
        match self {
            Weights::F32(w) => Weights::F32(&w[start..end]),
            Weights::F16(w) => Weights::F16(&w[start..end]),
            Weights::BF16(w) => Weights::BF16(&w[start..end]),
        }
    }
}

/// A kernel backend. `Backend::detect()` picks the fastest available one.
///
/// Every variant exists on every target; [`Backend::is_available`] says
/// whether it can run here (compiled for this architecture and, with `std`,
/// detected at run time; without `std`, enabled as a compile-time target
/// feature). Calling a kernel on an unavailable backend panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Portable scalar reference; always available.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
    /// aarch64 NEON (base ARMv8-A): every 64-bit Pi.
    Neon,
    /// aarch64 NEON with the dotprod extension (ARMv8.2-A `sdot`: Pi 5,
    /// RK3588): the quantized GEMVs use `sdot`, the f32 kernels are NEON's.
    NeonDotprod,
}

/// Runs `$body` with `$k` bound to the kernel token of backend `$b`, or panics
/// if the backend cannot run on this CPU.
macro_rules! dispatch {
    ($b:expr, |$k:ident| $body:expr) => {
        match $b {
            Backend::Scalar => {
                let $k = scalar::Token;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                let $k =
                    arch::x86_64::avx2::Avx2::new().unwrap_or_else(|| unavailable(Backend::Avx2));
                $body
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                let $k = arch::x86_64::avx512::Avx512::new()
                    .unwrap_or_else(|| unavailable(Backend::Avx512));
                $body
            }
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => {
                let $k =
                    arch::aarch64::neon::Neon::new().unwrap_or_else(|| unavailable(Backend::Neon));
                $body
            }
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => {
                let $k = arch::aarch64::dotprod::NeonDotprod::new()
                    .unwrap_or_else(|| unavailable(Backend::NeonDotprod));
                $body
            }
            #[allow(unreachable_patterns)]
            other => unavailable(other),
        }
    };
}

#[cold]
#[inline(never)]
fn unavailable(b: Backend) -> ! {
    panic!(
        "tpi-kernels: backend {} is not available on this CPU",
        b.name()
    )
}

impl Backend {
    /// Every backend, fastest first (the order `detect` tries them in).
    pub const ALL: [Backend; 5] = [
        Backend::Avx512,
        Backend::Avx2,
        Backend::NeonDotprod,
        Backend::Neon,
        Backend::Scalar,
    ];

    /// The best backend for this CPU. With `std` the result of run-time
    /// detection is cached after the first call.
    pub fn detect() -> Backend {
        #[cfg(feature = "std")]
        {
            use core::sync::atomic::{AtomicU8, Ordering};
            // 0 = not yet detected, else 1 + index into ALL.
            static CACHE: AtomicU8 = AtomicU8::new(0);
            match CACHE.load(Ordering::Relaxed) {
                0 => {
                    let i = Self::ALL
                        .iter()
                        .position(|b| b.is_available())
                        .unwrap_or(Self::ALL.len() - 1);
                    CACHE.store(i as u8 + 1, Ordering::Relaxed);
                    Self::ALL[i]
                }
                i => Self::ALL[usize::from(i - 1)],
            }
        }
        #[cfg(not(feature = "std"))]
        {
            Self::all_available().next().unwrap_or(Backend::Scalar)
        }
    }

    /// The backends that can run on this CPU, fastest first; always ends
    /// with `Scalar`.
    pub fn all_available() -> impl Iterator<Item = Backend> {
        Self::ALL.into_iter().filter(|b| b.is_available())
    }

    /// Short lowercase name ("scalar", "avx2", "avx512", "neon",
    /// "neon-dotprod"): which path runs, for `--version` and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Neon => "neon",
            Backend::NeonDotprod => "neon-dotprod",
        }
    }

    /// Whether this backend can run on this CPU.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::has_avx512(),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::has_neon(),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::has_dotprod(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// `y = W x`, W row-major `[y.len()][x.len()]`, f32 accumulation.
    ///
    /// # Panics
    /// If `w.len() != y.len() * x.len()`, or if the backend is not available.
    pub fn gemv(self, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
        assert_eq!(w.len(), y.len() * x.len(), "gemv: weight shape");
        dispatch!(self, |k| k.gemv(w, x, y))
    }

    /// `y[i] = W x[i]` for `t` tokens on float weights (prompt prefill):
    /// `x` holds `t` rows of inputs, `y` gets `t` rows of outputs,
    /// token-major. The SIMD backends run a register-tiled product (3 rows
    /// x 3 tokens per tile: each weight loaded once per 3 tokens, 9
    /// independent FMA chains, panels kept in L1); the sums are the GEMV's
    /// in another order. Scalar is the GEMV per token.
    ///
    /// # Panics
    /// If `t == 0`, `x` or `y` is not `t` rows, `w.len()` is not their
    /// row lengths' product, or the backend is not available.
    pub fn gemm(self, w: Weights<'_>, x: &[f32], t: usize, y: &mut [f32]) {
        assert!(
            t > 0
                && x.len().is_multiple_of(t)
                && y.len().is_multiple_of(t)
                && w.len() == (x.len() / t) * (y.len() / t),
            "gemm: shapes"
        );
        dispatch!(self, |k| k.gemm(w, x, t, y))
    }

    /// `y = W x` on Q8_0 weights with Q8_0 activations `xq` (from
    /// [`quant::quantize_row_q8_0`]): W row-major in blocks
    /// `[y.len()][xq.len()]`, an exact i32 dot product per 32-block scaled
    /// into an f32 sum (see [`quant`]). Native on AVX2, NEON (base
    /// ARMv8-A `smull`/`sadalp`) and NEON dotprod (`sdot`); AVX-512 runs
    /// the AVX2 kernel for Q8_0 (measured faster than its `vpdpbusd`
    /// version) and a `vpdpbusd` one for Q4_0 where the CPU has VNNI.
    ///
    /// # Panics
    /// If `w.len() != y.len() * xq.len()`, or if the backend is not available.
    pub fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        assert_eq!(w.len(), y.len() * xq.len(), "gemv_q8_0: weight shape");
        dispatch!(self, |k| k.gemv_q8_0(w, xq, y))
    }

    /// `y = W x` on Q4_0 weights with Q8_0 activations, as
    /// [`Backend::gemv_q8_0`].
    ///
    /// # Panics
    /// If `w.len() != y.len() * xq.len()`, or if the backend is not available.
    pub fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        assert_eq!(w.len(), y.len() * xq.len(), "gemv_q4_0: weight shape");
        dispatch!(self, |k| k.gemv_q4_0(w, xq, y))
    }

    /// `y = W x` on Q4_K weights with Q8_K activations `xq` (from
    /// [`kquant::quantize_row_q8_k`]): W row-major in super-blocks
    /// `[y.len()][xq.len()]`, exact i32 sums per 256-block scaled into an
    /// f32 sum (see [`kquant`]); every backend's result equals the scalar
    /// twin's bit for bit. Native on AVX2, NEON (base ARMv8-A
    /// `smull`/`smlal`) and NEON dotprod (`sdot`); AVX-512 runs the AVX2
    /// kernel (a 512-bit one was 3-5% slower on Zen 4, see
    /// `arch/x86_64/kquant512.rs`).
    ///
    /// # Panics
    /// If `w.len() != y.len() * xq.len()`, or if the backend is not available.
    pub fn gemv_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        assert_eq!(w.len(), y.len() * xq.len(), "gemv_q4_k: weight shape");
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k(w, xq, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k(w, xq, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k(w, xq, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k(w, xq, y),
            _ if self.is_available() => kquant::gemv_q4_k(w, xq, y),
            _ => unavailable(self),
        }
    }

    /// `y = W x` on Q4_K weights interleaved by 8 rows ([`kx8`]) with
    /// Q8_K activations: `y.len() / 8` groups of `xq.len()` blocks. Every
    /// backend's result equals [`Backend::gemv_q4_k`]'s on the rows before
    /// [`kx8::repack_q4_k_x8`], bit for bit. Native on AVX2 (which the
    /// AVX-512 backend runs: faster from DRAM than its VNNI version), NEON
    /// and NEON dotprod.
    ///
    /// # Panics
    /// If the shapes do not fit ([`kx8::gemv_shape`]), or if the backend is
    /// not available.
    pub fn gemv_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
        kx8::gemv_shape(w.len(), xq.len(), y.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k_x8(w, xq, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k_x8(w, xq, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k_x8(w, xq, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q4_k_x8(w, xq, y),
            _ if self.is_available() => kx8::gemv_q4_k_x8(w, xq, y),
            _ => unavailable(self),
        }
    }

    /// `y[i] = W xq[i]` for `t` tokens on interleaved Q4_K weights
    /// (prompt prefill), token-major as [`Backend::gemm_q4_k`]: each group
    /// of 8 rows for every token while it is in cache (AVX2, AVX-512 VNNI,
    /// NEON, NEON dotprod). Every backend's result equals the scalar GEMV's
    /// of each token bit for bit.
    ///
    /// # Panics
    /// If the shapes do not fit ([`kx8::gemm_shape_x8`]), or if the backend
    /// is not available.
    pub fn gemm_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        kx8::gemm_shape_x8(w.len(), xq.len(), t, y.len());
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k_x8(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k_x8(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k_x8(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k_x8(w, xq, t, y),
            _ if self.is_available() => kx8::gemm_q4_k_x8(w, xq, t, y),
            _ => unavailable(self),
        }
    }

    /// `y = W x` on Q6_K weights with Q8_K activations, as
    /// [`Backend::gemv_q4_k`]; AVX-512 with VNNI, BW and VL runs a 512-bit
    /// kernel (64 weights per `vpmaddubsw`), else the AVX2 one.
    ///
    /// # Panics
    /// If `w.len() != y.len() * xq.len()`, or if the backend is not available.
    pub fn gemv_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], y: &mut [f32]) {
        assert_eq!(w.len(), y.len() * xq.len(), "gemv_q6_k: weight shape");
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q6_k(w, xq, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q6_k(w, xq, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q6_k(w, xq, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemv_q6_k(w, xq, y),
            _ if self.is_available() => kquant::gemv_q6_k(w, xq, y),
            _ => unavailable(self),
        }
    }

    /// `y[i] = W xq[i]` for `t` tokens on Q8_0 weights (prompt prefill):
    /// `xq` holds `t` rows of Q8_0 activations of `nb` blocks each, W is
    /// `rows x nb` blocks, `y` gets `t` rows of `rows` outputs,
    /// token-major (see [`quant`]). AVX2, AVX-512 VNNI, NEON and NEON
    /// dotprod read each weight block once per group of up to 8 tokens
    /// (NEON's results equal its GEMV's per token, bit for bit); scalar is
    /// the twin.
    ///
    /// # Panics
    /// If the shapes do not fit ([`quant::gemm_shape`]), or if the backend
    /// is not available.
    pub fn gemm_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        let (nb, rows) = quant::gemm_shape(w.len(), xq.len(), t, y.len());
        match self {
            Backend::Scalar => quant::gemm_q8_0(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q8_0(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q8_0(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q8_0(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q8_0(w, xq, t, y),
            _ => {
                for i in 0..t {
                    let y = &mut y[i * rows..(i + 1) * rows];
                    self.gemv_q8_0(w, &xq[i * nb..(i + 1) * nb], y);
                }
            }
        }
    }

    /// `y[i] = W xq[i]` for `t` tokens on Q4_0 weights, as
    /// [`Backend::gemm_q8_0`].
    ///
    /// # Panics
    /// If the shapes do not fit ([`quant::gemm_shape`]), or if the backend
    /// is not available.
    pub fn gemm_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], t: usize, y: &mut [f32]) {
        let (nb, rows) = quant::gemm_shape(w.len(), xq.len(), t, y.len());
        match self {
            Backend::Scalar => quant::gemm_q4_0(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_0(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_0(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_0(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_0(w, xq, t, y),
            _ => {
                for i in 0..t {
                    let y = &mut y[i * rows..(i + 1) * rows];
                    self.gemv_q4_0(w, &xq[i * nb..(i + 1) * nb], y);
                }
            }
        }
    }

    /// `y[i] = W xq[i]` for `t` tokens on Q4_K weights (prompt prefill):
    /// `xq` holds `t` rows of Q8_K activations of `nb` super-blocks each,
    /// W is `rows x nb` super-blocks, `y` gets `t` rows of `rows` outputs,
    /// token-major. AVX2, AVX-512 VNNI (`vpdpbusd`), NEON and NEON
    /// dotprod unpack each weight super-block once per 8 tokens; scalar is
    /// the twin. Every backend's result equals the scalar GEMV's of each
    /// token bit for bit (the same exact integer sums per super-block, the
    /// same f32 operations in the same order).
    ///
    /// # Panics
    /// If the shapes do not fit ([`kquant::gemm_shape`]), or if the
    /// backend is not available.
    pub fn gemm_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        let (nb, rows) = kquant::gemm_shape(w.len(), xq.len(), t, y.len());
        match self {
            Backend::Scalar => kquant::gemm_q4_k(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q4_k(w, xq, t, y),
            _ => {
                for i in 0..t {
                    let y = &mut y[i * rows..(i + 1) * rows];
                    self.gemv_q4_k(w, &xq[i * nb..(i + 1) * nb], y);
                }
            }
        }
    }

    /// `y[i] = W xq[i]` for `t` tokens on Q6_K weights, as
    /// [`Backend::gemm_q4_k`].
    ///
    /// # Panics
    /// If the shapes do not fit ([`kquant::gemm_shape`]), or if the
    /// backend is not available.
    pub fn gemm_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        let (nb, rows) = kquant::gemm_shape(w.len(), xq.len(), t, y.len());
        match self {
            Backend::Scalar => kquant::gemm_q6_k(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => arch::x86_64::avx2::Avx2::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q6_k(w, xq, t, y),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => arch::x86_64::avx512::Avx512::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q6_k(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => arch::aarch64::neon::Neon::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q6_k(w, xq, t, y),
            #[cfg(target_arch = "aarch64")]
            Backend::NeonDotprod => arch::aarch64::dotprod::NeonDotprod::new()
                .unwrap_or_else(|| unavailable(self))
                .gemm_q6_k(w, xq, t, y),
            _ => {
                for i in 0..t {
                    let y = &mut y[i * rows..(i + 1) * rows];
                    self.gemv_q6_k(w, &xq[i * nb..(i + 1) * nb], y);
                }
            }
        }
    }

    /// Dot product of two f32 vectors.
    ///
    /// # Panics
    /// If the lengths differ, or if the backend is not available.
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot: lengths");
        dispatch!(self, |k| k.dot(a, b))
    }

    /// `y += a * x`.
    ///
    /// # Panics
    /// If the lengths differ, or if the backend is not available.
    pub fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        assert_eq!(y.len(), x.len(), "axpy: lengths");
        dispatch!(self, |k| k.axpy(y, a, x))
    }

    /// Wrapping sum of `bytes` as little-endian u64 words (the last partial
    /// word zero-padded), read with this backend's widest loads into 8
    /// independent accumulators. It does no useful work: it is the
    /// "best memory read loop" that GEMV bandwidth is compared against
    /// (`cargo bench --bench gemv`). Every backend returns the same value.
    ///
    /// # Panics
    /// If the backend is not available.
    pub fn read_sum(self, bytes: &[u8]) -> u64 {
        dispatch!(self, |k| k.read_sum(bytes))
    }

    /// [`rmsnorm`] on this backend (SIMD sum of squares).
    ///
    /// # Panics
    /// If the lengths differ, or if the backend is not available.
    pub fn rmsnorm(self, out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        assert!(
            out.len() == x.len() && x.len() == w.len(),
            "rmsnorm: lengths"
        );
        let ss = self.dot(x, x);
        scalar::rmsnorm_scale(out, x, w, ss, eps);
    }
}

/// `out = x / rms(x) * w` with `rms = sqrt(mean(x^2) + eps)`.
///
/// # Panics
/// If the lengths differ.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    Backend::detect().rmsnorm(out, x, w, eps)
}

/// Rotate-half RoPE (HF layout) on `x` = `n_heads` heads of `head_dim`, with
/// `cos`/`sin` of length `head_dim / 2` for this position.
///
/// # Panics
/// If `x.len()` is not a multiple of `2 * cos.len()` or `sin.len() != cos.len()`.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert!(
        half > 0 && sin.len() == half && x.len().is_multiple_of(2 * half),
        "rope: shape"
    );
    scalar::rope(x, cos, sin)
}

/// In-place numerically stable softmax.
pub fn softmax(x: &mut [f32]) {
    scalar::softmax(x)
}

/// `gate = silu(gate) * up`.
///
/// # Panics
/// If the lengths differ.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: lengths");
    scalar::silu_mul(gate, up)
}

/// Index of the largest value (first on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    scalar::argmax(x)
}
