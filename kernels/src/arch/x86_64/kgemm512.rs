//! Q4_K / Q6_K GEMM for a batch of tokens on AVX-512 VNNI: the loop and
//! layout of `kgemm.rs` (8 tokens per ymm lane set, each weight 4-byte
//! group broadcast), with `vpdpbusd` on ymm (AVX512_VNNI + VL) summing
//! each group's 4 products into i32 in one instruction, where AVX2 needs
//! `vpmaddubsw`, an i16 add and, per sub-block, `vpmaddwd`.
//!
//! ```text
//! per tile of R rows, super-block b of the panel (as kgemm.rs):
//!   Q4_K: for s in 0..8 (sub-blocks of 32):
//!           i32[r] = sum_{k in s} dpbusd(splat q[r][b][k], X[b][k])   (|.| <= 32 * 15 * 128 < 2^16)
//!           isum[r] += mullo(i32[r], splat sc[s])                     (i32 scale, `vpmulld`)
//!         msum, acc: as kgemm.rs
//!   Q6_K: for j in 0..16 (sub-blocks of 16):
//!           i32[r] = sum_{k in j} dpbusd(splat q[r][b][k], X[b][k])   (|.| <= 16 * 63 * 128 < 2^17)
//!           isum[r] += mullo(i32[r], splat sc[j])
//!         the - 32 and acc: as kgemm.rs
//! ```
//!
//! The tile's sub-block scales are unpacked as one i32 each (not i16
//! pairs): [`Product::unpack`] with `I32`. `vpdpbusd` does not saturate
//! (the `s` form would; it is not used), every lane ends as the token's
//! exact `isum` / `msum`, and the f32 terms are kgemm.rs's: the result
//! equals the scalar GEMV per token bit for bit. Groups of fewer than
//! `MIN_GROUP` tokens run the AVX-512 GEMV (`kquant512.rs`).
//!
//! Per row, super-block and 8 tokens that is ~64 broadcasts, 64
//! `vpdpbusd` and 8 `vpmulld` + 8 adds for Q4_K (AVX2: ~200 with the
//! `maddubs` chains), 64 + 64 + 16 + 16 for Q6_K. Each row's groups run
//! in two chains (even and odd `k`), so `vpdpbusd`'s latency does not
//! bound a sub-block of 8 (Q4_K); with one chain Q4_K was behind AVX2 on
//! the 5632x2048 shape in both runs.
//!
//! Measured with `cargo bench --bench gemv -- q4_k q6_k` (the `/t64`
//! rows: 64 tokens; ratio of the prefill's per-token weight bandwidth to
//! the read loop, avx512 and avx2 rows of the same run), 2-vCPU AMD Zen 4
//! VM shared with other builds (load ~6), two runs, 3 shapes x 1 and 2
//! threads:
//!
//! | | AVX2 (`kgemm.rs`) | this file |
//! |---|---|---|
//! | Q4_K | 1.10-1.55 | 1.05-1.59 (ahead in 10 of 12 rows, ~3-5%) |
//! | Q6_K | 1.19-1.77 | 1.34-2.02 (ahead in 12 of 12, ~10-15%) |

use core::arch::x86_64::*;

use super::avx2::Avx2;
use super::avx512::Avx512;
use super::kgemm::{
    finish_q4_k, finish_q6_k, gemm_blocks, load, product, Batched, Panel, Product, Tile, G,
};
use super::vnni::Vnni;
use crate::kquant::{self, BlockQ4_K, BlockQ6_K, BlockQ8_K};

/// The AVX-512 backend's batched K-quant products: the VNNI tiles here
/// when the CPU has them, else AVX2's, else the scalar twin.
impl Avx512 {
    pub(crate) fn gemm_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemm_q4_k(w, xq, t, y),
            (None, Some(a)) => a.gemm_q4_k(w, xq, t, y),
            (None, None) => kquant::gemm_q4_k(w, xq, t, y),
        }
    }

    pub(crate) fn gemm_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemm_q6_k(w, xq, t, y),
            (None, Some(a)) => a.gemm_q6_k(w, xq, t, y),
            (None, None) => kquant::gemm_q6_k(w, xq, t, y),
        }
    }
}

