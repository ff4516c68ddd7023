//! GEMV on Q4_K rows interleaved by 8 ([`crate::kx8`]) with Q8_K
//! activations: 32-bit lane `r` is row `r` from the first product to the
//! stored `y`.
//!
//! ```text
//! for g in groups of 8 rows:
//!     sum = 0.0 (8 x f32)
//!     for b in super-blocks:
//!         prefetch the block PREFETCH_BYTES ahead
//!         for c < 4, j < 8:                          32 bytes: 4 weights x 8 rows, two nibbles
//!             lo, hi = q & 0x0F, q >> 4 & 0x0F
//!             xl, xh = x[64c + 4j..+4], x[64c + 32 + 4j..+4] broadcast
//!             AVX2: al += maddubs(lo, xl); ah += maddubs(hi, xh)     (i16, exact: |8 x 2 x 15 x 128| < 2^15)
//!             VNNI: al = dpbusd(al, lo, xl); ah = dpbusd(ah, hi, xh) (i32)
//!         (per c) isum += madd(al, (sc[2c][r], sc[2c][r])) + ...   AVX2: the i16 pairs of lane r
//!                 isum += al * sc[2c][r] + ah * sc[2c + 1][r]      VNNI: vpmulld
//!         msum = sum_p madd((m[2p][r], m[2p+1][r]), (bsums pair 2p, 2p + 1))
//!         sum += (d[r] d_x) f32(isum) - (dmin[r] d_x) f32(msum)   (8 lanes, the twin's operations)
//!     y[8g..8g + 8] = sum
//! ```
//!
//! No reduction across lanes and no scale unpacking: on the 2-core Zen 4
//! VM, thread CPU time per row and super-block in L2 (224 x 2048), best of
//! 9 x 2000: AVX2 3.1-3.2 ns, VNNI 2.9 ns, against 7.8-7.9 ns for the
//! plain Q4_K kernel (`kquant.rs`) in the same runs. From DRAM
//! (`cargo bench --bench gemv -- q4_k q4_k_x8`, 1 thread, TinyLlama's MLP
//! and lm_head shapes) AVX2 reads at 0.77-0.87 of the read loop, VNNI at
//! 0.71-0.82, the plain kernel at 0.57-0.61: the AVX-512 backend's GEMV
//! runs the AVX2 kernel.
//!
//! The batched product (prefill) runs each group for every token while its
//! blocks are in L1/L2. On VNNI each 32-byte chunk is unpacked once for 4
//! tokens (`VNNI_TOKENS`; 12 accumulators of the 32 ymm registers): in L2
//! (224 x 2048, 64 tokens, thread CPU time, best of 5 x 31 calls) 1.8-2.0
//! ns per row, super-block and token against 2.9 for one token at a time
//! (2 tokens 2.9, 8 tokens 2.3: spills), and 2.5-3.5 for the plain
//! layout's batched tiles (`kgemm.rs`) in the same runs. AVX2 shares
//! each chunk among 3 tokens: 2.38 ns against 2.53 (2 tokens), 2.51 (4)
//! and ~3.1 (1), and 2.57 for the plain layout's AVX2 tiles.

use core::arch::x86_64::*;

use super::avx2::Avx2;
use super::avx512::Avx512;
use super::kquant::load32;
use super::vnni::Vnni;
use crate::kquant::BlockQ8_K;
use crate::kx8::{self, gemm_shape_x8, gemv_shape, BlockQ4_Kx8, ROWS};

/// Weight bytes prefetched ahead: 3.5 interleaved blocks.
const PREFETCH_BYTES: usize = 4096;

