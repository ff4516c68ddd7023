//! Q8_0 / Q4_0: the quantizers byte for byte against ggml's (through the
//! `gguf` Python package's fixture), the scalar GEMV against an f64 oracle,
//! and every available backend against the scalar GEMV on ragged shapes.

use tpi_kernels::quant::{self, QK};
use tpi_kernels::{f16, Backend, BlockQ4_0, BlockQ8_0};

/// Rows not divisible by any row block; columns from one block up to past
/// the 4096 columns where the f32 kernels change strategy.
const ROWS: &[usize] = if cfg!(miri) {
    &[1, 3]
} else {
    &[1, 2, 3, 5, 17]
};
const COLS: &[usize] = if cfg!(miri) {
    &[32, 96]
} else {
    &[0, 32, 64, 96, 160, 288, 1024, 4096 + 32]
};

mod common;
use common::{abs_sums, close, q4, q4_blk, q8, q8_blk, weights, Rng};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn f32s(s: &str) -> Vec<f32> {
    hex(s)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Index and both values of the first differing element, if any.
fn first_mismatch<T: PartialEq + Copy>(a: &[T], b: &[T]) -> Option<(usize, T, T)> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| (i, a[i], b[i]))
}

#[test]
fn quantizers_match_gguf_bytes_and_dequantized_values() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/quant.json")).unwrap();
    let rows = fixture["rows"].as_array().unwrap();
    assert!(rows.len() >= 8);
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let n = row["n"].as_u64().unwrap() as usize;
        let x = f32s(row["x"].as_str().unwrap());
        assert_eq!(x.len(), n, "{name}");

        let want = hex(row["q8_0"].as_str().unwrap());
        let got = q8(&x);
        let got_bytes: &[u8] = bytemuck::cast_slice(&got);
        assert_eq!(got_bytes.len(), n / QK * 34, "{name}");
        if let Some((i, g, w)) = first_mismatch(got_bytes, &want) {
            panic!(
                "{name} q8_0: byte {i} (block {}) got {g:#04x} want {w:#04x}",
                i / 34
            );
        }
        let blocks: Vec<BlockQ8_0> = want
            .chunks_exact(34)
            .map(bytemuck::pod_read_unaligned)
            .collect();
        let mut deq = vec![f32::NAN; n];
        quant::dequantize_row_q8_0(&blocks, &mut deq);
        let want_deq = f32s(row["q8_0_deq"].as_str().unwrap());
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        if let Some((i, g, w)) = first_mismatch(&bits(&deq), &bits(&want_deq)) {
            panic!("{name} q8_0 dequant: element {i} got {g:#x} want {w:#x}");
        }

        let want = hex(row["q4_0"].as_str().unwrap());
        let got = q4(&x);
        let got_bytes: &[u8] = bytemuck::cast_slice(&got);
        assert_eq!(got_bytes.len(), n / QK * 18, "{name}");
        if let Some((i, g, w)) = first_mismatch(got_bytes, &want) {
            panic!(
                "{name} q4_0: byte {i} (block {}) got {g:#04x} want {w:#04x}",
                i / 18
            );
        }
        let blocks: Vec<BlockQ4_0> = want
            .chunks_exact(18)
            .map(bytemuck::pod_read_unaligned)
            .collect();
        quant::dequantize_row_q4_0(&blocks, &mut deq);
        let want_deq = f32s(row["q4_0_deq"].as_str().unwrap());
        if let Some((i, g, w)) = first_mismatch(&bits(&deq), &bits(&want_deq)) {
            panic!("{name} q4_0 dequant: element {i} got {g:#x} want {w:#x}");
        }
    }
}