impl Vnni {
    /// As [`Avx2::gemm_q4_k`], with `vpdpbusd` tiles.
    pub(crate) fn gemm_q4_k(self, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Vnni::new`
        // passed, so the CPU has the features `gemm_q4_k_k` is compiled for.
        unsafe { gemm_q4_k_k(self, w, xq, t, y) }
    }

    /// As [`Avx2::gemm_q6_k`], with `vpdpbusd` tiles.
    pub(crate) fn gemm_q6_k(self, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemm_q4_k`.
        unsafe { gemm_q6_k_k(self, w, xq, t, y) }
    }
}

product!(Vnni, BlockQ4_K, 3, tile_q4_k, gemv_q4_k, true);
product!(Vnni, BlockQ6_K, 4, tile_q6_k, gemv_q6_k, true);

/// `sum_k dpbusd(splat q[r][b][k], X[b][k])` over groups `ks` of each row,
/// times the row's i32 scale `sc[r][b][s]`, added to `isum[r]`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn scaled_groups<const N: usize>(
    p: &Panel,
    u: &Tile<N>,
    (b, s): (usize, usize),
    ks: core::ops::Range<usize>,
    isum: &mut [__m256i; N],
) {
    let splat = |v: u32| _mm256_set1_epi32(v as i32);
    // Two chains per row (even and odd groups): `vpdpbusd`'s latency,
    // not its throughput, would bound one chain of 8.
    let mut d = [[_mm256_setzero_si256(); N]; 2];
    for k in ks {
        let xk = load(&p.x[b][k]);
        for (v, q) in d[k % 2].iter_mut().zip(&u.q) {
            *v = _mm256_dpbusd_epi32(*v, splat(q[b][k]), xk);
        }
    }
    for (((i, v0), v1), sc) in isum.iter_mut().zip(d[0]).zip(d[1]).zip(&u.sc) {
        let v = _mm256_add_epi32(v0, v1);
        *i = _mm256_add_epi32(*i, _mm256_mullo_epi32(v, splat(sc[b][s])));
    }
}

/// [`Product::tile`] for Q4_K (module docs): 8 sub-blocks of 32 weights.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn tile_q4_k<const N: usize>(p: &Panel, nbp: usize, u: &Tile<N>, acc: [__m256; N]) -> [__m256; N] {
    tile::<N, 8>(p, nbp, u, acc, |p, u, b, i, a| finish_q4_k(p, u, b, i, a))
}

/// [`Product::tile`] for Q6_K (module docs): 16 sub-blocks of 16 weights.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn tile_q6_k<const N: usize>(p: &Panel, nbp: usize, u: &Tile<N>, acc: [__m256; N]) -> [__m256; N] {
    tile::<N, 16>(p, nbp, u, acc, |p, u, b, i, a| finish_q6_k(p, u, b, i, a))
}

/// Both tiles: per super-block, the `SUBS` sub-blocks' scaled integer
/// sums ([`scaled_groups`], `G / SUBS` groups each), then the type's f32
/// term (`finish`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn tile<const N: usize, const SUBS: usize>(
    p: &Panel,
    nbp: usize,
    u: &Tile<N>,
    mut acc: [__m256; N],
    finish: impl Fn(&Panel, &Tile<N>, usize, [__m256i; N], &mut [__m256; N]),
) -> [__m256; N] {
    let per = G / SUBS;
    for b in 0..nbp {
        let mut isum = [_mm256_setzero_si256(); N];
        for s in 0..SUBS {
            scaled_groups(p, u, (b, s), per * s..per * (s + 1), &mut isum);
        }
        finish(p, u, b, isum, &mut acc);
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_q4_k_k(v: Vnni, w: &[BlockQ4_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm_blocks(v, w, xq, t, y)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_q6_k_k(v: Vnni, w: &[BlockQ6_K], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm_blocks(v, w, xq, t, y)
}
