//! AVX-512F kernels: 16 f32 lanes per `__m512`.
//!
//! Only AVX-512F is required (f16 via `vcvtph2ps zmm`, bf16 via zero-extend +
//! shift). AVX512_BF16 dot instructions are deliberately not used: they round
//! products and would not match the f32-accumulation reference.

use core::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::{tail_dot, Widen};
use crate::Weights;

/// Proof that AVX-512F is usable on this CPU: only [`Avx512::new`] builds it,
/// after `has_avx512()` returned true.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    pub(crate) fn new() -> Option<Self> {
        if super::has_avx512() {
            Some(Avx512(()))
        } else {
            None
        }
    }

    /// `y = W x`; the caller checked `w.len() == y.len() * x.len()`.
    pub(crate) fn gemv(self, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
        // The token exists only if `has_avx512()` returned true in
        // `Avx512::new`, so the CPU supports avx512f, the feature `gemv_k`
        // is compiled for.
        match w {
            // SAFETY: CPU feature established by the token, see above.
            Weights::F32(w) => unsafe { gemv_k(w, x, y) },
            // SAFETY: CPU feature established by the token, see above.
            Weights::F16(w) => unsafe { gemv_k(w, x, y) },
            // SAFETY: CPU feature established by the token, see above.
            Weights::BF16(w) => unsafe { gemv_k(w, x, y) },
        }
    }

    pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the token proves avx512f (Avx512::new).
        unsafe { dot_k(a, b) }
    }

    pub(crate) fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        // SAFETY: the token proves avx512f (Avx512::new).
        unsafe { axpy_k(y, a, x) }
    }

    pub(crate) fn read_sum(self, bytes: &[u8]) -> u64 {
        // SAFETY: the token proves avx512f (Avx512::new).
        unsafe { read_sum_k(bytes) }
    }
}

/// A stored weight type that widens 16 consecutive values to one `__m512`.
trait Elem: Widen {
    /// # Safety
    /// `p..p + 16` must be readable elements, and the CPU must support avx512f.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Elem for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: 16 readable f32 at `p` (trait contract); loadu needs no alignment.
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl Elem for f16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f16) -> __m512 {
        // SAFETY: 16 readable f16 = 32 bytes at `p` (trait contract); unaligned load.
        let h = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_cvtph_ps(h)
    }
}

