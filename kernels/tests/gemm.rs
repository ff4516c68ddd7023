//! The batched products `gemm_q8_0` / `gemm_q4_0` (prompt prefill) of every
//! available backend against the scalar GEMV of each token, on ragged
//! token counts, rows and columns.

use proptest::prelude::*;
use tpi_kernels::quant::{self, QK};
use tpi_kernels::{f16, Backend, BlockQ4_0, BlockQ8_0};

mod common;
use common::{abs_sums, close, q4, q4_blk, q8, q8_blk, weights, Rng};

/// Every token count up to 20 (the 8-token groups of the AVX2 and NEON
/// GEMMs, their 4-, 2- and 1-token rests, and the GEMV for a lone token)
/// and rows around the 4-row tiles; columns past the 64-block panel.
const GEMM_T: &[usize] = if cfg!(miri) {
    &[1, 9]
} else {
    &[
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 64,
    ]
};
const GEMM_ROWS: &[usize] = if cfg!(miri) {
    &[1, 5]
} else {
    &[1, 3, 4, 5, 7, 9, 13]
};
const GEMM_COLS: &[usize] = if cfg!(miri) {
    &[32, 96]
} else {
    &[0, 32, 96, 64 * QK, 65 * QK, 129 * QK + 4 * QK]
};

/// The available backends, printed so a test's output says which GEMMs
/// ran. On aarch64 that must include `neon` (and `neon-dotprod` where
/// `TPI_EXPECT_DOTPROD=1`, as `.ci/cross.sh` sets it for cortex-a76).
fn backends_under_test(test: &str) -> Vec<Backend> {
    let backends: Vec<Backend> = Backend::all_available().collect();
    println!(
        "{test}: backends {:?}",
        backends.iter().map(|b| b.name()).collect::<Vec<_>>()
    );
    if cfg!(target_arch = "aarch64") {
        assert!(backends.contains(&Backend::Neon), "aarch64 without neon");
        if std::env::var("TPI_EXPECT_DOTPROD").as_deref() == Ok("1") {
            assert!(backends.contains(&Backend::NeonDotprod), "no dotprod");
        }
    }
    backends
}

/// Whether `b`'s GEMM promises its own GEMV's result per token, bit for
/// bit (the NEON GEMMs: same block sums, same two f32 operations per
/// block, same order).
fn same_as_gemv(b: Backend) -> bool {
    matches!(b, Backend::Neon | Backend::NeonDotprod)
}

/// Runs `b`'s GEMM (`which` = "q8_0" / "q4_0") on `t` tokens with the
/// weights `run` and compares each token's output row with the scalar
/// GEMV of that token on `want` (the same weights, unless a test corrupts
/// one), and where [`same_as_gemv`] with `b`'s own GEMV on `run`, bit for
/// bit; returns the first mismatch.
#[allow(clippy::too_many_arguments)]
fn check_gemm(
    b: Backend,
    which: &str,
    run: (&[BlockQ8_0], &[BlockQ4_0]),
    (w8, w4): (&[BlockQ8_0], &[BlockQ4_0]),
    xq: &[BlockQ8_0],
    t: usize,
    rows: usize,
    exact: bool,
) -> Result<(), String> {
    let nb = xq.len() / t;
    let mut got = vec![f32::NAN; t * rows];
    match which {
        "q8_0" => b.gemm_q8_0(run.0, xq, t, &mut got),
        _ => b.gemm_q4_0(run.1, xq, t, &mut got),
    }
    for i in 0..t {
        let x = &xq[i * nb..(i + 1) * nb];
        if same_as_gemv(b) {
            let mut own = vec![f32::NAN; rows];
            match which {
                "q8_0" => b.gemv_q8_0(run.0, x, &mut own),
                _ => b.gemv_q4_0(run.1, x, &mut own),
            }
            let got = &got[i * rows..(i + 1) * rows];
            if let Some(r) = (0..rows).find(|&r| got[r].to_bits() != own[r].to_bits()) {
                return Err(format!(
                    "{} gemm {which} t={t} rows={rows} cols={} token {i} row {r}: got {} but its gemv {}",
                    b.name(),
                    nb * QK,
                    got[r],
                    own[r]
                ));
            }
        }
        let mut want = vec![0.0; rows];
        let sums = match which {
            "q8_0" => {
                quant::gemv_q8_0(w8, x, &mut want);
                abs_sums(w8, x, rows, q8_blk)
            }
            _ => {
                quant::gemv_q4_0(w4, x, &mut want);
                abs_sums(w4, x, rows, q4_blk)
            }
        };
        for r in 0..rows {
            let g = got[i * rows + r];
            let ok = if exact {
                g == want[r]
            } else {
                close(g, f64::from(want[r]), sums[r])
            };
            if !ok {
                return Err(format!(
                    "{} gemm {which} t={t} rows={rows} cols={} token {i} row {r}: got {g} want {} (sum |terms| {})",
                    b.name(),
                    nb * QK,
                    want[r],
                    sums[r]
                ));
            }
        }
    }
    Ok(())
}

