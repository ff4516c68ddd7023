//! Q4_K / Q6_K / Q8_K: the byte layout, the quantizers byte for byte and
//! the dequantizers bit for bit against ggml (through the fixture of
//! `tools/kquant_fixture.py`), the scalar block dot products against an
//! f64 oracle, and every available backend's GEMV against the scalar twin
//! bit for bit on ragged shapes.

use proptest::prelude::*;
use tpi_kernels::kquant::{self, QK_K};
use tpi_kernels::{f16, Backend, BlockQ4_K, BlockQ6_K, BlockQ8_K};

mod common;
use common::Rng;

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

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Index and both values of the first differing element, if any.
fn first_mismatch<T: PartialEq + Copy>(a: &[T], b: &[T]) -> Option<(usize, T, T)> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| (i, a[i], b[i]))
}

/// Blocks read from bytes of any alignment.
fn blocks<B: bytemuck::Pod>(bytes: &[u8]) -> Vec<B> {
    bytes
        .chunks_exact(size_of::<B>())
        .map(bytemuck::pod_read_unaligned)
        .collect()
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/kquant.json")).unwrap()
}

fn q4_k(x: &[f32]) -> Vec<BlockQ4_K> {
    let mut b = vec![BlockQ4_K::default(); x.len() / QK_K];
    kquant::quantize_row_q4_k(x, &mut b);
    b
}

fn q6_k(x: &[f32]) -> Vec<BlockQ6_K> {
    let mut b = vec![BlockQ6_K::default(); x.len() / QK_K];
    kquant::quantize_row_q6_k(x, &mut b);
    b
}

fn q8_k(x: &[f32]) -> Vec<BlockQ8_K> {
    let mut b = vec![BlockQ8_K::default(); x.len() / QK_K];
    kquant::quantize_row_q8_k(x, &mut b);
    b
}

#[test]
fn blocks_have_ggml_sizes_offsets_and_cast_from_bytes() {
    use core::mem::offset_of;
    assert_eq!(size_of::<BlockQ4_K>(), 144);
    assert_eq!(size_of::<BlockQ6_K>(), 210);
    assert_eq!(size_of::<BlockQ8_K>(), 292);
    assert_eq!(
        [
            offset_of!(BlockQ4_K, d),
            offset_of!(BlockQ4_K, dmin),
            offset_of!(BlockQ4_K, scales),
            offset_of!(BlockQ4_K, qs)
        ],
        [0, 2, 4, 16]
    );
    assert_eq!(
        [
            offset_of!(BlockQ6_K, ql),
            offset_of!(BlockQ6_K, qh),
            offset_of!(BlockQ6_K, scales),
            offset_of!(BlockQ6_K, d)
        ],
        [0, 128, 192, 208]
    );
    assert_eq!(
        [
            offset_of!(BlockQ8_K, d),
            offset_of!(BlockQ8_K, qs),
            offset_of!(BlockQ8_K, bsums)
        ],
        [0, 4, 260]
    );
    // A mapped GGUF tensor is a byte slice: two Q4_K and two Q6_K blocks
    // cast in place (the backing u32s give the 2-byte alignment of f16).
    let fx = fixture();
    let row = &fx["rows"][1];
    assert_eq!(row["n"].as_u64(), Some(512));
    for (key, size) in [("q4_k", 144), ("q6_k", 210), ("q8_k", 292)] {
        let raw = hex(row[key].as_str().unwrap());
        assert_eq!(raw.len(), 2 * size);
        let mut store = vec![0u32; raw.len().div_ceil(4)];
        let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut store)[..raw.len()];
        bytes.copy_from_slice(&raw);
        let bytes: &[u8] = bytes;
        match key {
            "q4_k" => {
                let b: &[BlockQ4_K] = bytemuck::try_cast_slice(bytes).unwrap();
                assert_eq!(b[1].d.to_bits().to_le_bytes(), raw[144..146]);
                assert_eq!(b[1].dmin.to_bits().to_le_bytes(), raw[146..148]);
                assert_eq!(b[1].scales, raw[148..160]);
                assert_eq!(b[1].qs[127], raw[287]);
            }
            "q6_k" => {
                let b: &[BlockQ6_K] = bytemuck::try_cast_slice(bytes).unwrap();
                assert_eq!(b[1].ql[0], raw[210]);
                assert_eq!(b[1].qh[0], raw[210 + 128]);
                assert_eq!(b[1].scales[15] as u8, raw[210 + 207]);
                assert_eq!(b[1].d.to_bits().to_le_bytes(), raw[418..420]);
            }
            _ => {
                let b: &[BlockQ8_K] = bytemuck::try_cast_slice(bytes).unwrap();
                assert_eq!(b[1].d.to_le_bytes(), raw[292..296]);
                assert_eq!(b[1].bsums[15].to_le_bytes(), raw[582..584]);
            }
        }
    }
}

