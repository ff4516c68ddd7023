//! AVX2 + FMA + F16C kernels: 8 f32 lanes per `__m256`.

use core::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::{tail_dot, Widen};
use crate::Weights;

/// Proof that AVX2, FMA and F16C are usable on this CPU: only [`Avx2::new`]
/// builds it, after `has_avx2()` returned true.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn new() -> Option<Self> {
        if super::has_avx2() {
            Some(Avx2(()))
        } else {
            None
        }
    }

    /// `y = W x`; the caller checked `w.len() == y.len() * x.len()`.
    pub(crate) fn gemv(self, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
        // SAFETY (all three arms): `self` exists only if `has_avx2()` returned
        // true in `Avx2::new`, so the CPU supports avx2, fma and f16c, the
        // features `gemv_k` is compiled for.
        match w {
            // SAFETY: CPU features established by the token, see above.
            Weights::F32(w) => unsafe { gemv_k(w, x, y) },
            // SAFETY: CPU features established by the token, see above.
            Weights::F16(w) => unsafe { gemv_k(w, x, y) },
            // SAFETY: CPU features established by the token, see above.
            Weights::BF16(w) => unsafe { gemv_k(w, x, y) },
        }
    }

    pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: the token proves avx2+fma+f16c (Avx2::new).
        unsafe { dot_k(a, b) }
    }

    pub(crate) fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        // SAFETY: the token proves avx2+fma+f16c (Avx2::new).
        unsafe { axpy_k(y, a, x) }
    }

    pub(crate) fn read_sum(self, bytes: &[u8]) -> u64 {
        // SAFETY: the token proves avx2+fma+f16c (Avx2::new).
        unsafe { read_sum_k(bytes) }
    }
}

/// A stored weight type that widens 8 consecutive values to one `__m256`.
trait Elem: Widen {
    /// # Safety
    /// `p..p + 8` must be readable elements, and the CPU must support
    /// avx2, fma and f16c.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Elem for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: 8 readable f32 at `p` (trait contract); loadu needs no alignment.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Elem for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: 8 readable f16 = 16 bytes at `p` (trait contract); unaligned load.
        let h = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_cvtph_ps(h)
    }
}

impl Elem for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: 8 readable bf16 = 16 bytes at `p` (trait contract); unaligned load.
        let h = unsafe { _mm_loadu_si128(p.cast()) };
        // bf16 is the top half of an f32: zero-extend u16 -> u32, shift left 16.
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

use super::avx512::ONE_ROW_MAX_COLS;

/// `y = W x`, W row-major `[y.len()][x.len()]`.
///
/// ```text
/// if n <= ONE_ROW_MAX_COLS: for r in rows: y[r] = row_dot(W[r], x)
/// else: 4-row blocks rows_block::<4> (x loads shared), leftover rows row_dot
/// ```
/// The same choice as the AVX-512 kernel (see there for the measurements):
/// one sequential stream for short rows, `x` loads shared by 4 rows once
/// `x` no longer fits in L1 beside the streamed row.
#[target_feature(enable = "avx2,fma,f16c")]
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
/// acc[i][j] = 0                  (i < R rows, j < 2 column halves: 2R ymm)
/// for c in 0.. step 16 while c + 16 <= n:
///     xa = x[c..c+8]; xb = x[c+8..c+16]        loaded once for all R rows
///     acc[i][0] += W[i][c..c+8] * xa;  acc[i][1] += W[i][c+8..c+16] * xb
/// if c + 8 <= n: acc[i][0] += W[i][c..c+8] * x[c..c+8]; c += 8
/// out[i] = hsum(acc[i][0] + acc[i][1]) + scalar dot of the last n % 8 columns
/// ```
/// With R = 4 there are 8 independent FMA chains, enough to cover the FMA
/// latency (4 cycles x 2 ports) while the loop waits on memory anyway.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_block<const R: usize, E: Elem>(w: &[E], x: &[f32]) -> [f32; R] {
    let n = x.len();
    assert_eq!(w.len(), R * n);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let mut c = 0;
    // SAFETY: every load reads x[c..c+16] or W[i][c..c+16] (i < R) with
    // c + 16 <= n (resp. c + 8 <= n for the 8-wide step), inside `x` (len n)
    // and `w` (len R * n, asserted above). The CPU features are this fn's
    // target features, which its callers have.
    unsafe {
        while c + 16 <= n {
            let xa = _mm256_loadu_ps(xp.add(c));
            let xb = _mm256_loadu_ps(xp.add(c + 8));
            for (i, a) in acc.iter_mut().enumerate() {
                let p = wp.add(i * n + c);
                a[0] = _mm256_fmadd_ps(E::load8(p), xa, a[0]);
                a[1] = _mm256_fmadd_ps(E::load8(p.add(8)), xb, a[1]);
            }
            c += 16;
        }
        if c + 8 <= n {
            let xa = _mm256_loadu_ps(xp.add(c));
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(E::load8(wp.add(i * n + c)), xa, a[0]);
            }
            c += 8;
        }
    }
    let mut out = [0.0; R];
    for (i, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
        *o = hsum(_mm256_add_ps(a[0], a[1])) + tail_dot(&w[i * n + c..(i + 1) * n], &x[c..]);
    }
    out
}

