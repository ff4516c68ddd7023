//! Every available SIMD backend against the scalar reference, on ragged
//! shapes: columns that are not a multiple of any vector width and rows that
//! are not a multiple of the 4-row block.

use tpi_kernels::{bf16, f16, scalar, Backend, Weights};

/// Up to 4096 columns the x86 kernels read one row at a time, beyond that
/// in blocks of 4 rows: both paths, with every tail length.
const COLS: &[usize] = &[
    0, 1, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 257, 1000, 4096, 4097, 4143,
];
const ROWS: &[usize] = &[1, 2, 3, 4, 5, 7, 9, 17];

/// Deterministic xorshift64* stream of f32 in [-1, 1).
struct Rng(u64);

impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// Backends under test: every available one except the scalar oracle.
/// On a CPU without one (a 32-bit Pi) the comparisons below still check
/// the scalar kernels against an f64 oracle, and say that nothing else ran.
fn simd_backends() -> Vec<Backend> {
    let v: Vec<Backend> = Backend::all_available()
        .filter(|b| *b != Backend::Scalar)
        .collect();
    if v.is_empty() {
        println!(
            "note: no SIMD backend on this CPU; only the scalar kernels are checked (against f64)"
        );
    }
    v
}

/// The scalar oracle itself against an f64 sum, for every shape the SIMD
/// backends are compared on.
fn check_scalar_gemv_against_f64(w: Weights<'_>, wf: &[f32], x: &[f32], rows: usize) {
    let cols = x.len();
    let mut got = vec![f32::NAN; rows];
    scalar::gemv(w, x, &mut got);
    for r in 0..rows {
        let row = &wf[r * cols..(r + 1) * cols];
        let want: f64 = row.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
        let abs_sum: f32 = row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
        assert!(
            close(got[r], want as f32, abs_sum),
            "scalar rows={rows} cols={cols} row {r}: got {} want {want}",
            got[r]
        );
    }
}

/// Tolerance for a different f32 summation order: 1e-4 * (1 + sum |w_i x_i|).
fn close(got: f32, want: f32, abs_sum: f32) -> bool {
    (got - want).abs() <= 1e-4 * (1.0 + abs_sum)
}

/// Checks `b.gemv` against `scalar::gemv` for one weight matrix; returns a
/// description of the first mismatch.
fn check_gemv(
    b: Backend,
    w: Weights<'_>,
    wf: &[f32],
    x: &[f32],
    rows: usize,
) -> Result<(), String> {
    let cols = x.len();
    let mut want = vec![0.0; rows];
    scalar::gemv(w, x, &mut want);
    let mut got = vec![f32::NAN; rows];
    b.gemv(w, x, &mut got);
    for r in 0..rows {
        let abs_sum: f32 = wf[r * cols..(r + 1) * cols]
            .iter()
            .zip(x)
            .map(|(a, b)| (a * b).abs())
            .sum();
        if !close(got[r], want[r], abs_sum) {
            return Err(format!(
                "{} rows={rows} cols={cols} row {r}: got {} want {}",
                b.name(),
                got[r],
                want[r]
            ));
        }
    }
    Ok(())
}

fn gemv_matches_scalar(dtype: &str) {
    let backends = simd_backends();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &rows in ROWS {
        for &cols in COLS {
            let wf = rng.vec(rows * cols);
            let x = rng.vec(cols);
            // Round the weights to the dtype so `wf` holds the exact stored values.
            let w16: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
            let wb16: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
            let (w, wf): (Weights<'_>, Vec<f32>) = match dtype {
                "f32" => (Weights::F32(&wf), wf.clone()),
                "f16" => (Weights::F16(&w16), w16.iter().map(|v| v.to_f32()).collect()),
                "bf16" => (
                    Weights::BF16(&wb16),
                    wb16.iter().map(|v| v.to_f32()).collect(),
                ),
                _ => unreachable!(),
            };
            check_scalar_gemv_against_f64(w, &wf, &x, rows);
            for &b in &backends {
                check_gemv(b, w, &wf, &x, rows).unwrap();
            }
        }
    }
}