impl Avx2 {
    /// `y = W x` on interleaved Q4_K; the caller checked the shapes.
    pub(crate) fn gemv_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Avx2::new` passed,
        // so the CPU has the features `gemv_avx2` is compiled for.
        unsafe { gemv_avx2(w, xq, y) }
    }

    /// `y[i] = W xq[i]` for `t` tokens; the caller checked the shapes.
    pub(crate) fn gemm_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: as in `gemv_q4_k_x8`.
        unsafe { gemm_avx2(w, xq, t, y) }
    }
}

impl Vnni {
    /// `y[i] = W xq[i]` for `t` tokens; the caller checked the shapes.
    pub(crate) fn gemm_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        // SAFETY: `self` exists only if the CPU check in `Vnni::new`
        // passed, so the CPU has the features `gemm_vnni` is compiled for.
        unsafe { gemm_vnni(w, xq, t, y) }
    }
}

/// The AVX-512 backend: the GEMV on AVX2 (faster from DRAM, module
/// docs), the batched product on VNNI where the CPU has it; else AVX2,
/// else the scalar twin.
impl Avx512 {
    pub(crate) fn gemv_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
        match Avx2::new() {
            Some(a) => a.gemv_q4_k_x8(w, xq, y),
            None => kx8::gemv_q4_k_x8(w, xq, y),
        }
    }

    pub(crate) fn gemm_q4_k_x8(self, w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
        match (Vnni::new(), Avx2::new()) {
            (Some(v), _) => v.gemm_q4_k_x8(w, xq, t, y),
            (None, Some(a)) => a.gemm_q4_k_x8(w, xq, t, y),
            (None, None) => kx8::gemm_q4_k_x8(w, xq, t, y),
        }
    }
}

/// The 4 activations from `x.qs[at]` on, in every 32-bit lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn x4(x: &BlockQ8_K, at: usize) -> __m256i {
    let b = &x.qs[at..at + 4];
    _mm256_set1_epi32(i32::from_le_bytes([
        b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
    ]))
}

/// Lane `r` = row `r`'s `msum` of one block: the 8 mins against the sums
/// of each 32 activations (`bsums[2s] + bsums[2s + 1]`, |.| <= 4096).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mins(w: &BlockQ4_Kx8, x: &BlockQ8_K) -> __m256i {
    // 8 x i32 pair sums, narrowed to i16 exactly: [p0..p3 p0..p3 | p4..p7 p4..p7].
    let p = _mm256_madd_epi16(load32(&x.bsums, 0), _mm256_set1_epi16(1));
    let p = _mm256_packs_epi32(p, p);
    let mut msum = _mm256_setzero_si256();
    for k in 0..4 {
        // Dword k of the pairs (p_2k, p_2k+1): index k of the low half
        // for k < 2, of the high half (4 + k - 2) else.
        let at = if k < 2 { k } else { 4 + k - 2 };
        let pk = _mm256_permutevar8x32_epi32(p, _mm256_set1_epi32(at as i32));
        // SAFETY: bytes 16k..16k + 16 of the 64 mins are readable; loadu
        // needs no alignment.
        let m = unsafe { _mm_loadu_si128(w.mins[16 * k..16 * k + 16].as_ptr().cast()) };
        msum = _mm256_add_epi32(msum, _mm256_madd_epi16(_mm256_cvtepu8_epi16(m), pk));
    }
    msum
}

/// `sum + (d d_x) f32(isum) - (dmin d_x) f32(msum)` in 8 lanes: the scalar
/// twin's operations in its order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn finish(sum: __m256, w: &BlockQ4_Kx8, x: &BlockQ8_K, isum: __m256i, msum: __m256i) -> __m256 {
    let dx = _mm256_set1_ps(x.d);
    // SAFETY: `d` and `dmin` are 16 readable bytes each; loadu needs no
    // alignment.
    let (d, dmin) = unsafe {
        (
            _mm_loadu_si128(w.d.as_ptr().cast()),
            _mm_loadu_si128(w.dmin.as_ptr().cast()),
        )
    };
    let d = _mm256_mul_ps(_mm256_cvtph_ps(d), dx);
    let dmin = _mm256_mul_ps(_mm256_cvtph_ps(dmin), dx);
    let t = _mm256_sub_ps(
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(isum)),
        _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(msum)),
    );
    _mm256_add_ps(sum, t)
}

/// Prefetches the bytes `PREFETCH_BYTES` past `w` (a hint: an address past
/// the weights is dropped, never dereferenced).
#[inline(always)]
fn prefetch(w: &BlockQ4_Kx8) {
    let at = (w as *const BlockQ4_Kx8)
        .cast::<i8>()
        .wrapping_add(PREFETCH_BYTES);
    for line in (0..size_of::<BlockQ4_Kx8>()).step_by(64) {
        // SAFETY: SSE is part of every x86-64 CPU (the target's baseline);
        // the address is never dereferenced.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line)) };
    }
}

/// Row `r`'s scale of sub-blocks `2c` (`HI = false`) or `2c + 1` as the
/// i16 pair `(sc, sc)` of lane `r`, from `scales[16c..16c + 16]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale_pairs<const HI: bool>(w: &BlockQ4_Kx8, c: usize) -> __m256i {
    // SAFETY: bytes 16c..16c + 16 of the 64 scales are readable; loadu
    // needs no alignment.
    let s = unsafe { _mm_loadu_si128(w.scales[16 * c..16 * c + 16].as_ptr().cast()) };
    let s = _mm256_broadcastsi128_si256(s);
    // Byte 4r' + {0, 2} of each half picks scale (8 if HI) + r, r = r' or
    // 4 + r' (the high half); bytes 4r' + {1, 3} are zero (-1 index).
    let o = if HI { 8 } else { 0 };
    let pat = |r: i8| [r + o, -1, r + o, -1];
    let [a, b, c_, d] = [pat(0), pat(1), pat(2), pat(3)];
    let [e, f, g, h] = [pat(4), pat(5), pat(6), pat(7)];
    let idx = _mm256_setr_epi8(
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c_[0], c_[1], c_[2], c_[3], d[0], d[1],
        d[2], d[3], e[0], e[1], e[2], e[3], f[0], f[1], f[2], f[3], g[0], g[1], g[2], g[3], h[0],
        h[1], h[2], h[3],
    );
    _mm256_shuffle_epi8(s, idx)
}

/// Defines `$name::<TT>(group, xs)`: one group's 8 outputs for each of
/// `TT` tokens, each 32-byte chunk of weights unpacked once for all of
/// them. The instruction sets differ in two steps only: `$dot(acc, nibbles,
/// activations)` accumulates a chunk's products, and `$scaled(w, c, al,
/// ah)` meets the sums of sub-blocks `2c` and `2c + 1` with their scales
/// (exact i32, lane = row).
macro_rules! group_fn {
    ($name:ident, $features:literal, $dot:expr, $scaled:expr) => {
        #[target_feature(enable = $features)]
        #[inline]
        fn $name<const TT: usize>(group: &[BlockQ4_Kx8], xs: [&[BlockQ8_K]; TT]) -> [__m256; TT] {
            let (dot, scaled) = ($dot, $scaled);
            let m4 = _mm256_set1_epi8(0x0F);
            let zero = _mm256_setzero_si256();
            let mut sum = [_mm256_setzero_ps(); TT];
            for (b, w) in group.iter().enumerate() {
                prefetch(w);
                let x: [&BlockQ8_K; TT] = core::array::from_fn(|t| &xs[t][b]);
                let mut isum = [zero; TT];
                for c in 0..4 {
                    let (mut al, mut ah) = ([zero; TT], [zero; TT]);
                    for j in 0..8 {
                        let q = load32(&w.qs, 32 * (8 * c + j));
                        let lo = _mm256_and_si256(q, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                        for t in 0..TT {
                            al[t] = dot(al[t], lo, x4(x[t], 64 * c + 4 * j));
                            ah[t] = dot(ah[t], hi, x4(x[t], 64 * c + 32 + 4 * j));
                        }
                    }
                    let d = scaled(w, c, al, ah);
                    for t in 0..TT {
                        isum[t] = _mm256_add_epi32(isum[t], d[t]);
                    }
                }
                for t in 0..TT {
                    sum[t] = finish(sum[t], w, x[t], isum[t], mins(w, x[t]));
                }
            }
            sum
        }
    };
}

// AVX2: i16 sums of 8 chunks (`vpmaddubsw`), met with the lane's scale
// pair `(sc, sc)` by `vpmaddwd`.
group_fn!(
    group_avx2,
    "avx2,fma,f16c",
    |a: __m256i, q: __m256i, x: __m256i| _mm256_add_epi16(a, _mm256_maddubs_epi16(q, x)),
    |w: &BlockQ4_Kx8, c: usize, al: [__m256i; TT], ah: [__m256i; TT]| {
        let (sl, sh) = (scale_pairs::<false>(w, c), scale_pairs::<true>(w, c));
        core::array::from_fn::<_, TT, _>(|t| {
            _mm256_add_epi32(_mm256_madd_epi16(al[t], sl), _mm256_madd_epi16(ah[t], sh))
        })
    }
);

// VNNI: i32 sums (`vpdpbusd`), times the lane's scale by `vpmulld`.
group_fn!(
    group_vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    |a: __m256i, q: __m256i, x: __m256i| _mm256_dpbusd_epi32(a, q, x),
    |w: &BlockQ4_Kx8, c: usize, al: [__m256i; TT], ah: [__m256i; TT]| {
        // SAFETY: bytes 16c..16c + 16 of the 64 scales are readable;
        // loadl needs no alignment.
        let (sl, sh) = unsafe {
            (
                _mm_loadl_epi64(w.scales[16 * c..16 * c + 8].as_ptr().cast()),
                _mm_loadl_epi64(w.scales[16 * c + 8..16 * c + 16].as_ptr().cast()),
            )
        };
        let (sl, sh) = (_mm256_cvtepu8_epi32(sl), _mm256_cvtepu8_epi32(sh));
        core::array::from_fn::<_, TT, _>(|t| {
            _mm256_add_epi32(_mm256_mullo_epi32(al[t], sl), _mm256_mullo_epi32(ah[t], sh))
        })
    }
);

/// Stores lane `r` of `v` to `y[r]` (`y` is 8 floats).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store8(y: &mut [f32], v: __m256) {
    let y = &mut y[..ROWS];
    // SAFETY: 8 writable floats at `y` (the slice above); storeu needs no
    // alignment.
    unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_avx2(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
    let nb = xq.len();
    gemv_shape(w.len(), nb, y.len());
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    for (yg, group) in y.chunks_exact_mut(ROWS).zip(w.chunks_exact(nb)) {
        let [v] = group_avx2::<1>(group, [xq]);
        store8(yg, v);
    }
}

/// The batched loop: group by group while its blocks are in cache,
/// `TT` tokens at a time through `many`, the rest one by one through
/// `many1`; `store` writes a group's 8 outputs of a token.
#[inline(always)]
fn gemm_tokens<const TT: usize>(
    (w, xq, t, y): (&[BlockQ4_Kx8], &[BlockQ8_K], usize, &mut [f32]),
    many: impl Fn(&[BlockQ4_Kx8], [&[BlockQ8_K]; TT]) -> [__m256; TT],
    many1: impl Fn(&[BlockQ4_Kx8], [&[BlockQ8_K]; 1]) -> [__m256; 1],
    store: impl Fn(&mut [f32], __m256),
) {
    let (nb, rows) = gemm_shape_x8(w.len(), xq.len(), t, y.len());
    if nb == 0 {
        y.fill(0.0);
        return;
    }
    let x = |i: usize| &xq[i * nb..(i + 1) * nb];
    for (g, blocks) in w.chunks_exact(nb).enumerate() {
        let mut i = 0;
        while i + TT <= t {
            let out = many(blocks, core::array::from_fn(|k| x(i + k)));
            for (k, v) in out.into_iter().enumerate() {
                let at = (i + k) * rows + ROWS * g;
                store(&mut y[at..at + ROWS], v);
            }
            i += TT;
        }
        for i in i..t {
            let [v] = many1(blocks, [x(i)]);
            let at = i * rows + ROWS * g;
            store(&mut y[at..at + ROWS], v);
        }
    }
}

/// Tokens whose products share each unpacked chunk (module docs): 3 on
/// AVX2, 4 on VNNI.
const AVX2_TOKENS: usize = 3;
const VNNI_TOKENS: usize = 4;

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_avx2(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm_tokens::<AVX2_TOKENS>(
        (w, xq, t, y),
        |g, x| group_avx2(g, x),
        |g, x| group_avx2(g, x),
        |y, v| store8(y, v),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn gemm_vnni(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    gemm_tokens::<VNNI_TOKENS>(
        (w, xq, t, y),
        |g, x| group_vnni(g, x),
        |g, x| group_vnni(g, x),
        |y, v| store8(y, v),
    )
}