/// Every backend's batched product (scalar included: the dispatch)
/// against the scalar GEMV of each token.
#[test]
fn gemm_q8_0_and_q4_0_match_scalar_gemv_per_token_on_ragged_shapes() {
    let mut rng = Rng(0x5eed_6e33);
    let backends = backends_under_test("gemm ragged shapes");
    for &t in GEMM_T {
        for &rows in GEMM_ROWS {
            for &cols in GEMM_COLS {
                let (w8, w4) = weights(&mut rng, rows, cols);
                let xq = q8(&rng.row(t * cols));
                let w = (&w8[..], &w4[..]);
                for &b in &backends {
                    check_gemm(b, "q8_0", w, w, &xq, t, rows, false).unwrap();
                    check_gemm(b, "q4_0", w, w, &xq, t, rows, false).unwrap();
                }
            }
        }
    }
}

/// With unit scales every order of the f32 sums is exact (as in
/// `gemv_q_block_sums_are_exact_with_unit_scales`): the batched integer
/// sums must equal the scalar ones for any weight byte (-128 included),
/// the extreme activations +-127, and for Q4_0 activations of -128 too.
#[test]
fn gemm_q_block_sums_are_exact_with_unit_scales() {
    let one = f16::from_f32(1.0);
    let backends = backends_under_test("gemm exact block sums");
    let mut rng = Rng(77);
    for &t in GEMM_T {
        for &rows in GEMM_ROWS {
            for &cols in GEMM_COLS {
                let nb = cols / QK;
                let qs8 = |i: usize, rng: &mut Rng| match i % 4 {
                    0 => [-128; QK],
                    1 => [127; QK],
                    _ => core::array::from_fn(|_| rng.i8()),
                };
                let w8: Vec<BlockQ8_0> = (0..rows * nb)
                    .map(|i| BlockQ8_0 {
                        d: one,
                        qs: qs8(i, &mut rng),
                    })
                    .collect();
                let w4: Vec<BlockQ4_0> = (0..rows * nb)
                    .map(|_| BlockQ4_0 {
                        d: one,
                        qs: core::array::from_fn(|_| rng.i8() as u8),
                    })
                    .collect();
                // Extremes in each token's first 8 blocks, then |q| <= 14,
                // so that 133 blocks stay below 2^24.
                let mut xq: Vec<BlockQ8_0> = (0..t * nb)
                    .map(|i| BlockQ8_0 {
                        d: one,
                        qs: match (i % nb.max(1) < 8, i % 3) {
                            (true, 0) => [-127; QK],
                            (true, 1) => {
                                core::array::from_fn(|j| if j % 2 == 0 { 127 } else { -127 })
                            }
                            (true, _) => core::array::from_fn(|_| rng.i8().max(-127)),
                            (false, _) => core::array::from_fn(|_| rng.i8() / 9),
                        },
                    })
                    .collect();
                let w = (&w8[..], &w4[..]);
                for &b in &backends {
                    check_gemm(b, "q8_0", w, w, &xq, t, rows, true).unwrap();
                    check_gemm(b, "q4_0", w, w, &xq, t, rows, true).unwrap();
                }
                // Q4_0 takes any activation byte on every backend.
                for x in xq.iter_mut().step_by(5) {
                    x.qs[..8].fill(-128);
                }
                for &b in &backends {
                    check_gemm(b, "q4_0", w, w, &xq, t, rows, true).unwrap();
                }
            }
        }
    }
}