/// Dot product of one stored row with `x`, f32 accumulation.
///
/// ```text
/// acc[0..4] = 0 (4 ymm); for c step 32: acc[j] += W[c+8j..+8] * x[c+8j..+8]
/// then 8-wide steps into acc[0]; result = hsum(sum acc) + scalar tail (n % 8)
/// ```
/// Four independent FMA chains cover the FMA latency while the loop waits
/// on memory anyway.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_dot<E: Elem>(w: &[E], x: &[f32]) -> f32 {
    let n = x.len();
    assert_eq!(w.len(), n, "row_dot: length");
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    // SAFETY: loads read W[c..c+32] / x[c..c+32] with c + 32 <= n, then
    // W[c..c+8] / x[c..c+8] with c + 8 <= n; both slices have length n
    // (asserted). CPU features: this fn's target features, which callers have.
    unsafe {
        while c + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = c + 8 * j;
                *a = _mm256_fmadd_ps(E::load8(wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
            }
            c += 32;
        }
        while c + 8 <= n {
            acc[0] = _mm256_fmadd_ps(E::load8(wp.add(c)), _mm256_loadu_ps(xp.add(c)), acc[0]);
            c += 8;
        }
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(s) + tail_dot(&w[c..], &x[c..])
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Dot product of two f32 vectors (attention scores): [`row_dot`] on f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_k(a: &[f32], b: &[f32]) -> f32 {
    row_dot(a, b)
}

/// `y += a * x`.
///
/// ```text
/// for c step 16: y[c..c+8] = fma(a, x[c..c+8], y[c..c+8]); same for c+8..c+16
/// then one 8-wide step if 8 <= n - c; scalar tail (n % 8)
/// ```
#[target_feature(enable = "avx2,fma,f16c")]
fn axpy_k(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len();
    assert_eq!(x.len(), n);
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let av = _mm256_set1_ps(a);
    let mut c = 0;
    // SAFETY: reads x[c..c+16] and reads/writes y[c..c+16] with c + 16 <= n
    // (then c + 8 <= n); both have length n, `y` is exclusively borrowed and
    // cannot alias the shared `x`. CPU features: this fn's target features.
    unsafe {
        while c + 16 <= n {
            let y0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(c)), _mm256_loadu_ps(yp.add(c)));
            let y1 = _mm256_fmadd_ps(
                av,
                _mm256_loadu_ps(xp.add(c + 8)),
                _mm256_loadu_ps(yp.add(c + 8)),
            );
            _mm256_storeu_ps(yp.add(c), y0);
            _mm256_storeu_ps(yp.add(c + 8), y1);
            c += 16;
        }
        if c + 8 <= n {
            let y0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(c)), _mm256_loadu_ps(yp.add(c)));
            _mm256_storeu_ps(yp.add(c), y0);
            c += 8;
        }
    }
    for (y, x) in y[c..].iter_mut().zip(&x[c..]) {
        *y += a * x;
    }
}

/// Memory-read ceiling: wrapping sum of `bytes` as u64 words.
///
/// ```text
/// acc[0..8] = 0 (8 ymm of 4 x u64); for c step 256: acc[j] += load(bytes[c+32j..+32])
/// result = sum of all lanes + scalar sum of the last len % 256 bytes
/// ```
#[target_feature(enable = "avx2,fma,f16c")]
fn read_sum_k(bytes: &[u8]) -> u64 {
    let body = bytes.len() / 256 * 256;
    let p = bytes.as_ptr();
    let mut acc = [_mm256_setzero_si256(); 8];
    let mut c = 0;
    // SAFETY: each load reads bytes[c + 32j..c + 32j + 32] with j < 8 and
    // c + 256 <= body <= bytes.len(); loadu needs no alignment. CPU features:
    // this fn's target features, guaranteed by the caller.
    unsafe {
        while c < body {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(c + 32 * j).cast()));
            }
            c += 256;
        }
    }
    let mut lanes = [0u64; 4];
    for a in acc {
        let mut v = [0u64; 4];
        // SAFETY: `v` is 32 writable bytes; storeu needs no alignment.
        unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), a) };
        for (l, v) in lanes.iter_mut().zip(v) {
            *l = l.wrapping_add(v);
        }
    }
    lanes
        .iter()
        .fold(crate::scalar::read_sum(&bytes[body..]), |s, l| {
            s.wrapping_add(*l)
        })
}
