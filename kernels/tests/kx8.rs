//! Q4_K rows interleaved by 8: the repacking is lossless (every row comes
//! back byte for byte, dequantizes to the same values), and every
//! available backend's GEMV and batched product on the interleaved blocks
//! equals the plain Q4_K scalar GEMV on the original rows, bit for bit.

use proptest::prelude::*;
use tpi_kernels::kquant::{self, QK_K};
use tpi_kernels::kx8::{self, ROWS};
use tpi_kernels::{f16, Backend, BlockQ4_K, BlockQ4_Kx8, BlockQ8_K};

mod common;
use common::Rng;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// A Q4_K super-block: quantized from a row with magnitudes 1e-3..1e3, or
/// (raw) every byte after `d`/`dmin` random.
fn q4_block(rng: &mut Rng, raw: bool) -> BlockQ4_K {
    let mut b = [BlockQ4_K::default()];
    kquant::quantize_row_q4_k(&rng.row(QK_K), &mut b);
    if raw {
        let bytes: &mut [u8] = bytemuck::bytes_of_mut(&mut b[0]);
        bytes[4..].iter_mut().for_each(|v| *v = rng.u64() as u8);
    }
    b[0]
}

/// A Q8_K activation block with `bsums` the sums of its quants.
fn q8_block(rng: &mut Rng, raw: bool) -> BlockQ8_K {
    let mut b = [BlockQ8_K::default()];
    kquant::quantize_row_q8_k(&rng.row(QK_K), &mut b);
    if raw {
        b[0].qs = core::array::from_fn(|_| rng.i8());
        for (s, q) in b[0].bsums.iter_mut().zip(b[0].qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum();
        }
    }
    b[0]
}

fn case(seed: u64, rows: usize, nb: usize, raw: bool) -> (Vec<BlockQ4_K>, Vec<BlockQ8_K>) {
    let mut rng = Rng(seed | 1);
    let w = (0..rows * nb).map(|_| q4_block(&mut rng, raw)).collect();
    let x = (0..nb).map(|_| q8_block(&mut rng, raw)).collect();
    (w, x)
}

fn repack(w: &[BlockQ4_K], nb: usize) -> Vec<BlockQ4_Kx8> {
    let mut out = vec![BlockQ4_Kx8::default(); w.len() / ROWS];
    kx8::repack_q4_k_x8(w, nb, &mut out);
    out
}

/// Every backend's interleaved GEMV against the plain scalar GEMV.
fn check_gemv(w: &[BlockQ4_K], xq: &[BlockQ8_K]) {
    let nb = xq.len();
    let rows = w.len() / nb;
    let w8 = repack(w, nb);
    let mut want = vec![0.0; rows];
    kquant::gemv_q4_k(w, xq, &mut want);
    let mut twin = vec![f32::NAN; rows];
    kx8::gemv_q4_k_x8(&w8, xq, &mut twin);
    assert_eq!(bits(&twin), bits(&want), "scalar twin rows={rows} nb={nb}");
    for b in Backend::all_available() {
        let mut got = vec![f32::NAN; rows];
        b.gemv_q4_k_x8(&w8, xq, &mut got);
        if let Some(r) = (0..rows).find(|&r| got[r].to_bits() != want[r].to_bits()) {
            panic!(
                "{} rows={rows} nb={nb} row {r}: got {} want {}",
                b.name(),
                got[r],
                want[r]
            );
        }
    }
}

/// Every backend's interleaved batched product of `t` tokens against the
/// plain scalar GEMV of each token.
fn check_gemm(w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize) {
    let nb = xq.len() / t;
    let rows = w.len() / nb;
    let w8 = repack(w, nb);
    let mut want = vec![0.0; t * rows];
    for i in 0..t {
        kquant::gemv_q4_k(
            w,
            &xq[i * nb..(i + 1) * nb],
            &mut want[i * rows..(i + 1) * rows],
        );
    }
    for b in Backend::all_available() {
        let mut got = vec![f32::NAN; t * rows];
        b.gemm_q4_k_x8(&w8, xq, t, &mut got);
        assert_eq!(
            bits(&got),
            bits(&want),
            "{} gemm t={t} rows={rows} nb={nb}",
            b.name()
        );
    }
}

