//! Q4_K rows interleaved by 8 ([`BlockQ4_Kx8`]): the layout slice files
//! store a Q4_K matrix in when its rows come in whole groups of 8, so that
//! a GEMV's SIMD lanes are rows.
//!
//! A plain Q4_K GEMV reduces each row's products across SIMD lanes, once per
//! super-block, and unpacks each row's 12 bytes of 6-bit scales: about 80
//! instructions per row and super-block on AVX2, which caps it near 18 GB/s
//! per core (Zen 4), below what DRAM gives. Here one 32-byte load holds 4
//! consecutive weights (two nibbles: 8) of each of 8 rows, the 4
//! activations they meet are one broadcast, and 32-bit lane `r` of every
//! product is row `r`'s: no reduction across lanes, the scales and mins
//! stored unpacked, about 35 instructions per row and super-block. llama.cpp
//! repacks Q4_K the same way at load (`block_q4_Kx8`, its own layout); here
//! it happens when the slice is cut, so a mapped or windowed slice is read
//! as it is stored.
//!
//! # Layout (1184 bytes: the 8 super-blocks `b` of rows `8g..8g + 8`)
//!
//! ```text
//! d[r], dmin[r]            row r's d and dmin (f16)
//! scales[16 c + 8 k + r]   row r's 6-bit scale of sub-block 2c + k   (c < 4, k < 2)
//! mins[16 p + 2 r + k]     row r's 6-bit min of sub-block 2p + k     (p < 4, k < 2)
//! qs[32 (8 c + j) + 4 r + i] = row r's qs[32 c + 4 j + i]             (c < 4, j < 8, i < 4)
//! ```
//!
//! so 32 bytes `(c, j)` hold, for every row, weights `64c + 4j..+4` in the
//! low nibbles (sub-block `2c`) and `64c + 32 + 4j..+4` in the high ones
//! (sub-block `2c + 1`). A matrix of `rows x cols` weights is
//! `rows / 8 x cols / 256` such blocks, group-major: 148 bytes per row and
//! super-block against Q4_K's 144 (the scales unpacked).
//!
//! # Results
//!
//! Each row's `isum` and `msum` are the exact integers of
//! [`crate::kquant`]'s GEMV and meet their f32 scales in the same
//! operations, in the same order, per lane: every path's `y` equals
//! [`crate::kquant::gemv_q4_k`] on the rows before [`repack_q4_k_x8`], bit
//! for bit (tested).

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::kquant::{gemm_shape, BlockQ4_K, BlockQ8_K, QK_K};

/// Rows per interleaved group.
pub const ROWS: usize = 8;

/// One super-block of each of 8 rows, interleaved (see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_Kx8 {
    /// Row `r`'s super-block scale.
    pub d: [f16; ROWS],
    /// Row `r`'s super-block min scale.
    pub dmin: [f16; ROWS],
    /// `scales[16 c + 8 k + r]`: row `r`'s scale of sub-block `2c + k`.
    pub scales: [u8; 64],
    /// `mins[16 p + 2 r + k]`: row `r`'s min of sub-block `2p + k`.
    pub mins: [u8; 64],
    /// `qs[32 (8 c + j) + 4 r + i]`: row `r`'s `qs[32 c + 4 j + i]`.
    pub qs: [u8; ROWS * QK_K / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ4_Kx8>() == 1184);

impl Default for BlockQ4_Kx8 {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Where row `r`'s byte `q` of `qs` lives in [`BlockQ4_Kx8::qs`].
#[inline(always)]
fn qs_at(r: usize, q: usize) -> usize {
    let (c, j, i) = (q / 32, q % 32 / 4, q % 4);
    32 * (8 * c + j) + 4 * r + i
}

impl BlockQ4_Kx8 {
    /// Row `r`'s 6-bit scale and min of sub-block `s`.
    ///
    /// # Panics
    /// If `r >= 8` or `s >= 8`.
    #[inline]
    pub fn scale_min(&self, r: usize, s: usize) -> (u8, u8) {
        (
            self.scales[16 * (s / 2) + 8 * (s % 2) + r],
            self.mins[16 * (s / 2) + 2 * r + s % 2],
        )
    }

