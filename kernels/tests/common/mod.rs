//! Test helpers shared by the kernel test files: a deterministic random
//! stream and the reference quantizers on whole rows.
#![allow(dead_code)]

use tpi_kernels::quant::{self, QK};
use tpi_kernels::{f16, BlockQ4_0, BlockQ8_0};

/// Deterministic xorshift64* stream.
pub struct Rng(pub u64);

impl Rng {
    pub fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn i8(&mut self) -> i8 {
        (self.u64() >> 56) as u8 as i8
    }

    /// A row of `n` values with a per-block magnitude from 1e-3 to 1e3, so
    /// the scales cover a wide f16 range.
    pub fn row(&mut self, n: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n / QK {
            let mag = 10f32.powf(3.0 * self.f32());
            v.extend((0..QK).map(|_| self.f32() * mag));
        }
        v
    }
}

pub fn q8(x: &[f32]) -> Vec<BlockQ8_0> {
    let mut b = vec![BlockQ8_0::default(); x.len() / QK];
    quant::quantize_row_q8_0(x, &mut b);
    b
}

pub fn q4(x: &[f32]) -> Vec<BlockQ4_0> {
    let mut b = vec![BlockQ4_0::default(); x.len() / QK];
    quant::quantize_row_q4_0(x, &mut b);
    b
}

/// Random quantized weights of `rows x cols` and their f32 values.
pub fn weights(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<BlockQ8_0>, Vec<BlockQ4_0>) {
    let w = rng.row(rows * cols);
    (q8(&w), q4(&w))
}

/// Per row, `sum_b |d_w d_x isum_b|` in f64: the scale of the rounding
/// error of any f32 summation order.
pub fn abs_sums<W>(
    w: &[W],
    xq: &[BlockQ8_0],
    rows: usize,
    blk: impl Fn(&W, &BlockQ8_0) -> f64,
) -> Vec<f64> {
    let nb = xq.len();
    (0..rows)
        .map(|r| {
            w[r * nb..(r + 1) * nb]
                .iter()
                .zip(xq)
                .map(|(wb, xb)| blk(wb, xb).abs())
                .sum()
        })
        .collect()
}

pub fn q8_blk(w: &BlockQ8_0, x: &BlockQ8_0) -> f64 {
    w.d.to_f64() * x.d.to_f64() * f64::from(quant::block_dot_q8_0(w, x))
}

pub fn q4_blk(w: &BlockQ4_0, x: &BlockQ8_0) -> f64 {
    w.d.to_f64() * x.d.to_f64() * f64::from(quant::block_dot_q4_0(w, x))
}

/// f32 summation in another order: 2e-5 of `sum |terms|` (129 blocks x
/// f32 epsilon, with margin), plus the smallest normal for all-zero rows.
pub fn close(got: f32, want: f64, abs_sum: f64) -> bool {
    (f64::from(got) - want).abs() <= 2e-5 * abs_sum + f64::from(f32::MIN_POSITIVE)
}

/// f16 weight scales at the edges: the largest and its negative, the
/// smallest normal, the smallest subnormal and its negative, 0, -0, 1 and
/// the largest subnormal; `hostile_f16(i)` cycles through them.
pub fn hostile_f16(i: usize) -> f16 {
    const BITS: [u16; 9] = [
        0x7bff, 0xfbff, 0x0400, 0x0001, 0x8001, 0x0000, 0x8000, 0x3c00, 0x03ff,
    ];
    f16::from_bits(BITS[i % BITS.len()])
}

/// f32 activation scales whose products with [`hostile_f16`] underflow
/// to subnormals or overflow to infinity, and a few ordinary ones.
pub const HOSTILE_DX: [f32; 9] = [1e-38, 1e-35, 2e-33, 1.4e-45, 3e38, -3e38, 1.0, 0.0, 7.5e-3];

/// Panics unless `seen` holds every class of f32 value: the hostile cases
/// do reach NaN, infinity, zero, subnormals and normals.
pub fn assert_every_f32_class(seen: &[std::num::FpCategory]) {
    use std::num::FpCategory::*;
    for class in [Nan, Infinite, Zero, Subnormal, Normal] {
        assert!(seen.contains(&class), "no {class:?} output");
    }
}