#[test]
fn quantizers_match_ggml_bytes() {
    let fx = fixture();
    let rows = fx["rows"].as_array().unwrap();
    assert!(rows.len() >= 10);
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let x = f32s(row["x"].as_str().unwrap());
        assert_eq!(x.len() as u64, row["n"].as_u64().unwrap(), "{name}");
        let got: [(&str, Vec<u8>, usize); 3] = [
            ("q4_k", bytemuck::cast_slice(&q4_k(&x)).to_vec(), 144),
            ("q6_k", bytemuck::cast_slice(&q6_k(&x)).to_vec(), 210),
            ("q8_k", bytemuck::cast_slice(&q8_k(&x)).to_vec(), 292),
        ];
        for (key, got, size) in got {
            let want = hex(row[key].as_str().unwrap());
            assert_eq!(got.len(), want.len(), "{name} {key}");
            if let Some((i, g, w)) = first_mismatch(&got, &want) {
                panic!(
                    "{name} {key}: byte {i} (block {}, offset {}) got {g:#04x} want {w:#04x}",
                    i / size,
                    i % size
                );
            }
        }
    }
}

#[test]
fn dequantizers_match_gguf_bit_for_bit() {
    let fx = fixture();
    let cases = fx["blocks"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for case in cases {
        let (kind, name) = (
            case["type"].as_str().unwrap(),
            case["name"].as_str().unwrap(),
        );
        let raw = hex(case["bytes"].as_str().unwrap());
        let want = f32s(case["deq"].as_str().unwrap());
        let mut got = vec![f32::NAN; QK_K];
        match kind {
            "q4_k" => kquant::dequantize_row_q4_k(&blocks(&raw), &mut got),
            _ => kquant::dequantize_row_q6_k(&blocks(&raw), &mut got),
        }
        if let Some((i, g, w)) = first_mismatch(&bits(&got), &bits(&want)) {
            panic!(
                "{kind} {name}: element {i} got {} ({g:#x}) want {} ({w:#x})",
                f32::from_bits(g),
                f32::from_bits(w)
            );
        }
    }
}

/// Per super-block, the sum of |terms| of the exact product: for Q4_K
/// `sum_e (|d sc q_e| + |dmin m|) |d_x qx_e|`, for Q6_K
/// `sum_e |d sc (q_e - 32) d_x qx_e|` (f64).
fn abs_q4_k(w: &BlockQ4_K, x: &BlockQ8_K) -> f64 {
    let (d, dmin, dx) = (w.d.to_f64(), w.dmin.to_f64(), f64::from(x.d));
    (0..QK_K)
        .map(|e| {
            let (sc, m) = w.scale_min(e / 32);
            let wv = (d * f64::from(sc) * f64::from(w.q(e))).abs() + (dmin * f64::from(m)).abs();
            wv * (dx * f64::from(x.qs[e])).abs()
        })
        .sum()
}

fn abs_q6_k(w: &BlockQ6_K, x: &BlockQ8_K) -> f64 {
    let (d, dx) = (w.d.to_f64(), f64::from(x.d));
    (0..QK_K)
        .map(|e| {
            (d * f64::from(w.scales[e / 16]) * f64::from(w.get(e)) * dx * f64::from(x.qs[e])).abs()
        })
        .sum()
}

/// f64 sum of the dequantized products (weights and activations each
/// dequantized in f32, as ggml does).
fn oracle(wd: &[f32], x: &BlockQ8_K) -> f64 {
    let mut xd = [0.0f32; QK_K];
    kquant::dequantize_row_q8_k(core::slice::from_ref(x), &mut xd);
    wd.iter()
        .zip(&xd)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

/// The bound of the block dot against [`oracle`], with `u = 2^-24`:
/// - the dot: `d_w d_x` rounds (u), `f32(isum)` rounds once `|isum| >=
///   2^24` (u), the product (u), for each of the two terms; the final
///   subtraction (u of the result): `<= 4u S`;
/// - the oracle: a Q4_K weight `(d sc) q - dmin m` is exact up to the
///   subtraction (`d sc`, `(d sc) q` and `dmin m` have at most 21
///   significant bits), a Q6_K weight rounds once in `(d sc) q`, each
///   activation `d_x q` rounds once, the f64 sum is exact to 2^-45:
///   `<= 2u S`.
///
/// So `6u S`, written `8u S` for margin, plus the smallest normal f32 for
/// products that underflow.
fn dot_close(got: f32, want: f64, s: f64) -> bool {
    (f64::from(got) - want).abs() <= 8.0 * f64::from(f32::EPSILON) / 2.0 * s + 1e-38
}

/// Random weights: any byte (raw) or quantized from a random row; random
/// activations: quantized, or raw bytes with consistent `bsums`.
fn random_case(rng: &mut Rng, raw: bool) -> (BlockQ4_K, BlockQ6_K, BlockQ8_K) {
    let x = rng_row(rng, QK_K);
    let (mut w4, mut w6) = (q4_k(&x)[0], q6_k(&x)[0]);
    if raw {
        let bytes4: &mut [u8] = bytemuck::bytes_of_mut(&mut w4);
        bytes4[4..].iter_mut().for_each(|b| *b = rng.u64() as u8);
        let bytes6: &mut [u8] = bytemuck::bytes_of_mut(&mut w6);
        bytes6[..208].iter_mut().for_each(|b| *b = rng.u64() as u8);
    }
    let mut xq = q8_k(&rng_row(rng, QK_K))[0];
    if raw {
        xq.qs = core::array::from_fn(|_| rng.i8());
        for (s, q) in xq.bsums.iter_mut().zip(xq.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum();
        }
    }
    (w4, w6, xq)
}

/// A row whose 32-blocks have magnitudes from 1e-3 to 1e3.
fn rng_row(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.row(n)
}

#[test]
fn scalar_block_dot_matches_f64_of_dequantized_values() {
    let mut rng = Rng(0x51);
    for i in 0..2000 {
        let (w4, w6, xq) = random_case(&mut rng, i % 2 == 0);
        let mut wd = [0.0f32; QK_K];
        kquant::dequantize_row_q4_k(&[w4], &mut wd);
        let (got, want, s) = (
            kquant::block_dot_q4_k_q8_k(&w4, &xq),
            oracle(&wd, &xq),
            abs_q4_k(&w4, &xq),
        );
        assert!(
            dot_close(got, want, s),
            "q4_k case {i}: got {got} want {want} (sum |terms| {s})"
        );
        kquant::dequantize_row_q6_k(&[w6], &mut wd);
        let (got, want, s) = (
            kquant::block_dot_q6_k_q8_k(&w6, &xq),
            oracle(&wd, &xq),
            abs_q6_k(&w6, &xq),
        );
        assert!(
            dot_close(got, want, s),
            "q6_k case {i}: got {got} want {want} (sum |terms| {s})"
        );
    }
}

/// ggml's generic dot product scales 8 partial lanes apart; both it and
/// ours are within a few `u S` of the exact value, so within `16u S` of
/// each other (with S from the ggml-made blocks).
#[test]
fn block_dot_matches_ggml_generic_dot_on_the_fixture() {
    let fx = fixture();
    let rows = fx["rows"].as_array().unwrap();
    for (i, row) in rows.iter().enumerate() {
        let name = row["name"].as_str().unwrap();
        let n = row["n"].as_u64().unwrap();
        let next = rows[i + 1..]
            .iter()
            .find(|r| r["n"].as_u64() == Some(n))
            .unwrap_or(row);
        let xq: Vec<BlockQ8_K> = blocks(&hex(next["q8_k"].as_str().unwrap()));
        let w4: Vec<BlockQ4_K> = blocks(&hex(row["q4_k"].as_str().unwrap()));
        let w6: Vec<BlockQ6_K> = blocks(&hex(row["q6_k"].as_str().unwrap()));
        let want4 = f32s(row["dot_q4_k"].as_str().unwrap())[0];
        let want6 = f32s(row["dot_q6_k"].as_str().unwrap())[0];
        let u = f64::from(f32::EPSILON) / 2.0;
        let (mut y4, mut y6) = ([f32::NAN], [f32::NAN]);
        kquant::gemv_q4_k(&w4, &xq, &mut y4);
        kquant::gemv_q6_k(&w6, &xq, &mut y6);
        let s4: f64 = w4.iter().zip(&xq).map(|(w, x)| abs_q4_k(w, x)).sum();
        let s6: f64 = w6.iter().zip(&xq).map(|(w, x)| abs_q6_k(w, x)).sum();
        assert!(
            (f64::from(y4[0]) - f64::from(want4)).abs() <= 16.0 * u * s4 + 1e-38,
            "{name} q4_k: got {} ggml {want4} (sum |terms| {s4})",
            y4[0]
        );
        assert!(
            (f64::from(y6[0]) - f64::from(want6)).abs() <= 16.0 * u * s6 + 1e-38,
            "{name} q6_k: got {} ggml {want6} (sum |terms| {s6})",
            y6[0]
        );
    }
}

/// The packed-u32 unpacking the SIMD paths use agrees with ggml's
/// `get_scale_min_k4` form, for any 12 bytes.
#[test]
fn q4_k_scales_mins_unpacks_as_get_scale_min_k4() {
    let mut rng = Rng(77);
    for _ in 0..5000 {
        let b = BlockQ4_K {
            scales: core::array::from_fn(|_| rng.u64() as u8),
            ..Default::default()
        };
        let sm = b.scales_mins();
        for s in 0..8 {
            assert_eq!((sm[s], sm[8 + s]), b.scale_min(s), "{:?} s={s}", b.scales);
        }
    }
}

/// Hand check of the element order of both formats.
#[test]
fn element_order_is_ggml_s() {
    let mut b = BlockQ4_K::default();
    b.qs[0] = 0x21; // element 0: 1, element 32: 2
    b.qs[32] = 0x43; // element 64: 3, element 96: 4
    b.qs[127] = 0x65; // element 223: 5, element 255: 6
    for (e, q) in [
        (0, 1),
        (32, 2),
        (64, 3),
        (96, 4),
        (223, 5),
        (255, 6),
        (1, 0),
    ] {
        assert_eq!(b.q(e), q, "q4_k element {e}");
    }
    let mut b = BlockQ6_K::default();
    b.ql[0] = 0x21; // elements 0 (low) and 64 (high)
    b.ql[32] = 0x43; // elements 32 and 96
    b.qh[0] = 0b11_10_01_00; // high bits of elements 0, 32, 64, 96
    b.ql[64 + 31] = 0xf0; // element 128 + 31 low 0, element 128 + 64 + 31 high 15
    b.qh[32 + 31] = 0b01_00_10_00;
    for (e, q) in [
        (0, 1),
        (32, 16 + 3),
        (64, 32 + 2),
        (96, 48 + 4),
        (159, 0),
        (191, 32),
        (223, 15),
        (255, 16),
    ] {
        assert_eq!(i32::from(b.get(e)), q - 32, "q6_k element {e}");
    }
}

#[test]
fn q8_k_bsums_are_the_sums_of_16_and_quants_stay_in_range() {
    let mut rng = Rng(3);
    let x: Vec<f32> = (0..8 * QK_K).map(|_| rng.f32() * 1e3).collect();
    for b in q8_k(&x) {
        for (s, q) in b.bsums.iter().zip(b.qs.chunks_exact(16)) {
            assert_eq!(i32::from(*s), q.iter().map(|&v| i32::from(v)).sum::<i32>());
        }
        assert!(b.qs.iter().all(|&q| q >= -127));
        assert!(b.qs.contains(&-127));
    }
}

/// Quantize then dequantize: the normalized error (`mse(x, y) / mse(x, 0)`)
/// of the formats on near-Gaussian data (sums of 4 uniforms): measured
/// Q4_K 4.7e-3, Q6_K 2.9e-4, Q8_K 3.8e-5; the bounds leave 1.7x or more.
#[test]
fn quantize_then_dequantize_has_the_formats_error() {
    let mut rng = Rng(11);
    let n = 64 * QK_K;
    let x: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| rng.f32()).sum::<f32>())
        .collect();
    let nmse = |y: &[f32]| {
        let err: f64 = x
            .iter()
            .zip(y)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        err / x.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>()
    };
    let mut y = vec![0.0; n];
    kquant::dequantize_row_q4_k(&q4_k(&x), &mut y);
    let e4 = nmse(&y);
    kquant::dequantize_row_q6_k(&q6_k(&x), &mut y);
    let e6 = nmse(&y);
    kquant::dequantize_row_q8_k(&q8_k(&x), &mut y);
    let e8 = nmse(&y);
    println!("nmse q4_k {e4:.2e} q6_k {e6:.2e} q8_k {e8:.2e}");
    assert!(e4 < 8e-3 && e6 < 5e-4 && e8 < 1e-4, "{e4} {e6} {e8}");
}