/// Hand check of the Q4_0 nibble order and the ggml byte layout.
#[test]
fn q4_0_element_j_is_low_nibble_of_byte_j_then_high_nibble_of_byte_j_minus_16() {
    // max = -8 gives d = 1 exactly: q = trunc(x + 8.5).
    let mut x = [0.0f32; QK];
    x[0] = -8.0;
    x[1] = 7.0; // q 15
    x[16] = -7.0; // q 1
    x[31] = 3.0; // q 11
    let b = q4(&x)[0];
    let bytes: &[u8] = bytemuck::bytes_of(&b);
    assert_eq!(&bytes[..2], &f16::from_f32(1.0).to_bits().to_le_bytes());
    assert_eq!(bytes[2], 0x10, "element 0 (q 0) low, element 16 (q 1) high");
    assert_eq!(
        bytes[3], 0x8f,
        "element 1 (q 15) low, element 17 (q 8) high"
    );
    assert_eq!(
        bytes[17], 0xb8,
        "element 15 (q 8) low, element 31 (q 11) high"
    );
    assert_eq!(b.get(0), -8);
    assert_eq!(b.get(16), -7);
    assert_eq!(b.get(31), 3);
}

/// The x86 kernels need activations in -127..=127 (see `quant` docs).
#[test]
fn quantize_q8_0_never_writes_minus_128() {
    let mut rng = Rng(3);
    let mut x: Vec<f32> = (0..64 * QK).map(|_| rng.f32() * 1e4).collect();
    for (i, v) in x.iter_mut().enumerate().step_by(7) {
        *v = if i % 2 == 0 { -f32::MAX / 2.0 } else { -1e-30 };
    }
    x[..QK].fill(-1.0);
    for b in q8(&x) {
        assert!(b.qs.iter().all(|&q| q != -128), "{b:?}");
    }
}

/// Runs `b`'s GEMV (`which` = "q8_0" / "q4_0") and compares it with the
/// scalar twin; returns the first mismatch.
fn check(
    b: Backend,
    which: &str,
    w8: &[BlockQ8_0],
    w4: &[BlockQ4_0],
    xq: &[BlockQ8_0],
    rows: usize,
    exact: bool,
) -> Result<(), String> {
    let (mut want, mut got) = (vec![0.0; rows], vec![f32::NAN; rows]);
    let sums = match which {
        "q8_0" => {
            quant::gemv_q8_0(w8, xq, &mut want);
            b.gemv_q8_0(w8, xq, &mut got);
            abs_sums(w8, xq, rows, q8_blk)
        }
        _ => {
            quant::gemv_q4_0(w4, xq, &mut want);
            b.gemv_q4_0(w4, xq, &mut got);
            abs_sums(w4, xq, rows, q4_blk)
        }
    };
    for r in 0..rows {
        let ok = if exact {
            got[r] == want[r]
        } else {
            close(got[r], f64::from(want[r]), sums[r])
        };
        if !ok {
            return Err(format!(
                "{} {which} rows={rows} cols={} row {r}: got {} want {} (sum |terms| {})",
                b.name(),
                xq.len() * QK,
                got[r],
                want[r],
                sums[r]
            ));
        }
    }
    Ok(())
}

/// The available backends, printed so a test's output says which paths
/// ran. On aarch64 that is `neon` (the `smull` path, run even when the CPU
/// has dotprod) and, if the CPU has dotprod, `neon-dotprod` (`sdot`).
fn backends_under_test(test: &str) -> Vec<Backend> {
    let backends: Vec<Backend> = Backend::all_available().collect();
    println!(
        "{test}: backends {:?}",
        backends.iter().map(|b| b.name()).collect::<Vec<_>>()
    );
    backends
}

/// Every backend (scalar included: the dispatch) against the scalar twin.
#[test]
fn gemv_q8_0_and_q4_0_match_scalar_on_ragged_shapes() {
    let backends = backends_under_test("ragged shapes");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for &rows in ROWS {
        for &cols in COLS {
            let (w8, w4) = weights(&mut rng, rows, cols);
            let xq = q8(&rng.row(cols));
            for &b in &backends {
                check(b, "q8_0", &w8, &w4, &xq, rows, false).unwrap();
                check(b, "q4_0", &w8, &w4, &xq, rows, false).unwrap();
            }
        }
    }
}

