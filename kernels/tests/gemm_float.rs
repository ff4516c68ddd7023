//! The batched float product (`Backend::gemm`, prompt prefill) of every
//! available backend against the scalar GEMV per token, on ragged shapes:
//! token counts around the 3-token tile and the 24 / 48-token passes, rows
//! around the 3-row tile and the 12-row block, columns around the vector
//! width and the 512 / 1024-column panels (f32 / f16), each with every
//! tail.

use tpi_kernels::{bf16, f16, scalar, Backend, Weights};

const TOKENS: &[usize] = &[1, 2, 3, 4, 5, 7, 10, 26, 50];
const ROWS: &[usize] = &[1, 2, 3, 4, 5, 13, 40];
const COLS: &[usize] = &[0, 1, 7, 8, 33, 511, 512, 513, 1023, 1025, 2100];

/// Deterministic xorshift64* stream of f32 in [-1, 1).
struct Rng(u64);

impl Rng {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
                (v >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }
}

/// Tolerance for a different f32 summation order: 1e-4 * (1 + sum |w_i x_i|)
/// (each of `n` roundings is at most 2^-24 of a partial sum bounded by the
/// sum of magnitudes; 1e-4 covers n up to ~1600 with margin, and the tests
/// below show a single wrong weight exceeds it).
fn close(got: f32, want: f32, abs_sum: f32) -> bool {
    (got - want).abs() <= 1e-4 * (1.0 + abs_sum)
}

/// `b.gemm` against the scalar GEMV per token; the first mismatch.
fn check(b: Backend, w: Weights<'_>, wf: &[f32], xs: &[f32], t: usize) -> Result<(), String> {
    let cols = xs.len() / t;
    let rows = w.len() / cols;
    let mut got = vec![f32::NAN; t * rows];
    b.gemm(w, xs, t, &mut got);
    for i in 0..t {
        let x = &xs[i * cols..(i + 1) * cols];
        let mut want = vec![0.0; rows];
        scalar::gemv(w, x, &mut want);
        for r in 0..rows {
            let abs_sum: f32 = wf[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(a, b)| (a * b).abs())
                .sum();
            let g = got[i * rows + r];
            if !close(g, want[r], abs_sum) {
                return Err(format!(
                    "{} t={t} rows={rows} cols={cols} token {i} row {r}: got {g} want {}",
                    b.name(),
                    want[r]
                ));
            }
        }
    }
    Ok(())
}

/// With no columns the weights do not tell the rows; those cases use 3.
const ROWS_WHEN_EMPTY: usize = 3;

fn gemm_matches_gemv_per_token(dtype: &str) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for &t in TOKENS {
        for &rows in ROWS {
            for &cols in COLS {
                if cols == 0 && rows != ROWS_WHEN_EMPTY {
                    continue;
                }
                let wf = rng.vec(rows * cols);
                let xs = rng.vec(t * cols);
                let w16: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
                let wb16: Vec<bf16> = wf.iter().map(|&v| bf16::from_f32(v)).collect();
                let (w, wf): (Weights<'_>, Vec<f32>) = match dtype {
                    "f32" => (Weights::F32(&wf), wf.clone()),
                    "f16" => (Weights::F16(&w16), w16.iter().map(|v| v.to_f32()).collect()),
                    _ => (
                        Weights::BF16(&wb16),
                        wb16.iter().map(|v| v.to_f32()).collect(),
                    ),
                };
                if cols == 0 {
                    // 3 rows of nothing: every output is 0.
                    for b in Backend::all_available() {
                        let mut y = vec![f32::NAN; t * rows];
                        b.gemm(w, &xs, t, &mut y);
                        assert!(y.iter().all(|v| *v == 0.0), "{} {y:?}", b.name());
                    }
                    continue;
                }
                for b in Backend::all_available() {
                    check(b, w, &wf, &xs, t).unwrap();
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0);
}

#[test]
fn gemm_f32_matches_the_gemv_per_token_on_ragged_shapes() {
    gemm_matches_gemv_per_token("f32");
}

#[test]
fn gemm_f16_matches_the_gemv_per_token_on_ragged_shapes() {
    gemm_matches_gemv_per_token("f16");
}

#[test]
fn gemm_bf16_matches_the_gemv_per_token_on_ragged_shapes() {
    gemm_matches_gemv_per_token("bf16");
}

/// The comparison can fail: one wrong input of one token, in the first
/// column (a tile's vector body), the last (the scalar tail) or past the
/// first panel, is caught for that token and no other.
#[test]
fn gemm_check_rejects_one_wrong_input_of_one_token() {
    let mut rng = Rng(7);
    let (t, rows, cols) = (5, 7, 1030);
    let wf = rng.vec(rows * cols);
    let xs = rng.vec(t * cols);
    for b in Backend::all_available() {
        for (tok, col) in [(0, 0), (4, cols - 1), (3, 600)] {
            let mut bad = xs.clone();
            bad[tok * cols + col] += 4.0;
            let mut got = vec![0.0; t * rows];
            b.gemm(Weights::F32(&wf), &bad, t, &mut got);
            for i in 0..t {
                let mut want = vec![0.0; rows];
                scalar::gemv(Weights::F32(&wf), &xs[i * cols..(i + 1) * cols], &mut want);
                let abs_sum: f32 = wf[..cols].iter().map(|v| v.abs()).sum();
                let hit = !close(got[i * rows], want[0], abs_sum);
                assert_eq!(hit, i == tok, "{} token {i}, corrupted {tok}", b.name());
            }
        }
    }
}

#[test]
fn gemm_panics_on_shapes_that_do_not_fit() {
    let w = vec![0.0f32; 12];
    for (t, x, y) in [(0, 4, 3), (2, 7, 6), (2, 8, 5), (2, 8, 8)] {
        for b in Backend::all_available() {
            let (xs, mut ys) = (vec![0.0; x], vec![0.0; y]);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                b.gemm(Weights::F32(&w), &xs, t, &mut ys)
            }));
            assert!(r.is_err(), "{} t={t} x={x} y={y}", b.name());
        }
    }
}