/// Runs every available backend's GEMV on `rows x nb` super-blocks and
/// compares the outputs bit for bit with the scalar twin: the SIMD paths
/// compute the same exact i32 sums per super-block and then the twin's
/// f32 operations in its order (see `kquant`), so the tolerance is zero.
fn check_backends(w4: &[BlockQ4_K], w6: &[BlockQ6_K], xq: &[BlockQ8_K], rows: usize) {
    let (mut want4, mut want6) = (vec![0.0; rows], vec![0.0; rows]);
    kquant::gemv_q4_k(w4, xq, &mut want4);
    kquant::gemv_q6_k(w6, xq, &mut want6);
    for b in Backend::all_available() {
        let (mut got4, mut got6) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
        b.gemv_q4_k(w4, xq, &mut got4);
        b.gemv_q6_k(w6, xq, &mut got6);
        for (what, got, want) in [("q4_k", &got4, &want4), ("q6_k", &got6, &want6)] {
            if let Some((r, g, w)) = first_mismatch(&bits(got), &bits(want)) {
                panic!(
                    "{} {what} rows={rows} super-blocks={} row {r}: got {} want {}",
                    b.name(),
                    xq.len(),
                    f32::from_bits(g),
                    f32::from_bits(w)
                );
            }
        }
    }
}