/// With every scale 1.0 the f32 sums are sums of integers below 2^24, so
/// any summation order is exact: the backends' i32 block sums must equal
/// the scalar ones, for any weight byte (-128 included) and the extreme
/// activations +-127.
#[test]
fn gemv_q_block_sums_are_exact_with_unit_scales() {
    let one = f16::from_f32(1.0);
    let backends = backends_under_test("exact block sums");
    let mut rng = Rng(5);
    for &rows in ROWS {
        for &cols in COLS {
            let nb = cols / QK;
            let mut w8 = vec![
                BlockQ8_0 {
                    d: one,
                    qs: [0; QK]
                };
                rows * nb
            ];
            let mut w4 = vec![
                BlockQ4_0 {
                    d: one,
                    qs: [0; QK / 2]
                };
                rows * nb
            ];
            let mut xq = vec![
                BlockQ8_0 {
                    d: one,
                    qs: [0; QK]
                };
                nb
            ];
            for (i, b) in w8.iter_mut().enumerate() {
                b.qs = match i % 4 {
                    0 => [-128; QK],
                    1 => [127; QK],
                    _ => core::array::from_fn(|_| rng.i8()),
                };
            }
            for b in &mut w4 {
                b.qs = core::array::from_fn(|_| rng.i8() as u8);
            }
            // Extremes in the first 8 blocks, then |q| <= 14, so that even
            // 129 blocks stay below 2^24.
            for (i, b) in xq.iter_mut().enumerate() {
                b.qs = match (i < 8, i % 3) {
                    (true, 0) => [-127; QK],
                    (true, 1) => core::array::from_fn(|j| if j % 2 == 0 { 127 } else { -127 }),
                    (true, _) => core::array::from_fn(|_| rng.i8().max(-127)),
                    (false, _) => core::array::from_fn(|_| rng.i8() / 9),
                };
            }
            // The premise: every partial sum is an integer below 2^24.
            for s in abs_sums(&w8, &xq, rows, q8_blk) {
                assert!(s < f64::from(1u32 << 24), "cols={cols}: sum |isum| {s}");
            }
            for &b in &backends {
                check(b, "q8_0", &w8, &w4, &xq, rows, true).unwrap();
                check(b, "q4_0", &w8, &w4, &xq, rows, true).unwrap();
            }
        }
    }
}

/// The scalar twin against an f64 sum of dequantized weights times
/// dequantized activations.
#[test]
fn scalar_gemv_q_matches_f64_oracle_on_dequantized_values() {
    let mut rng = Rng(9);
    for &rows in ROWS {
        for &cols in COLS {
            let (w8, w4) = weights(&mut rng, rows, cols);
            let xq = q8(&rng.row(cols));
            let mut xd = vec![0.0; cols];
            quant::dequantize_row_q8_0(&xq, &mut xd);
            let (mut wd8, mut wd4) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
            quant::dequantize_row_q8_0(&w8, &mut wd8);
            quant::dequantize_row_q4_0(&w4, &mut wd4);
            let (mut y8, mut y4) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
            quant::gemv_q8_0(&w8, &xq, &mut y8);
            quant::gemv_q4_0(&w4, &xq, &mut y4);
            let (s8, s4) = (
                abs_sums(&w8, &xq, rows, q8_blk),
                abs_sums(&w4, &xq, rows, q4_blk),
            );
            for r in 0..rows {
                for (wd, y, s, name) in [(&wd8, &y8, &s8, "q8_0"), (&wd4, &y4, &s4, "q4_0")] {
                    let want: f64 = wd[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&xd)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    assert!(
                        close(y[r], want, s[r]),
                        "scalar {name} rows={rows} cols={cols} row {r}: got {} want {want}",
                        y[r]
                    );
                }
            }
        }
    }
}