impl Elem for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const bf16) -> __m512 {
        // SAFETY: 16 readable bf16 = 32 bytes at `p` (trait contract); unaligned load.
        let h = unsafe { _mm256_loadu_si256(p.cast()) };
        // bf16 is the top half of an f32: zero-extend u16 -> u32, shift left 16.
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

/// Rows up to this many columns (`x` up to 16 KiB) are read one at a time.
pub(crate) const ONE_ROW_MAX_COLS: usize = 4096;

/// `y = W x`, W row-major `[y.len()][x.len()]`.
///
/// ```text
/// if n <= ONE_ROW_MAX_COLS: for r in rows: y[r] = row_dot(W[r], x)
/// else: 4-row blocks rows_block::<4> (x loads shared), leftover rows row_dot
/// ```
/// Short rows go strictly one after the other, so a thread reads its
/// weights as one sequential stream, which the hardware prefetchers follow
/// best; long rows share each `x` load among 4 rows, because once `x` no
/// longer fits in L1 beside the streamed row, every weight byte also costs
/// 1-2 bytes of `x` refetched from L2. Measured on Zen 4 (1 thread, weights
/// in DRAM, GB/s one row / 4-row blocks): f16 5632x2048 30.1 / 18.6,
/// 4096x4096 27.7 / 18.7, 4096x2816 28.1 / 15.1; f16 2048x5632 11.0 / 15.9,
/// 1024x8192 11.5 / 19.8, 1024x11264 9.2 / 15.6 (f32 alike, smaller gaps).
/// Also measured and not adopted: software prefetch 1024 bytes ahead (f16
/// one row: 17.7 vs 29.2 GB/s), 8 accumulators per row (within noise of 4),
/// column tiles of long rows (8-10 GB/s: strided segments defeat the
/// prefetcher).
#[target_feature(enable = "avx512f")]
fn gemv_k<E: Elem>(w: &[E], x: &[f32], y: &mut [f32]) {
    let n = x.len();
    assert_eq!(w.len(), n * y.len(), "gemv: weight shape");
    let mut r = 0;
    if n > ONE_ROW_MAX_COLS {
        for yb in y.chunks_exact_mut(4) {
            yb.copy_from_slice(&rows_block::<4, E>(&w[r * n..(r + 4) * n], x));
            r += 4;
        }
    }
    for yr in &mut y[r..] {
        *yr = row_dot(&w[r * n..(r + 1) * n], x);
        r += 1;
    }
}

/// R rows of `W x` sharing every load of `x` (long rows: R = 4).
///
/// ```text
/// acc[i][j] = 0                  (i < R rows, j < 2 column halves: 2R zmm)
/// for c in 0.. step 32 while c + 32 <= n:
///     xa = x[c..c+16]; xb = x[c+16..c+32]      loaded once for all R rows
///     acc[i][0] += W[i][c..c+16] * xa;  acc[i][1] += W[i][c+16..c+32] * xb
/// if c + 16 <= n: acc[i][0] += W[i][c..c+16] * x[c..c+16]; c += 16
/// out[i] = reduce_add(acc[i][0] + acc[i][1]) + scalar dot of the last n % 16
/// ```
/// With R = 4 there are 8 independent FMA chains (Zen 4 issues one zmm FMA
/// per cycle with latency 4), far more than a memory-bound loop needs.
#[inline]
#[target_feature(enable = "avx512f")]
fn rows_block<const R: usize, E: Elem>(w: &[E], x: &[f32]) -> [f32; R] {
    let n = x.len();
    assert_eq!(w.len(), R * n);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let mut c = 0;
    // SAFETY: every load reads x[c..c+32] or W[i][c..c+32] (i < R) with
    // c + 32 <= n (resp. c + 16 <= n for the 16-wide step), inside `x` (len n)
    // and `w` (len R * n, asserted above). The CPU feature is this fn's
    // target feature, which its callers have.
    unsafe {
        while c + 32 <= n {
            let xa = _mm512_loadu_ps(xp.add(c));
            let xb = _mm512_loadu_ps(xp.add(c + 16));
            for (i, a) in acc.iter_mut().enumerate() {
                let p = wp.add(i * n + c);
                a[0] = _mm512_fmadd_ps(E::load16(p), xa, a[0]);
                a[1] = _mm512_fmadd_ps(E::load16(p.add(16)), xb, a[1]);
            }
            c += 32;
        }
        if c + 16 <= n {
            let xa = _mm512_loadu_ps(xp.add(c));
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = _mm512_fmadd_ps(E::load16(wp.add(i * n + c)), xa, a[0]);
            }
            c += 16;
        }
    }
    let mut out = [0.0; R];
    for (i, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
        *o = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]))
            + tail_dot(&w[i * n + c..(i + 1) * n], &x[c..]);
    }
    out
}