    /// Row `r`'s super-block, as [`BlockQ4_K`] stores it (the inverse of
    /// [`repack_q4_k_x8`]).
    ///
    /// # Panics
    /// If `r >= 8`.
    pub fn row(&self, r: usize) -> BlockQ4_K {
        let mut b = BlockQ4_K {
            d: self.d[r],
            dmin: self.dmin[r],
            ..BlockQ4_K::zeroed()
        };
        let (sc, m): ([u8; 8], [u8; 8]) = (
            core::array::from_fn(|s| self.scale_min(r, s).0),
            core::array::from_fn(|s| self.scale_min(r, s).1),
        );
        // The packing `BlockQ4_K::scale_min` reads: 6 bits of s < 4 and
        // the top 2 of s + 4 in bytes 0..8, the low 4 of s + 4 in 8..12.
        for j in 0..4 {
            b.scales[j] = (sc[j] & 63) | (sc[j + 4] >> 4) << 6;
            b.scales[j + 4] = (m[j] & 63) | (m[j + 4] >> 4) << 6;
            b.scales[j + 8] = (sc[j + 4] & 0xF) | (m[j + 4] & 0xF) << 4;
        }
        for (q, v) in b.qs.iter_mut().enumerate() {
            *v = self.qs[qs_at(r, q)];
        }
        b
    }
}

/// Interleaves `w`, `8 g` rows of `nb` Q4_K super-blocks (row-major), into
/// `out`, `g x nb` blocks (see the module docs). Every 6-bit scale and min
/// of `w` is kept, so [`BlockQ4_Kx8::row`] gives `w` back.
///
/// # Panics
/// If `w.len() != 8 * out.len()` or `out.len()` is not a multiple of `nb`
/// (with `nb > 0`).
pub fn repack_q4_k_x8(w: &[BlockQ4_K], nb: usize, out: &mut [BlockQ4_Kx8]) {
    assert!(
        w.len() == ROWS * out.len()
            && (nb > 0 || out.is_empty())
            && out.len().is_multiple_of(nb.max(1)),
        "repack_q4_k_x8: {} super-blocks into {} groups of {nb}",
        w.len(),
        out.len()
    );
    for (g, group) in out.chunks_exact_mut(nb.max(1)).enumerate() {
        for (b, o) in group.iter_mut().enumerate() {
            for r in 0..ROWS {
                let src = &w[(ROWS * g + r) * nb + b];
                o.d[r] = src.d;
                o.dmin[r] = src.dmin;
                for s in 0..QK_K / 32 {
                    let (sc, m) = src.scale_min(s);
                    o.scales[16 * (s / 2) + 8 * (s % 2) + r] = sc;
                    o.mins[16 * (s / 2) + 2 * r + s % 2] = m;
                }
                for (q, &v) in src.qs.iter().enumerate() {
                    o.qs[qs_at(r, q)] = v;
                }
            }
        }
    }
}

/// Row `r` (of all `blocks.len() / nb * 8`) of an interleaved matrix of
/// `nb` super-blocks per row, dequantized into `out` (`256 nb` weights).
///
/// # Panics
/// If the row is outside the matrix or `out` has another length.
pub fn dequantize_row_q4_k_x8(blocks: &[BlockQ4_Kx8], nb: usize, r: usize, out: &mut [f32]) {
    assert_eq!(out.len(), QK_K * nb, "dequantize_row_q4_k_x8: shape");
    let group = &blocks[r / ROWS * nb..(r / ROWS + 1) * nb];
    for (o, b) in out.chunks_exact_mut(QK_K).zip(group) {
        crate::kquant::dequantize_row_q4_k(&[b.row(r % ROWS)], o);
    }
}

/// `(groups, nb)` of `y = W x` on an interleaved matrix: `y` is `8 groups`
/// outputs, `W` is `groups x nb` blocks.
///
/// # Panics
/// If `y.len()` is not a multiple of 8 or `w.len() != y.len() / 8 * nb`.
pub fn gemv_shape(w_len: usize, nb: usize, y_len: usize) -> usize {
    assert!(
        y_len.is_multiple_of(ROWS) && w_len == y_len / ROWS * nb,
        "gemv_q4_k_x8: {w_len} blocks, {nb} activation super-blocks, {y_len} outputs"
    );
    y_len / ROWS
}

/// One block's 8 terms `(d_w d_x) f32(isum) - (dmin_w d_x) f32(msum)`,
/// with the exact sums of [`crate::kquant::block_sums_q4_k`] per row.
fn block_terms(w: &BlockQ4_Kx8, x: &BlockQ8_K) -> [f32; ROWS] {
    core::array::from_fn(|r| {
        let (mut isum, mut msum) = (0i32, 0i32);
        for s in 0..QK_K / 32 {
            let (sc, m) = w.scale_min(r, s);
            let dot: i32 = (0..32)
                .map(|l| {
                    let (e, byte) = (32 * s + l, 32 * (s / 2) + l);
                    let q = w.qs[qs_at(r, byte)] >> (4 * (s % 2)) & 0xF;
                    i32::from(q) * i32::from(x.qs[e])
                })
                .sum();
            isum += i32::from(sc) * dot;
            msum += i32::from(m) * (i32::from(x.bsums[2 * s]) + i32::from(x.bsums[2 * s + 1]));
        }
        let d = w.d[r].to_f32() * x.d;
        let dmin = w.dmin[r].to_f32() * x.d;
        d * isum as f32 - dmin * msum as f32
    })
}

/// Scalar `y = W x` on an interleaved Q4_K matrix (`y.len() / 8` groups of
/// `xq.len()` blocks): the twin every SIMD path is tested against, equal
/// bit for bit to [`crate::kquant::gemv_q4_k`] on the rows it came from.
///
/// # Panics
/// If the shapes do not fit ([`gemv_shape`]).
pub fn gemv_q4_k_x8(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], y: &mut [f32]) {
    let nb = xq.len();
    gemv_shape(w.len(), nb, y.len());
    for (yg, group) in y.chunks_exact_mut(ROWS).zip(w.chunks_exact(nb.max(1))) {
        let mut sum = [0.0f32; ROWS];
        for (wb, xb) in group.iter().zip(xq) {
            for (s, t) in sum.iter_mut().zip(block_terms(wb, xb)) {
                *s += t;
            }
        }
        yg.copy_from_slice(&sum);
    }
    if nb == 0 {
        y.fill(0.0);
    }
}