/// The comparison can fail: a corrupted weight byte in the first or last
/// block of a row, or a corrupted scale, is caught on every backend.
#[test]
fn gemv_q_check_rejects_a_corrupted_block() {
    let mut rng = Rng(21);
    let (rows, cols) = (3, 160);
    let nb = cols / QK;
    // One magnitude for all blocks, so each block matters to its row's sum.
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
    let (w8, w4) = (q8(&w), q4(&w));
    let xq = q8(&(0..cols).map(|_| rng.f32()).collect::<Vec<_>>());
    for b in Backend::all_available() {
        for (blk, what) in [(0, "qs"), (nb - 1, "qs"), (nb + 2, "d")] {
            let (mut bad8, mut bad4) = (w8.clone(), w4.clone());
            // Pick the element with the largest activation so the change matters.
            let j = (0..QK)
                .max_by_key(|&j| xq[blk % nb].qs[j].unsigned_abs())
                .unwrap();
            if what == "qs" {
                bad8[blk].qs[j] = bad8[blk].qs[j].wrapping_add(64);
                bad4[blk].qs[j % 16] ^= if j < 16 { 0x04 } else { 0x40 };
            } else {
                bad8[blk].d = f16::from_f32(bad8[blk].d.to_f32() * 3.0 + 1.0);
                bad4[blk].d = f16::from_f32(bad4[blk].d.to_f32() * 3.0 + 1.0);
            }
            let r = blk / nb;
            let mut got = vec![0.0; rows];
            let mut want = vec![0.0; rows];
            b.gemv_q8_0(&bad8, &xq, &mut got);
            quant::gemv_q8_0(&w8, &xq, &mut want);
            let s = abs_sums(&w8, &xq, rows, q8_blk);
            assert!(
                !close(got[r], f64::from(want[r]), s[r]),
                "{} q8_0: corrupted {what} in block {blk} not detected",
                b.name()
            );
            b.gemv_q4_0(&bad4, &xq, &mut got);
            quant::gemv_q4_0(&w4, &xq, &mut want);
            let s = abs_sums(&w4, &xq, rows, q4_blk);
            assert!(
                !close(got[r], f64::from(want[r]), s[r]),
                "{} q4_0: corrupted {what} in block {blk} not detected",
                b.name()
            );
        }
    }
}

/// On aarch64 both quantized paths are under test whenever the CPU can run
/// them: `neon` (`smull`) always, `neon-dotprod` (`sdot`) exactly when the
/// CPU has dotprod, and detection picks `sdot` there.
#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_tests_smull_always_and_sdot_when_the_cpu_has_dotprod() {
    let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
    let backends: Vec<Backend> = Backend::all_available().collect();
    assert!(backends.contains(&Backend::Neon), "{backends:?}");
    assert_eq!(backends.contains(&Backend::NeonDotprod), dotprod);
    let want = if dotprod {
        Backend::NeonDotprod
    } else {
        Backend::Neon
    };
    assert_eq!(Backend::detect(), want);
    println!(
        "aarch64: dotprod {dotprod}, detected {}, quantized paths tested: smull{}",
        want.name(),
        if dotprod { " and sdot" } else { "" }
    );
}

/// `.ci/cross.sh` runs the kernel tests under qemu once per CPU model and
/// sets `TPI_EXPECT_DOTPROD` to what that model has (cortex-a72: 0,
/// cortex-a76: 1), so a pass proves which path was detected and tested.
/// Unset: nothing to check.
#[cfg(target_arch = "aarch64")]
#[test]
fn detected_dotprod_matches_tpi_expect_dotprod() {
    let want = match std::env::var("TPI_EXPECT_DOTPROD").as_deref() {
        Ok("1") => Backend::NeonDotprod,
        Ok("0") => Backend::Neon,
        Ok(v) => panic!("TPI_EXPECT_DOTPROD={v:?}: expected 0 or 1"),
        Err(_) => {
            println!("skipped: TPI_EXPECT_DOTPROD is unset");
            return;
        }
    };
    assert_eq!(Backend::detect(), want, "TPI_EXPECT_DOTPROD");
    assert_eq!(
        Backend::NeonDotprod.is_available(),
        want == Backend::NeonDotprod
    );
    println!("TPI_EXPECT_DOTPROD: detected {} as expected", want.name());
}