#[test]
fn gemv_f32_matches_scalar_on_ragged_rows_and_cols() {
    gemv_matches_scalar("f32");
}

#[test]
fn gemv_f16_matches_scalar_on_ragged_rows_and_cols() {
    gemv_matches_scalar("f16");
}

#[test]
fn gemv_bf16_matches_scalar_on_ragged_rows_and_cols() {
    gemv_matches_scalar("bf16");
}

/// The comparison above can fail: one corrupted weight in the last column
/// (the scalar tail of every SIMD kernel) or in the first (the vector body)
/// is caught.
#[test]
fn gemv_check_rejects_a_single_wrong_weight() {
    let mut rng = Rng(7);
    let (rows, cols) = (5, 65);
    let wf = rng.vec(rows * cols);
    let x: Vec<f32> = (0..cols).map(|_| 1.0).collect();
    for b in Backend::all_available() {
        for idx in [0, cols - 1, 4 * cols + 17] {
            let mut bad = wf.clone();
            bad[idx] += 0.5;
            // Backend computes with `bad`, the oracle and tolerance use `wf`.
            let mut got = vec![0.0; rows];
            b.gemv(Weights::F32(&bad), &x, &mut got);
            let mut want = vec![0.0; rows];
            scalar::gemv(Weights::F32(&wf), &x, &mut want);
            let r = idx / cols;
            let abs_sum: f32 = wf[r * cols..(r + 1) * cols].iter().map(|v| v.abs()).sum();
            assert!(
                !close(got[r], want[r], abs_sum),
                "{}: corruption at {idx} not detected",
                b.name()
            );
        }
    }
}

/// Widening is exact: every finite f16 / bf16 bit pattern comes out of the
/// backend's gemv (one-hot x selects one column) exactly as `to_f32` gives it.
#[test]
fn gemv_widens_every_finite_f16_and_bf16_bit_pattern_exactly() {
    let cols = 64;
    let rows = 65536 / cols;
    let f16s: Vec<f16> = (0..=u16::MAX)
        .map(f16::from_bits)
        .map(|v| if v.is_finite() { v } else { f16::ZERO })
        .collect();
    let bf16s: Vec<bf16> = (0..=u16::MAX)
        .map(bf16::from_bits)
        .map(|v| if v.is_finite() { v } else { bf16::ZERO })
        .collect();
    for b in Backend::all_available() {
        for j in 0..cols {
            let mut x = vec![0.0; cols];
            x[j] = 1.0;
            let mut y = vec![0.0; rows];
            b.gemv(Weights::F16(&f16s), &x, &mut y);
            for (r, y) in y.iter().enumerate() {
                assert_eq!(
                    *y,
                    f16s[r * cols + j].to_f32(),
                    "{} f16 bits {:#06x}",
                    b.name(),
                    r * cols + j
                );
            }
            b.gemv(Weights::BF16(&bf16s), &x, &mut y);
            for (r, y) in y.iter().enumerate() {
                assert_eq!(
                    *y,
                    bf16s[r * cols + j].to_f32(),
                    "{} bf16 bits {:#06x}",
                    b.name(),
                    r * cols + j
                );
            }
        }
    }
}

#[test]
fn dot_matches_scalar_on_ragged_lengths() {
    let mut rng = Rng(11);
    for &n in COLS {
        let (a, c) = (rng.vec(n), rng.vec(n));
        let want = scalar::dot(&a, &c);
        let abs_sum: f32 = a.iter().zip(&c).map(|(a, b)| (a * b).abs()).sum();
        let exact: f64 = a.iter().zip(&c).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!(close(want, exact as f32, abs_sum), "scalar n={n}");
        for b in simd_backends() {
            let got = b.dot(&a, &c);
            assert!(
                close(got, want, abs_sum),
                "{} n={n}: got {got} want {want}",
                b.name()
            );
        }
    }
}