/// Weights and activations for a ragged shape: raw random bytes (any
/// nibble, scale and f16 bits of a finite scale) or quantized rows.
fn ragged_case(
    seed: u64,
    rows: usize,
    nb: usize,
    raw: bool,
) -> (Vec<BlockQ4_K>, Vec<BlockQ6_K>, Vec<BlockQ8_K>) {
    let mut rng = Rng(seed | 1);
    let (mut w4, mut w6, mut xq) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rows * nb {
        let (a, b, _) = random_case(&mut rng, raw);
        w4.push(a);
        w6.push(b);
    }
    for _ in 0..nb {
        xq.push(random_case(&mut rng, raw).2);
    }
    (w4, w6, xq)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 96 }, ..ProptestConfig::default() })]

    /// Every backend (scalar included: the dispatch) against the scalar
    /// twin, rows 1..=13 and 1..=6 super-blocks.
    #[test]
    fn gemv_q4_k_and_q6_k_match_scalar_bit_for_bit_on_ragged_shapes(
        rows in 1usize..=13,
        nb in 1usize..=6,
        raw in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (w4, w6, xq) = ragged_case(seed, rows, nb, raw);
        check_backends(&w4, &w6, &xq, rows);
    }
}

/// Extreme bytes: every quant and scale at its largest, activations at
/// -128 / 127 (the largest `maddubs` pairs: no saturation), and a long
/// row past the prefetch distance.
#[test]
fn gemv_k_matches_scalar_on_extreme_bytes_and_long_rows() {
    let one = f16::from_f32(1.0);
    for (qs, act) in [(0xFFu8, -128i8), (0xFF, 127), (0x00, -128), (0xA5, 127)] {
        let w4 = BlockQ4_K {
            d: one,
            dmin: one,
            scales: [0xFF; 12],
            qs: [qs; 128],
        };
        for sc in [-128i8, 127] {
            let w6 = BlockQ6_K {
                ql: [qs; 128],
                qh: [qs; 64],
                scales: [sc; 16],
                d: one,
            };
            let mut xq = BlockQ8_K {
                d: 1.0,
                qs: [act; QK_K],
                bsums: [0; 16],
            };
            xq.bsums = [16 * i16::from(act); 16];
            check_backends(&[w4; 3], &[w6; 3], &[xq], 3);
            // With unit scales the GEMV is the integers themselves.
            let mut y = [0.0f32; 1];
            kquant::gemv_q6_k(&[w6], &[xq], &mut y);
            assert_eq!(y[0], kquant::block_sum_q6_k(&w6, &xq) as f32);
        }
    }
    let (w4, w6, xq) = ragged_case(99, 3, 70, true);
    check_backends(&w4, &w6, &xq, 3);
}

