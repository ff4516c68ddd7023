//! Scalar reference kernels: the oracle for every SIMD backend.

use crate::quant::{self, BlockQ4_0, BlockQ8_0};
use crate::Weights;
use half::{bf16, f16};

/// The scalar backend's kernel token (always available), so the dispatch in
/// `lib.rs` treats every backend alike.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token;

impl Token {
    pub(crate) fn gemv(self, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
        gemv(w, x, y)
    }

    pub(crate) fn gemm(self, w: Weights<'_>, x: &[f32], t: usize, y: &mut [f32]) {
        gemm(w, x, t, y)
    }

    pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }

    pub(crate) fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        axpy(y, a, x)
    }

    pub(crate) fn read_sum(self, bytes: &[u8]) -> u64 {
        read_sum(bytes)
    }

    pub(crate) fn gemv_q8_0(self, w: &[BlockQ8_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        quant::gemv_q8_0(w, xq, y)
    }

    pub(crate) fn gemv_q4_0(self, w: &[BlockQ4_0], xq: &[BlockQ8_0], y: &mut [f32]) {
        quant::gemv_q4_0(w, xq, y)
    }
}

pub fn gemv(w: Weights<'_>, x: &[f32], y: &mut [f32]) {
    let n = x.len();
    match w {
        Weights::F32(w) => gemv_f32(w, x, y),
        Weights::F16(w) => {
            for (r, yr) in y.iter_mut().enumerate() {
                *yr = w[r * n..(r + 1) * n]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a.to_f32() * b)
                    .sum();
            }
        }
        Weights::BF16(w) => {
            for (r, yr) in y.iter_mut().enumerate() {
                *yr = w[r * n..(r + 1) * n]
                    .iter()
                    .zip(x)
                    .map(|(a, b)| a.to_f32() * b)
                    .sum();
            }
        }
    }
}

/// `y[i] = W x[i]` for `t` tokens, token-major (`x` is `t` rows of
/// `x.len() / t`, `y` `t` rows of `y.len() / t`): the GEMV per token, the
/// twin of every backend's batched product.
pub fn gemm(w: Weights<'_>, x: &[f32], t: usize, y: &mut [f32]) {
    let (n, rows) = (x.len() / t.max(1), y.len() / t.max(1));
    for i in 0..t {
        gemv(w, &x[i * n..(i + 1) * n], &mut y[i * rows..(i + 1) * rows]);
    }
}

pub fn gemv_f32(w: &[f32], x: &[f32], y: &mut [f32]) {
    let n = x.len();
    for (r, yr) in y.iter_mut().enumerate() {
        *yr = dot(&w[r * n..(r + 1) * n], x);
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Wrapping sum of `bytes` as little-endian u64 words, the last partial word
/// zero-padded. See [`crate::Backend::read_sum`].
pub fn read_sum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut s = 0u64;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        s = s.wrapping_add(u64::from_le_bytes(b));
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    s.wrapping_add(u64::from_le_bytes(last))
}

pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    rmsnorm_scale(out, x, w, ss, eps);
}

/// The second half of rmsnorm, given `ss = sum(x^2)` from any backend.
pub(crate) fn rmsnorm_scale(out: &mut [f32], x: &[f32], w: &[f32], ss: f32, eps: f32) {
    let ms = ss / x.len().max(1) as f32;
    let inv = 1.0 / libm_sqrt(ms + eps);
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        *o = x * inv * w;
    }
}

pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x0, x1) = (a[i], b[i]);
            a[i] = x0 * cos[i] - x1 * sin[i];
            b[i] = x1 * cos[i] + x0 * sin[i];
        }
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = libm_exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + libm_exp(-*g)) * u;
    }
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}

// f16/bf16 helpers used by tests of other backends.
pub fn widen_f16(v: f16) -> f32 {
    v.to_f32()
}
pub fn widen_bf16(v: bf16) -> f32 {
    v.to_f32()
}

fn libm_sqrt(v: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        std::primitive::f32::sqrt(v)
    }
    #[cfg(not(feature = "std"))]
    {
        // Newton iterations from a bit-level estimate; exact enough for rmsnorm.
        if v <= 0.0 {
            return 0.0;
        }
        let mut y = f32::from_bits((v.to_bits() >> 1) + 0x1fbd_1df5);
        for _ in 0..4 {
            y = 0.5 * (y + v / y);
        }
        y
    }
}

fn libm_exp(v: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        std::primitive::f32::exp(v)
    }
    #[cfg(not(feature = "std"))]
    {
        // exp(v) = 2^k * exp(r), r in [-ln2/2, ln2/2], degree-7 Taylor.
        if v < -87.3 {
            return 0.0;
        }
        if v > 88.7 {
            return f32::INFINITY;
        }
        let k = (v * core::f32::consts::LOG2_E + if v < 0.0 { -0.5 } else { 0.5 }) as i32;
        let r = v - k as f32 * core::f32::consts::LN_2;
        let mut p = 1.0 / 5040.0;
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = p * r + c;
        }
        p * f32::from_bits(((k + 127) as u32) << 23)
    }
}