/// The comparison can fail: a corrupted weight block in the single row
/// after a 4-row tile changes that row for every token (the 8 of the
/// first group and the lone ninth) and no other row.
#[test]
fn gemm_q_check_rejects_a_corrupted_block() {
    let mut rng = Rng(41);
    let (t, rows, cols) = (9, 5, 96);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
    let (w8, w4) = (q8(&w), q4(&w));
    let xq = q8(&(0..t * cols).map(|_| rng.f32()).collect::<Vec<_>>());
    let (mut bad8, mut bad4) = (w8.clone(), w4.clone());
    let blk = 4 * cols / QK + 1; // row 4
    bad8[blk].qs[3] = bad8[blk].qs[3].wrapping_add(64);
    bad4[blk].qs[3] ^= 0x44;
    let (run, want) = ((&bad8[..], &bad4[..]), (&w8[..], &w4[..]));
    for b in Backend::all_available() {
        for which in ["q8_0", "q4_0"] {
            assert!(check_gemm(b, which, run, want, &xq, t, rows, false).is_err());
            let mut y = [vec![0.0; t * rows], vec![0.0; t * rows]];
            for (y, (w8, w4)) in y.iter_mut().zip([want, run]) {
                match which {
                    "q8_0" => b.gemm_q8_0(w8, &xq, t, y),
                    _ => b.gemm_q4_0(w4, &xq, t, y),
                }
            }
            for (i, r) in (0..t * rows).map(|i| (i / rows, i % rows)) {
                let changed = y[0][i * rows + r] != y[1][i * rows + r];
                assert_eq!(changed, r == 4, "{} {which}: token {i} row {r}", b.name());
            }
        }
    }
}

#[test]
fn gemm_q_panics_on_shapes_that_do_not_fit() {
    let (w, x) = ([BlockQ8_0::default(); 6], [BlockQ8_0::default(); 4]);
    for b in Backend::all_available() {
        // 2 tokens of 2 blocks, 3 rows: fits.
        b.gemm_q8_0(&w, &x, 2, &mut [0.0; 6]);
        b.gemm_q8_0(&[], &[], 0, &mut []);
        for (t, y) in [(2, 5), (3, 6), (2, 8)] {
            let r = std::panic::catch_unwind(|| b.gemm_q8_0(&w, &x, t, &mut vec![0.0; y]));
            assert!(r.is_err(), "{} t={t} y={y}", b.name());
        }
        let w4 = [BlockQ4_0::default(); 6];
        let r = std::panic::catch_unwind(|| b.gemm_q4_0(&w4, &x[..3], 2, &mut [0.0; 6]));
        assert!(r.is_err(), "{}", b.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 2 } else { 48 },
        ..ProptestConfig::default()
    })]

    /// Random shapes: any token count up to 20, rows up to 13 (every rest
    /// of the 4-row tile), blocks across the 64-block panel.
    #[test]
    fn gemm_q_matches_scalar_gemv_on_random_shapes(
        t in 1usize..=20,
        rows in 1usize..=13,
        nb in 0usize..=70,
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed | 1);
        let (w8, w4) = weights(&mut rng, rows, nb * QK);
        let xq = q8(&rng.row(t * nb * QK));
        let w = (&w8[..], &w4[..]);
        for b in Backend::all_available() {
            for which in ["q8_0", "q4_0"] {
                check_gemm(b, which, w, w, &xq, t, rows, false).map_err(TestCaseError::fail)?;
            }
        }
    }
}