/// Row counts past the ragged proptest's 13: whole and partial 4-row
/// blocks of the NEON GEMV (lane = row) and the AVX2 row loop, with one
/// super-block, a few, and more than a prefetch distance.
#[test]
fn gemv_k_matches_scalar_on_more_row_counts() {
    for (i, &rows) in [4, 5, 6, 7, 8, 16, 17, 18, 19, 33].iter().enumerate() {
        for (k, &nb) in [1, 2, 7, 31].iter().enumerate() {
            let raw = (i + k) % 2 == 0;
            let (w4, w6, xq) = ragged_case(1000 + 10 * i as u64 + k as u64, rows, nb, raw);
            check_backends(&w4, &w6, &xq, rows);
        }
    }
}

/// f16 weight scales at the edges (the largest, the smallest normal and
/// subnormal, negative, zero and -0) and activation scales whose products
/// underflow to subnormals or overflow to infinity (then NaN against a
/// zero sum, or `inf - inf`): every backend runs the twin's f32
/// operations in its order on the same exact integers, without FMA and
/// without flushing subnormals, so the bits are the same, infinities and
/// NaNs included.
#[test]
fn gemv_k_matches_scalar_bit_for_bit_on_hostile_scales() {
    let (rows, nb) = (6, 3);
    let mut seen = Vec::new();
    for (c, &dx) in common::HOSTILE_DX.iter().enumerate() {
        for raw in [false, true] {
            let (mut w4, mut w6, mut xq) = ragged_case(77 + c as u64, rows, nb, raw);
            for (i, (a, b)) in w4.iter_mut().zip(&mut w6).enumerate() {
                let h = |k: usize| common::hostile_f16(i * 5 + k + c);
                (a.d, a.dmin, b.d) = (h(0), h(3), h(1));
            }
            for (j, x) in xq.iter_mut().enumerate() {
                x.d = if j == 1 && c % 2 == 0 { 1.0 } else { dx };
            }
            check_backends(&w4, &w6, &xq, rows);
            let mut y = vec![0.0f32; rows];
            kquant::gemv_q4_k(&w4, &xq, &mut y);
            seen.extend(y.iter().map(|v| v.classify()));
            kquant::gemv_q6_k(&w6, &xq, &mut y);
            seen.extend(y.iter().map(|v| v.classify()));
        }
    }
    common::assert_every_f32_class(&seen);
    // All-zero activations: every sum is 0 and meets `inf` scales.
    let (mut w4, mut w6, mut xq) = ragged_case(5, 5, 2, true);
    for (a, b) in w4.iter_mut().zip(&mut w6) {
        let h = common::hostile_f16;
        (a.d, a.dmin, b.d) = (h(0), h(1), h(0));
    }
    for x in &mut xq {
        *x = BlockQ8_K {
            d: f32::MAX,
            ..Default::default()
        };
    }
    check_backends(&w4, &w6, &xq, 5);
}