#[test]
fn repacking_keeps_every_row_byte_for_byte() {
    for (seed, raw) in [(1u64, true), (2, false), (3, true)] {
        let nb = 3;
        let (w, _) = case(seed, 16, nb, raw);
        let w8 = repack(&w, nb);
        for r in 0..16 {
            for b in 0..nb {
                let back = w8[r / ROWS * nb + b].row(r % ROWS);
                assert_eq!(back, w[r * nb + b], "row {r} super-block {b}");
            }
            let (mut want, mut got) = (vec![0.0; QK_K * nb], vec![1.0; QK_K * nb]);
            kquant::dequantize_row_q4_k(&w[r * nb..(r + 1) * nb], &mut want);
            kx8::dequantize_row_q4_k_x8(&w8, nb, r, &mut got);
            assert_eq!(bits(&got), bits(&want), "row {r} dequantized");
        }
    }
}

#[test]
fn interleaved_scales_are_the_packed_ones() {
    let mut rng = Rng(77);
    let w: Vec<BlockQ4_K> = (0..ROWS).map(|_| q4_block(&mut rng, true)).collect();
    let w8 = repack(&w, 1);
    for (r, b) in w.iter().enumerate() {
        for s in 0..8 {
            assert_eq!(
                w8[0].scale_min(r, s),
                b.scale_min(s),
                "row {r} sub-block {s}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 64 }, ..ProptestConfig::default() })]

    /// Groups 1..=5 (8..=40 rows) and 1..=6 super-blocks, raw or quantized.
    #[test]
    fn gemv_matches_plain_q4_k_bit_for_bit(
        groups in 1usize..=5,
        nb in 1usize..=6,
        raw in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (w, x) = case(seed, ROWS * groups, nb, raw);
        check_gemv(&w, &x);
    }

    /// 1..=5 tokens on 1..=3 groups.
    #[test]
    fn gemm_matches_plain_q4_k_per_token(
        groups in 1usize..=3,
        nb in 1usize..=4,
        t in 1usize..=5,
        seed in any::<u64>(),
    ) {
        let (w, _) = case(seed, ROWS * groups, nb, true);
        let mut rng = Rng(seed ^ 0x5a5a | 1);
        let x: Vec<BlockQ8_K> = (0..t * nb).map(|_| q8_block(&mut rng, seed % 2 == 0)).collect();
        check_gemm(&w, &x, t);
    }
}

/// Every nibble and 6-bit scale at its largest against activations of
/// -128 / 127 (the largest products: no i16 overflow in the AVX2 sums),
/// and rows longer than a prefetch distance.
#[test]
fn gemv_matches_on_extreme_bytes_and_long_rows() {
    let one = f16::from_f32(1.0);
    for (qs, act) in [(0xFFu8, -128i8), (0xFF, 127), (0x00, -128), (0xA5, 127)] {
        let w = BlockQ4_K {
            d: one,
            dmin: one,
            scales: [0xFF; 12],
            qs: [qs; 128],
        };
        let x = BlockQ8_K {
            d: 1.0,
            qs: [act; QK_K],
            bsums: [16 * i16::from(act); 16],
        };
        check_gemv(&[w; 2 * ROWS], &[x]);
        check_gemm(&[w; ROWS], &[x, x, x], 3);
    }
    let (w, x) = case(99, 2 * ROWS, 70, true);
    check_gemv(&w, &x);
}

/// f16 scales at the edges and activation scales whose products underflow
/// or overflow: the same f32 operations in the same order, so the same
/// bits, infinities and NaNs included.
#[test]
fn gemv_matches_on_hostile_scales() {
    let nb = 3;
    for (c, &dx) in common::HOSTILE_DX.iter().enumerate() {
        let (mut w, mut x) = case(500 + c as u64, ROWS, nb, true);
        for (i, b) in w.iter_mut().enumerate() {
            b.d = common::hostile_f16(i + c);
            b.dmin = common::hostile_f16(i + 2 * c + 1);
        }
        x.iter_mut().for_each(|b| b.d = dx);
        check_gemv(&w, &x);
    }
}

#[test]
fn empty_rows_and_zero_super_blocks() {
    for b in Backend::all_available() {
        let mut y = [1.0f32; ROWS];
        b.gemv_q4_k_x8(&[], &[], &mut y);
        assert_eq!(y, [0.0; ROWS], "{}", b.name());
        let mut y: [f32; 0] = [];
        b.gemv_q4_k_x8(&[], &[q8_block(&mut Rng(3), false)], &mut y);
    }
}

#[test]
#[should_panic(expected = "gemv_q4_k_x8")]
fn rows_not_a_multiple_of_8_panic() {
    let (w, x) = case(5, ROWS, 1, false);
    let w8 = repack(&w, 1);
    let mut y = [0.0f32; 7];
    Backend::detect().gemv_q4_k_x8(&w8, &x, &mut y);
}
