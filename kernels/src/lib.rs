//! tpi-kernels: the numeric kernels of tpi.
//!
//! Every public function takes slices, checks shapes once (documented under
//! `# Panics`) and forwards to the backend chosen by [`Backend`]. The scalar
//! backend is the reference every SIMD path is tested against.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub use half::{bf16, f16};

pub mod scalar;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Scalar,
}

impl Backend {
    /// The best backend for this CPU.
    pub fn detect() -> Backend {
        Backend::Scalar
    }

    /// Short lowercase name ("scalar", "avx2", "avx512", "neon").
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
        }
    }

    /// Whether this backend can run on this CPU.
    pub fn is_available(self) -> bool {
        true
    }

    /// `y = W x`, W row-major `[y.len()][x.len()]`, f32 accumulation.
    ///
    /// # Panics
    /// If `w.len() != y.len() * x.len()`.
    pub fn gemv(self, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
        assert_eq!(w.len(), y.len() * x.len(), "gemv: weight shape");
        match self {
            Backend::Scalar => scalar::gemv(w, x, y),
        }
    }

    /// Dot product of two f32 vectors.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot: lengths");
        scalar::dot(a, b)
    }

    /// `y += a * x`.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        assert_eq!(y.len(), x.len(), "axpy: lengths");
        scalar::axpy(y, a, x)
    }
}

/// `out = x / rms(x) * w` with `rms = sqrt(mean(x^2) + eps)`.
///
/// # Panics
/// If the lengths differ.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    assert!(out.len() == x.len() && x.len() == w.len(), "rmsnorm: lengths");
    scalar::rmsnorm(out, x, w, eps)
}

/// Rotate-half RoPE (HF layout) on `x` = `n_heads` heads of `head_dim`, with
/// `cos`/`sin` of length `head_dim / 2` for this position.
///
/// # Panics
/// If `x.len()` is not a multiple of `2 * cos.len()` or `sin.len() != cos.len()`.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert!(half > 0 && sin.len() == half && x.len() % (2 * half) == 0, "rope: shape");
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