#[test]
fn axpy_matches_scalar_on_ragged_lengths() {
    let mut rng = Rng(13);
    for &n in COLS {
        let (y0, x) = (rng.vec(n), rng.vec(n));
        let a = rng.f32() * 3.0;
        let mut want = y0.clone();
        scalar::axpy(&mut want, a, &x);
        for b in simd_backends() {
            let mut got = y0.clone();
            b.axpy(&mut got, a, &x);
            for i in 0..n {
                let scale = 1.0 + (a * x[i]).abs() + y0[i].abs();
                assert!(
                    (got[i] - want[i]).abs() <= 1e-6 * scale,
                    "{} n={n} i={i}: got {} want {}",
                    b.name(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn rmsnorm_matches_scalar_on_ragged_lengths() {
    let mut rng = Rng(17);
    for &n in COLS {
        let (x, w) = (rng.vec(n), rng.vec(n));
        let mut want = vec![0.0; n];
        scalar::rmsnorm(&mut want, &x, &w, 1e-5);
        for b in Backend::all_available() {
            let mut got = vec![f32::NAN; n];
            b.rmsnorm(&mut got, &x, &w, 1e-5);
            for i in 0..n {
                assert!(
                    (got[i] - want[i]).abs() <= 1e-4 * (1.0 + want[i].abs()),
                    "{} n={n} i={i}: got {} want {}",
                    b.name(),
                    got[i],
                    want[i]
                );
            }
        }
        // The free function uses the detected backend.
        let mut got = vec![f32::NAN; n];
        tpi_kernels::rmsnorm(&mut got, &x, &w, 1e-5);
        for i in 0..n {
            assert!((got[i] - want[i]).abs() <= 1e-4 * (1.0 + want[i].abs()));
        }
    }
}

#[test]
fn detect_returns_an_available_backend_listed_first() {
    let d = Backend::detect();
    assert!(d.is_available());
    assert_eq!(Backend::all_available().next(), Some(d));
    assert_eq!(Backend::all_available().last(), Some(Backend::Scalar));
    assert_eq!(Backend::detect(), d, "cached result is stable");
}

/// With `std`, runtime detection must find the SIMD backends the CPU has.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[test]
fn x86_backends_follow_cpu_features() {
    let avx2 = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c");
    assert_eq!(Backend::Avx2.is_available(), avx2);
    assert_eq!(
        Backend::Avx512.is_available(),
        std::is_x86_feature_detected!("avx512f")
    );
    assert!(!Backend::Neon.is_available());
}

#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_has_neon_and_no_x86_backends() {
    assert!(Backend::Neon.is_available());
    assert!(!Backend::Avx2.is_available() && !Backend::Avx512.is_available());
}

#[test]
fn unavailable_backend_panics_instead_of_running() {
    let Some(b) = Backend::ALL.into_iter().find(|b| !b.is_available()) else {
        return; // every backend runs here (cannot happen on a real CPU)
    };
    let r = std::panic::catch_unwind(|| b.dot(&[1.0], &[1.0]));
    assert!(r.is_err(), "{} ran although unavailable", b.name());
}

#[test]
fn gemv_panics_on_wrong_weight_shape() {
    for b in Backend::all_available() {
        let r = std::panic::catch_unwind(|| {
            let mut y = [0.0; 2];
            b.gemv(Weights::F32(&[0.0; 7]), &[0.0; 4], &mut y)
        });
        assert!(r.is_err(), "{}", b.name());
    }
}

#[test]
fn read_sum_is_the_same_wrapping_word_sum_on_every_backend() {
    // Hand check: two words 1 and 2^64 - 1 wrap to 0; a 3-byte tail 0x030201.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_eq!(scalar::read_sum(&bytes), 0x030201);
    let big: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for b in Backend::all_available() {
        assert_eq!(b.read_sum(&bytes), 0x030201, "{}", b.name());
        for len in [0, 1, 7, 8, 63, 64, 255, 256, 511, 512, 513, 1000, 5000] {
            for start in [0, 1, 3] {
                let s = &big[start..(start + len).min(big.len())];
                assert_eq!(
                    b.read_sum(s),
                    scalar::read_sum(s),
                    "{} len {len} start {start}",
                    b.name()
                );
            }
        }
    }
}