/// Dot product of one stored row with `x`, f32 accumulation.
///
/// ```text
/// acc[0..4] = 0 (4 zmm); for c step 64: acc[j] += W[c+16j..+16] * x[c+16j..+16]
/// then 16-wide steps into acc[0]; result = reduce(sum acc) + scalar tail (n % 16)
/// ```
/// Four independent FMA chains cover the FMA latency (4 cycles) at the
/// rate memory delivers the row.
#[inline]
#[target_feature(enable = "avx512f")]
fn row_dot<E: Elem>(w: &[E], x: &[f32]) -> f32 {
    let n = x.len();
    assert_eq!(w.len(), n, "row_dot: length");
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut c = 0;
    // SAFETY: loads read W[c..c+64] / x[c..c+64] with c + 64 <= n, then
    // W[c..c+16] / x[c..c+16] with c + 16 <= n; both slices have length n
    // (asserted). CPU feature: this fn's target feature, which callers have.
    unsafe {
        while c + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = c + 16 * j;
                *a = _mm512_fmadd_ps(E::load16(wp.add(o)), _mm512_loadu_ps(xp.add(o)), *a);
            }
            c += 64;
        }
        while c + 16 <= n {
            acc[0] = _mm512_fmadd_ps(E::load16(wp.add(c)), _mm512_loadu_ps(xp.add(c)), acc[0]);
            c += 16;
        }
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(s) + tail_dot(&w[c..], &x[c..])
}

/// Dot product of two f32 vectors (attention scores): [`row_dot`] on f32.
#[target_feature(enable = "avx512f")]
fn dot_k(a: &[f32], b: &[f32]) -> f32 {
    row_dot(a, b)
}

/// `y += a * x`.
///
/// ```text
/// for c step 32: y[c..c+16] = fma(a, x[c..c+16], y[c..c+16]); same for c+16..c+32
/// then one 16-wide step if 16 <= n - c; scalar tail (n % 16)
/// ```
#[target_feature(enable = "avx512f")]
fn axpy_k(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len();
    assert_eq!(x.len(), n);
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let av = _mm512_set1_ps(a);
    let mut c = 0;
    // SAFETY: reads x[c..c+32] and reads/writes y[c..c+32] with c + 32 <= n
    // (then c + 16 <= n); both have length n, `y` is exclusively borrowed and
    // cannot alias the shared `x`. CPU feature: this fn's target feature.
    unsafe {
        while c + 32 <= n {
            let y0 = _mm512_fmadd_ps(av, _mm512_loadu_ps(xp.add(c)), _mm512_loadu_ps(yp.add(c)));
            let y1 = _mm512_fmadd_ps(
                av,
                _mm512_loadu_ps(xp.add(c + 16)),
                _mm512_loadu_ps(yp.add(c + 16)),
            );
            _mm512_storeu_ps(yp.add(c), y0);
            _mm512_storeu_ps(yp.add(c + 16), y1);
            c += 32;
        }
        if c + 16 <= n {
            let y0 = _mm512_fmadd_ps(av, _mm512_loadu_ps(xp.add(c)), _mm512_loadu_ps(yp.add(c)));
            _mm512_storeu_ps(yp.add(c), y0);
            c += 16;
        }
    }
    for (y, x) in y[c..].iter_mut().zip(&x[c..]) {
        *y += a * x;
    }
}

/// Memory-read ceiling: wrapping sum of `bytes` as u64 words.
///
/// ```text
/// acc[0..8] = 0 (8 zmm of 8 x u64); for c step 512: acc[j] += load(bytes[c+64j..+64])
/// result = sum of all lanes + scalar sum of the last len % 512 bytes
/// ```
#[target_feature(enable = "avx512f")]
fn read_sum_k(bytes: &[u8]) -> u64 {
    let body = bytes.len() / 512 * 512;
    let p = bytes.as_ptr();
    let mut acc = [_mm512_setzero_si512(); 8];
    let mut c = 0;
    // SAFETY: each load reads bytes[c + 64j..c + 64j + 64] with j < 8 and
    // c + 512 <= body <= bytes.len(); loadu needs no alignment. CPU feature:
    // this fn's target feature, guaranteed by the caller.
    unsafe {
        while c < body {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(p.add(c + 64 * j).cast()));
            }
            c += 512;
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_si512(), |s, a| _mm512_add_epi64(s, *a));
    (_mm512_reduce_add_epi64(s) as u64).wrapping_add(crate::scalar::read_sum(&bytes[body..]))
}
