//! The batched products `gemm_q4_k` / `gemm_q6_k` (prompt prefill) of
//! every available backend against the scalar GEMV of each token, bit for
//! bit: the batched paths compute the same exact integer sums per
//! super-block and the GEMV's f32 operations in its order (see `kquant`,
//! `arch/x86_64/kgemm.rs` and `arch/aarch64/kquant.rs`), so the tolerance
//! is zero.

use proptest::prelude::*;
use tpi_kernels::kquant::{self, QK_K};
use tpi_kernels::{f16, Backend, BlockQ4_K, BlockQ6_K, BlockQ8_K};

mod common;
use common::Rng;

/// Weights of `rows x nb` super-blocks and `t` tokens of `nb` activation
/// super-blocks: quantized from random rows (magnitudes 1e-3..1e3 per
/// 32), or raw random bytes (any quant and scale byte, the f16 scales of a
/// quantized row so they stay finite; activations with consistent
/// `bsums`).
struct Case {
    w4: Vec<BlockQ4_K>,
    w6: Vec<BlockQ6_K>,
    xq: Vec<BlockQ8_K>,
}

fn case(seed: u64, t: usize, rows: usize, nb: usize, raw: bool) -> Case {
    let mut rng = Rng(seed | 1);
    let x = rng.row(rows * nb * QK_K);
    let mut w4 = vec![BlockQ4_K::default(); rows * nb];
    let mut w6 = vec![BlockQ6_K::default(); rows * nb];
    kquant::quantize_row_q4_k(&x, &mut w4);
    kquant::quantize_row_q6_k(&x, &mut w6);
    let mut xq = vec![BlockQ8_K::default(); t * nb];
    kquant::quantize_row_q8_k(&rng.row(t * nb * QK_K), &mut xq);
    if raw {
        for w in &mut w4 {
            let bytes: &mut [u8] = bytemuck::bytes_of_mut(w);
            bytes[4..].iter_mut().for_each(|b| *b = rng.u64() as u8);
        }
        for w in &mut w6 {
            let bytes: &mut [u8] = bytemuck::bytes_of_mut(w);
            bytes[..208].iter_mut().for_each(|b| *b = rng.u64() as u8);
        }
        for x in &mut xq {
            x.qs = core::array::from_fn(|_| rng.i8());
            set_bsums(x);
        }
    }
    Case { w4, w6, xq }
}

fn set_bsums(x: &mut BlockQ8_K) {
    for (s, q) in x.bsums.iter_mut().zip(x.qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| i16::from(v)).sum();
    }
}