#[test]
fn gemv_q_panics_on_wrong_weight_shape() {
    for b in Backend::all_available() {
        let r = std::panic::catch_unwind(|| {
            let mut y = [0.0; 2];
            b.gemv_q8_0(
                &[BlockQ8_0::default(); 3],
                &[BlockQ8_0::default(); 2],
                &mut y,
            )
        });
        assert!(r.is_err(), "{}", b.name());
        let r = std::panic::catch_unwind(|| {
            let mut y = [0.0; 2];
            b.gemv_q4_0(
                &[BlockQ4_0::default(); 5],
                &[BlockQ8_0::default(); 2],
                &mut y,
            )
        });
        assert!(r.is_err(), "{}", b.name());
    }
}

#[test]
fn quantize_panics_on_a_length_that_is_not_whole_blocks() {
    let r = std::panic::catch_unwind(|| q8(&[0.0; 33]));
    assert!(r.is_err());
    let r = std::panic::catch_unwind(|| {
        quant::quantize_row_q4_0(&[0.0; 31], &mut [BlockQ4_0::default(); 1])
    });
    assert!(r.is_err());
}

/// Rows past the AVX2 GEMV's 256-block panel (two panels, a partial
/// group of 8 at the end of each row).
#[test]
fn gemv_q_matches_scalar_on_rows_longer_than_a_panel() {
    let mut rng = Rng(33);
    for &(rows, cols) in &[(3, 256 * QK + 3 * QK), (5, 513 * QK)] {
        let (w8, w4) = weights(&mut rng, rows, cols);
        let xq = q8(&rng.row(cols));
        for b in Backend::all_available() {
            check(b, "q8_0", &w8, &w4, &xq, rows, false).unwrap();
            check(b, "q4_0", &w8, &w4, &xq, rows, false).unwrap();
        }
    }
}

/// Many small random rows (3 x 96, block magnitudes 1e-3..1e3): a block
/// whose products cancel to a small sum next to a large scale must still
/// meet the tolerance. An AVX2 GEMV that scaled a block's 8 partial sums
/// apart and added them in f32 failed this stream (a Q8_0 row off by 1e-4
/// of its sum of |terms|); so did a NEON GEMV that scaled a block's 4
/// partial sums apart (a Q8_0 row off by 5e-5 under qemu).
#[test]
fn gemv_q_matches_scalar_on_many_small_rows() {
    let mut rng = Rng(12345);
    let (rows, cols) = (3, 96);
    let backends: Vec<Backend> = Backend::all_available().collect();
    for _ in 0..if cfg!(miri) { 2 } else { 3000 } {
        let w = rng.row(rows * cols);
        let (w8, w4) = (q8(&w), q4(&w));
        let xq = q8(&rng.row(cols));
        for &b in &backends {
            check(b, "q8_0", &w8, &w4, &xq, rows, false).unwrap();
            check(b, "q4_0", &w8, &w4, &xq, rows, false).unwrap();
        }
    }
}

/// A block whose largest value is below 127 * 2^-128 makes `1 / d`
/// overflow; its quants stay in -127..=127 (never -128, which the x86
/// GEMV's sign trick cannot negate).
#[test]
fn q8_0_of_a_vanishing_block_holds_no_minus_128() {
    for amax in [1e-38f32, -1e-38, 1e-45, -3.0e-37, f32::MIN_POSITIVE] {
        let mut x = [0.0f32; QK];
        x[0] = amax;
        x[5] = -amax / 2.0;
        let mut b = [BlockQ8_0::default()];
        quant::quantize_row_q8_0(&x, &mut b);
        assert!(b[0].qs.iter().all(|&q| q > -128), "{amax:e}: {:?}", b[0].qs);
        // The GEMV of such a block is finite and tiny on every backend.
        let w = [b[0]];
        for backend in Backend::all_available() {
            let mut y = [f32::NAN];
            backend.gemv_q8_0(&w, &b, &mut y);
            assert!(
                y[0].is_finite() && y[0].abs() < 1e-30,
                "{backend:?}: {}",
                y[0]
            );
        }
    }
}