/// `(nb, rows)` of a batched product of `t` tokens on an interleaved
/// matrix (as [`crate::kquant::gemm_shape`], and `rows` a multiple of 8).
///
/// # Panics
/// If the lengths do not fit.
pub fn gemm_shape_x8(w_len: usize, xq_len: usize, t: usize, y_len: usize) -> (usize, usize) {
    let (nb, rows) = gemm_shape(w_len * ROWS, xq_len, t, y_len);
    assert!(
        rows.is_multiple_of(ROWS) && w_len == rows / ROWS * nb,
        "gemm_q4_k_x8: {rows} rows are not groups of {nb} blocks"
    );
    (nb, rows)
}

/// Scalar `y[i] = W xq[i]` for `t` tokens on an interleaved Q4_K matrix,
/// token-major as [`crate::kquant::gemm_q4_k`]: the GEMV once per token.
///
/// # Panics
/// If the shapes do not fit ([`gemm_shape_x8`]).
pub fn gemm_q4_k_x8(w: &[BlockQ4_Kx8], xq: &[BlockQ8_K], t: usize, y: &mut [f32]) {
    let (nb, rows) = gemm_shape_x8(w.len(), xq.len(), t, y.len());
    for i in 0..t {
        gemv_q4_k_x8(
            w,
            &xq[i * nb..(i + 1) * nb],
            &mut y[i * rows..(i + 1) * rows],
        );
    }
}