/// Runs `b`'s batched products on `t` tokens with the weights `run` and
/// compares each token's output row bit for bit with the scalar GEMV of
/// that token on `want` (the same weights, unless a test corrupts one);
/// returns the first mismatch.
fn check(b: Backend, run: &Case, want: &Case, t: usize, rows: usize) -> Result<(), String> {
    let nb = want.xq.len() / t;
    let (mut got4, mut got6) = (vec![f32::NAN; t * rows], vec![f32::NAN; t * rows]);
    b.gemm_q4_k(&run.w4, &run.xq, t, &mut got4);
    b.gemm_q6_k(&run.w6, &run.xq, t, &mut got6);
    for i in 0..t {
        let x = &want.xq[i * nb..(i + 1) * nb];
        let (mut want4, mut want6) = (vec![0.0; rows], vec![0.0; rows]);
        kquant::gemv_q4_k(&want.w4, x, &mut want4);
        kquant::gemv_q6_k(&want.w6, x, &mut want6);
        for (what, got, want) in [("q4_k", &got4, &want4), ("q6_k", &got6, &want6)] {
            let got = &got[i * rows..(i + 1) * rows];
            if let Some(r) = (0..rows).find(|&r| got[r].to_bits() != want[r].to_bits()) {
                return Err(format!(
                    "{} gemm {what} t={t} rows={rows} super-blocks={nb} token {i} row {r}: got {} want {}",
                    b.name(),
                    got[r],
                    want[r]
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 96 }, ..ProptestConfig::default() })]

    /// Every backend (scalar included: the dispatch) against the scalar
    /// GEMV per token: tokens 1..=20 around the AVX2 kernel's 8-token
    /// groups (and its GEMV below 3), rows 1..=13 around its 4-row tiles,
    /// 1..=6 super-blocks.
    #[test]
    fn gemm_q4_k_and_q6_k_match_scalar_gemv_per_token_bit_for_bit_on_ragged_shapes(
        t in 1usize..=20,
        rows in 1usize..=13,
        nb in 1usize..=6,
        raw in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let c = case(seed, t, rows, nb, raw);
        for b in Backend::all_available() {
            check(b, &c, &c, t, rows).map_err(TestCaseError::fail)?;
        }
    }
}

/// Rows longer than the AVX2 kernel's 8-super-block panel (its sums carry
/// over through `y`): 9, 16 and 19 super-blocks, a full group and a
/// ragged one.
#[test]
fn gemm_k_matches_scalar_past_the_panel() {
    for (i, &nb) in [9, 16, 19].iter().enumerate() {
        for raw in [false, true] {
            let (t, rows) = (13, 6);
            let c = case(i as u64 + 7, t, rows, nb, raw);
            for b in Backend::all_available() {
                check(b, &c, &c, t, rows).unwrap();
            }
        }
    }
}

/// More tokens than one filled tile serves (8 groups of 8 in the AVX2 /
/// VNNI loop): a second batch of groups, ending in a group the batched
/// loop takes (67 = 8 x 8 + 3 for Q4_K) or the per-token GEMV (Q6_K's 3,
/// and 2 of 130 for both), over a row longer than one panel.
#[test]
fn gemm_k_matches_scalar_past_the_token_batch() {
    for (i, &t) in [67, 130].iter().enumerate() {
        let c = case(i as u64 + 41, t, 5, 9, i == 0);
        for b in Backend::all_available() {
            check(b, &c, &c, t, 5).unwrap();
        }
    }
}

/// Extreme bytes: every quant and scale at its largest (or Q6_K's
/// smallest scale), activations at -128 / 127 (the largest `maddubs` pairs
/// and i16 sums: no saturation, no wrap), and a mix per token.
#[test]
fn gemm_k_matches_scalar_on_extreme_bytes() {
    let one = f16::from_f32(1.0);
    let (t, rows, nb) = (9, 5, 2);
    for qs in [0xFFu8, 0x00, 0xA5] {
        for sc in [-128i8, 127] {
            let w4 = BlockQ4_K {
                d: one,
                dmin: one,
                scales: [0xFF; 12],
                qs: [qs; 128],
            };
            let w6 = BlockQ6_K {
                ql: [qs; 128],
                qh: [qs; 64],
                scales: [sc; 16],
                d: one,
            };
            let xq: Vec<BlockQ8_K> = (0..t * nb)
                .map(|i| {
                    let mut x = BlockQ8_K {
                        d: 1.0,
                        qs: [[-128, 127][i % 2]; QK_K],
                        bsums: [0; 16],
                    };
                    if i % 3 == 2 {
                        x.qs = core::array::from_fn(|e| if e % 2 == 0 { -128 } else { 127 });
                    }
                    set_bsums(&mut x);
                    x
                })
                .collect();
            let c = Case {
                w4: vec![w4; rows * nb],
                w6: vec![w6; rows * nb],
                xq,
            };
            for b in Backend::all_available() {
                check(b, &c, &c, t, rows).unwrap();
            }
        }
    }
}

/// The comparison can fail: a changed quant or scale in the last
/// super-block of the single row after a 4-row tile changes that row for
/// every token (the 8 of the first group and the lone ninth), and no
/// other row.
#[test]
fn gemm_k_check_rejects_a_corrupted_block() {
    let (t, rows, nb) = (9, 5, 3);
    // Uniform values, so that no sub-block's scale or activations
    // quantize to 0 and hide the change.
    let mut rng = Rng(41);
    let mut uniform = |n: usize| (0..n).map(|_| rng.f32()).collect::<Vec<_>>();
    let (w, x) = (uniform(rows * nb * QK_K), uniform(t * nb * QK_K));
    let mut want = Case {
        w4: vec![BlockQ4_K::default(); rows * nb],
        w6: vec![BlockQ6_K::default(); rows * nb],
        xq: vec![BlockQ8_K::default(); t * nb],
    };
    kquant::quantize_row_q4_k(&w, &mut want.w4);
    kquant::quantize_row_q6_k(&w, &mut want.w6);
    kquant::quantize_row_q8_k(&x, &mut want.xq);
    let blk = 4 * nb + 2; // row 4, last super-block
    for what in ["q", "scale"] {
        let mut bad = Case {
            w4: want.w4.clone(),
            w6: want.w6.clone(),
            xq: want.xq.clone(),
        };
        if what == "q" {
            bad.w4[blk].qs[7] ^= 0x08;
            bad.w6[blk].ql[7] ^= 0x08;
        } else {
            bad.w4[blk].scales[1] ^= 0x10;
            bad.w6[blk].scales[1] ^= 0x10;
        }
        for b in Backend::all_available() {
            assert!(
                check(b, &bad, &want, t, rows).is_err(),
                "{} {what}",
                b.name()
            );
            let mut y = [
                [vec![0.0; t * rows], vec![0.0; t * rows]],
                [vec![0.0; t * rows], vec![0.0; t * rows]],
            ];
            for (y, c) in y.iter_mut().zip([&want, &bad]) {
                b.gemm_q4_k(&c.w4, &c.xq, t, &mut y[0]);
                b.gemm_q6_k(&c.w6, &c.xq, t, &mut y[1]);
            }
            for k in 0..2 {
                for (i, r) in (0..t * rows).map(|i| (i / rows, i % rows)) {
                    let changed = y[0][k][i * rows + r] != y[1][k][i * rows + r];
                    assert_eq!(
                        changed,
                        r == 4,
                        "{} {what} q{}_k: token {i} row {r}",
                        b.name(),
                        [4, 6][k]
                    );
                }
            }
        }
    }
}

/// Rows past the NEON kernel's chunk of rows kept in L2 (128 KiB of
/// weights: 14 rows of 64 Q4_K super-blocks, 9 of Q6_K; 6 and 4 of 140):
/// several chunks and a ragged last one, with a full 8-token group and a
/// ragged one, and 4 tokens (one lane set) and 5 (two, the second
/// repeating its last token).
#[test]
fn gemm_k_matches_scalar_across_row_chunks() {
    for (i, &(t, rows, nb)) in [(11, 31, 64), (4, 15, 140), (5, 10, 140), (17, 20, 64)]
        .iter()
        .enumerate()
    {
        let c = case(i as u64 + 300, t, rows, nb, i % 2 == 1);
        for b in Backend::all_available() {
            check(b, &c, &c, t, rows).unwrap();
        }
    }
}

/// f16 weight scales at the edges (the largest, the smallest normal and
/// subnormal, negative, zero and -0) and activation scales per token
/// whose products underflow to subnormals or overflow to infinity (then
/// NaN): each (row, token) sum is the scalar GEMV's bits, infinities and
/// NaNs included, and the cases reach every class of f32 result.
#[test]
fn gemm_k_matches_scalar_bit_for_bit_on_hostile_scales() {
    let dxs = common::HOSTILE_DX;
    let (t, rows, nb) = (dxs.len(), 6, 3);
    let mut seen = Vec::new();
    for raw in [false, true] {
        let mut c = case(88, t, rows, nb, raw);
        for (i, (a, b)) in c.w4.iter_mut().zip(&mut c.w6).enumerate() {
            // Row 0: the smallest subnormal everywhere.
            let h = |k: usize| common::hostile_f16(if i < nb { 3 } else { i * 5 + k });
            (a.d, a.dmin, b.d) = (h(0), h(3), h(1));
        }
        // Token j: every block at dxs[j], but token 4's middle one at 1.
        for (k, x) in c.xq.iter_mut().enumerate() {
            let (j, b) = (k / nb, k % nb);
            x.d = if b == 1 && j == 4 { 1.0 } else { dxs[j] };
        }
        for b in Backend::all_available() {
            check(b, &c, &c, t, rows).unwrap();
        }
        let mut y = vec![0.0f32; t * rows];
        kquant::gemm_q4_k(&c.w4, &c.xq, t, &mut y);
        seen.extend(y.iter().map(|v| v.classify()));
        kquant::gemm_q6_k(&c.w6, &c.xq, t, &mut y);
        seen.extend(y.iter().map(|v| v.classify()));
    }
    common::assert_every_f32_class(&seen);
}

/// On aarch64 the batched products run on both NEON paths whenever the
/// CPU can: `neon` (`smull`) always, `neon-dotprod` (`sdot`) exactly when
/// the CPU has dotprod; each is checked bit for bit against the scalar
/// GEMV per token here on its own.
#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_gemm_k_runs_smull_always_and_sdot_when_the_cpu_has_dotprod() {
    let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
    assert_eq!(Backend::NeonDotprod.is_available(), dotprod);
    let mut paths = vec![Backend::Neon];
    if dotprod {
        paths.push(Backend::NeonDotprod);
    }
    let (t, rows, nb) = (10, 7, 3);
    let c = case(2025, t, rows, nb, true);
    for &b in &paths {
        check(b, &c, &c, t, rows).unwrap();
    }
    println!(
        "aarch64: K-quant GEMM paths tested bit for bit: {}",
        paths
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn gemm_k_with_no_super_blocks_is_zero_and_no_tokens_or_rows_is_nothing() {
    for b in Backend::all_available() {
        let mut y = [f32::NAN; 6];
        b.gemm_q4_k(&[], &[], 2, &mut y);
        assert_eq!(y, [0.0; 6], "{}", b.name());
        let mut y = [f32::NAN; 6];
        b.gemm_q6_k(&[], &[], 2, &mut y);
        assert_eq!(y, [0.0; 6], "{}", b.name());
        b.gemm_q4_k(&[BlockQ4_K::default(); 4], &[], 0, &mut []);
        b.gemm_q6_k(&[], &[], 0, &mut []);
        // No rows: 9 tokens of 2 super-blocks, nothing to write.
        let x = [BlockQ8_K::default(); 18];
        b.gemm_q4_k(&[], &x, 9, &mut []);
        b.gemm_q6_k(&[], &x, 9, &mut []);
    }
}

#[test]
fn gemm_k_panics_on_shapes_that_do_not_fit() {
    let x = [BlockQ8_K::default(); 4];
    let (w4, w6) = ([BlockQ4_K::default(); 6], [BlockQ6_K::default(); 6]);
    for b in Backend::all_available() {
        // 2 tokens of 2 super-blocks, 3 rows: fits.
        b.gemm_q4_k(&w4, &x, 2, &mut [0.0; 6]);
        b.gemm_q6_k(&w6, &x, 2, &mut [0.0; 6]);
        for (t, y) in [(2, 5), (3, 6), (2, 8), (0, 6)] {
            let r = std::panic::catch_unwind(|| b.gemm_q4_k(&w4, &x, t, &mut vec![0.0; y]));
            assert!(r.is_err(), "{} q4_k t={t} y={y}", b.name());
            let r = std::panic::catch_unwind(|| b.gemm_q6_k(&w6, &x, t, &mut vec![0.0; y]));
            assert!(r.is_err(), "{} q6_k t={t} y={y}", b.name());
        }
        let r = std::panic::catch_unwind(|| b.gemm_q4_k(&w4[..5], &x, 2, &mut [0.0; 6]));
        assert!(r.is_err(), "{}", b.name());
        let r = std::panic::catch_unwind(|| b.gemm_q6_k(&w6, &x[..3], 2, &mut [0.0; 6]));
        assert!(r.is_err(), "{}", b.name());
    }
}