/// On aarch64 the K-quant GEMV runs on both NEON paths whenever the CPU
/// can: `neon` (`smull`) always, `neon-dotprod` (`sdot`) exactly when the
/// CPU has dotprod; each is checked bit for bit against the scalar twin
/// here on its own (the other tests go through `all_available`).
#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_k_quants_run_smull_always_and_sdot_when_the_cpu_has_dotprod() {
    let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
    let mut paths = vec![Backend::Neon];
    if dotprod {
        paths.push(Backend::NeonDotprod);
    }
    for &b in &paths {
        assert!(b.is_available(), "{}", b.name());
    }
    assert_eq!(Backend::NeonDotprod.is_available(), dotprod);
    let (w4, w6, xq) = ragged_case(2024, 7, 5, true);
    let (mut want4, mut want6) = ([0.0; 7], [0.0; 7]);
    kquant::gemv_q4_k(&w4, &xq, &mut want4);
    kquant::gemv_q6_k(&w6, &xq, &mut want6);
    for &b in &paths {
        let (mut got4, mut got6) = ([f32::NAN; 7], [f32::NAN; 7]);
        b.gemv_q4_k(&w4, &xq, &mut got4);
        b.gemv_q6_k(&w6, &xq, &mut got6);
        assert_eq!(bits(&got4), bits(&want4), "{} q4_k", b.name());
        assert_eq!(bits(&got6), bits(&want6), "{} q6_k", b.name());
    }
    println!(
        "aarch64: K-quant GEMV paths tested bit for bit: {}",
        paths
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn gemv_k_with_no_super_blocks_is_zero() {
    for b in Backend::all_available() {
        let mut y = [f32::NAN; 3];
        b.gemv_q4_k(&[], &[], &mut y);
        assert_eq!(y, [0.0; 3]);
        let mut y = [f32::NAN; 3];
        b.gemv_q6_k(&[], &[], &mut y);
        assert_eq!(y, [0.0; 3]);
    }
}

/// The comparison can fail: a changed quant or scale in the last
/// super-block of a row is seen on every backend.
#[test]
fn gemv_k_check_rejects_a_corrupted_block() {
    let (w4, w6, xq) = ragged_case(5, 2, 3, false);
    let (mut want4, mut want6) = ([0.0; 2], [0.0; 2]);
    kquant::gemv_q4_k(&w4, &xq, &mut want4);
    kquant::gemv_q6_k(&w6, &xq, &mut want6);
    for b in Backend::all_available() {
        for what in ["q", "scale"] {
            let (mut bad4, mut bad6) = (w4.clone(), w6.clone());
            if what == "q" {
                bad4[5].qs[7] ^= 0x08;
                bad6[5].ql[7] ^= 0x08;
            } else {
                bad4[5].scales[1] ^= 0x10;
                bad6[5].scales[1] ^= 0x10;
            }
            let (mut got4, mut got6) = ([0.0; 2], [0.0; 2]);
            b.gemv_q4_k(&bad4, &xq, &mut got4);
            b.gemv_q6_k(&bad6, &xq, &mut got6);
            assert_eq!(got4[0], want4[0], "{} row 0 untouched", b.name());
            assert_ne!(got4[1], want4[1], "{} q4_k {what}", b.name());
            assert_ne!(got6[1], want6[1], "{} q6_k {what}", b.name());
        }
    }
}

#[test]
fn gemv_k_panics_on_wrong_weight_shape() {
    for b in Backend::all_available() {
        let r = std::panic::catch_unwind(|| {
            b.gemv_q4_k(
                &[BlockQ4_K::default(); 3],
                &[BlockQ8_K::default(); 2],
                &mut [0.0; 2],
            )
        });
        assert!(r.is_err(), "{}", b.name());
        let r = std::panic::catch_unwind(|| {
            b.gemv_q6_k(
                &[BlockQ6_K::default(); 5],
                &[BlockQ8_K::default(); 2],
                &mut [0.0; 2],
            )
        });
        assert!(r.is_err(), "{}", b.name());
    }
}

#[test]
fn quantize_k_panics_on_a_length_that_is_not_whole_super_blocks() {
    let r = std::panic::catch_unwind(|| q8_k(&[0.0; 257]));
    assert!(r.is_err());
    let r = std::panic::catch_unwind(|| {
        kquant::quantize_row_q4_k(&[0.0; 255], &mut [BlockQ4_K::default(); 1])
    });
    assert!(r.is_err());
    let r = std::panic::catch_unwind(|| {
        kquant::quantize_row_q6_k(&[0.0; 512], &mut [BlockQ6_K::default(); 1])
    });
    assert!(r.is_err());
}

/// Extreme bytes that differ per position, so that a lane or scale taken
/// from the wrong place shows (the AVX-512 kernels hold 64 weights and
/// two or four sub-block scales per register): activations -128 / 127
/// by a pattern, quants 0 / 15 (Q4_K) and 0 / 63 (Q6_K) by another,
/// sub-block scales at their largest or their smallest per sub-block,
/// on row counts 1..=9.
#[test]
fn gemv_k_matches_scalar_on_mixed_extreme_bytes() {
    let one = f16::from_f32(1.0);
    let mut rng = Rng(2026);
    let mut pick = |a: u8, b: u8| if rng.u64().is_multiple_of(2) { a } else { b };
    for rows in 1..=9 {
        let nb = 2;
        let (mut w4, mut w6) = (Vec::new(), Vec::new());
        for _ in 0..rows * nb {
            w4.push(BlockQ4_K {
                d: one,
                dmin: one,
                scales: core::array::from_fn(|_| pick(0xFF, 0x00)),
                qs: core::array::from_fn(|_| pick(0xF0, 0x0F)),
            });
            w6.push(BlockQ6_K {
                ql: core::array::from_fn(|_| pick(0xF0, 0x0F)),
                qh: core::array::from_fn(|_| pick(0xCC, 0x33)),
                scales: core::array::from_fn(|_| pick(0x80, 0x7F) as i8),
                d: one,
            });
        }
        let xq: Vec<BlockQ8_K> = (0..nb)
            .map(|_| {
                let mut x = BlockQ8_K {
                    d: 1.0,
                    qs: core::array::from_fn(|_| pick(0x80, 0x7F) as i8),
                    bsums: [0; 16],
                };
                for (s, q) in x.bsums.iter_mut().zip(x.qs.chunks_exact(16)) {
                    *s = q.iter().map(|&v| i16::from(v)).sum();
                }
                x
            })
            .collect();
        check_backends(&w4, &w6, &xq, rows);
    }
}
