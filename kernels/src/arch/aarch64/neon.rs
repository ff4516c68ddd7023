//! NEON kernels: 4 f32 lanes per `float32x4_t`, base ARMv8-A only.
//!
//! f16 is widened with `FCVTL` (base AdvSIMD). Its intrinsic
//! `vcvt_f32_f16` needs the unstable `float16x4_t` type, so it is issued with
//! a one-instruction `asm!`. bf16 is widened with `vshll_n_u16::<16>`.

use core::arch::aarch64::*;
use core::arch::asm;

use half::{bf16, f16};

use crate::arch::{tail_dot, Widen};
use crate::Weights;

/// Proof that NEON is usable on this CPU: only [`Neon::new`] builds it,
/// after `has_neon()` returned true.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Neon(());

impl Neon {
    pub(crate) fn new() -> Option<Self> {
        if super::has_neon() {
            Some(Neon(()))
        } else {
            None
        }
    }

    /// `y = W x`; the caller checked `w.len() == y.len() * x.len()`.
    pub(crate) fn gemv(self, w: Weights<'_>, x: &[f32], y: &mut [f32]) {
        // The token exists only if `has_neon()` returned true in `Neon::new`,
        // so the CPU supports neon, the feature `gemv_k` is compiled for.
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
        // SAFETY: the token proves neon (Neon::new).
        unsafe { dot_k(a, b) }
    }

    pub(crate) fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        // SAFETY: the token proves neon (Neon::new).
        unsafe { axpy_k(y, a, x) }
    }

    pub(crate) fn read_sum(self, bytes: &[u8]) -> u64 {
        // SAFETY: the token proves neon (Neon::new).
        unsafe { read_sum_k(bytes) }
    }
}

/// A stored weight type that widens 4 consecutive values to one `float32x4_t`.
trait Elem: Widen {
    /// # Safety
    /// `p..p + 4` must be readable elements, and the CPU must support neon.
    unsafe fn load4(p: *const Self) -> float32x4_t;
}

impl Elem for f32 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        // SAFETY: 4 readable f32 at `p` (trait contract); ld1 needs no alignment.
        unsafe { vld1q_f32(p) }
    }
}

impl Elem for f16 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load4(p: *const f16) -> float32x4_t {
        // SAFETY: 4 readable f16 = 8 bytes at `p` (trait contract).
        let h = unsafe { vld1_u16(p.cast()) };
        let out: float32x4_t;
        // SAFETY: FCVTL Vd.4S, Vn.4H is base ARMv8-A AdvSIMD (covered by
        // `neon`, this fn's feature); it reads only `h`'s register, writes only
        // `out`'s, touches no memory, stack or flags. Widening is exact.
        unsafe {
            asm!(
                "fcvtl {o:v}.4s, {i:v}.4h",
                o = lateout(vreg) out,
                i = in(vreg) h,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        out
    }
}

impl Elem for bf16 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load4(p: *const bf16) -> float32x4_t {
        // SAFETY: 4 readable bf16 = 8 bytes at `p` (trait contract).
        let h = unsafe { vld1_u16(p.cast()) };
        // bf16 is the top half of an f32: widen u16 -> u32 shifted left by 16.
        vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
    }
}

/// `y = W x`, W row-major `[y.len()][x.len()]`.
///
/// ```text
/// for each block of R = 4 rows (then R = 1 for the rows % 4 leftovers):
///     rows_block::<R>(W[r..r+R], x) -> y[r..r+R]
/// ```
#[target_feature(enable = "neon")]
fn gemv_k<E: Elem>(w: &[E], x: &[f32], y: &mut [f32]) {
    let n = x.len();
    assert_eq!(w.len(), n * y.len(), "gemv: weight shape");
    let mut blocks = y.chunks_exact_mut(4);
    let mut r = 0;
    for yb in &mut blocks {
        yb.copy_from_slice(&rows_block::<4, E>(&w[r * n..(r + 4) * n], x));
        r += 4;
    }
    for yr in blocks.into_remainder() {
        *yr = rows_block::<1, E>(&w[r * n..(r + 1) * n], x)[0];
        r += 1;
    }
}

/// R rows of `W x` sharing every load of `x`.
///
/// ```text
/// acc[i][j] = 0                  (i < R rows, j < 2 column halves: 2R q-regs)
/// for c in 0.. step 8 while c + 8 <= n:
///     xa = x[c..c+4]; xb = x[c+4..c+8]          loaded once for all R rows
///     acc[i][0] += W[i][c..c+4] * xa;  acc[i][1] += W[i][c+4..c+8] * xb
/// if c + 4 <= n: acc[i][0] += W[i][c..c+4] * x[c..c+4]; c += 4
/// out[i] = addv(acc[i][0] + acc[i][1]) + scalar dot of the last n % 4 columns
/// ```
#[inline]
#[target_feature(enable = "neon")]
fn rows_block<const R: usize, E: Elem>(w: &[E], x: &[f32]) -> [f32; R] {
    let n = x.len();
    assert_eq!(w.len(), R * n);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[vdupq_n_f32(0.0); 2]; R];
    let mut c = 0;
    // SAFETY: every load reads x[c..c+8] or W[i][c..c+8] (i < R) with
    // c + 8 <= n (resp. c + 4 <= n for the 4-wide step), inside `x` (len n)
    // and `w` (len R * n, asserted above). The CPU feature is this fn's
    // target feature, which its callers have.
    unsafe {
        while c + 8 <= n {
            let xa = vld1q_f32(xp.add(c));
            let xb = vld1q_f32(xp.add(c + 4));
            for (i, a) in acc.iter_mut().enumerate() {
                let p = wp.add(i * n + c);
                a[0] = vfmaq_f32(a[0], E::load4(p), xa);
                a[1] = vfmaq_f32(a[1], E::load4(p.add(4)), xb);
            }
            c += 8;
        }
        if c + 4 <= n {
            let xa = vld1q_f32(xp.add(c));
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = vfmaq_f32(a[0], E::load4(wp.add(i * n + c)), xa);
            }
            c += 4;
        }
    }
    let mut out = [0.0; R];
    for (i, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
        *o = vaddvq_f32(vaddq_f32(a[0], a[1])) + tail_dot(&w[i * n + c..(i + 1) * n], &x[c..]);
    }
    out
}

/// Dot product.
///
/// ```text
/// acc[0..4] = 0 (4 q-regs); for c step 16: acc[j] += a[c+4j..+4] * b[c+4j..+4]
/// then 4-wide steps into acc[0]; result = addv(sum acc) + scalar tail (n % 4)
/// ```
#[target_feature(enable = "neon")]
fn dot_k(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    assert_eq!(b.len(), n);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut c = 0;
    // SAFETY: loads read a[c..c+16] / b[c..c+16] with c + 16 <= n, then
    // a[c..c+4] / b[c..c+4] with c + 4 <= n; both slices have length n.
    // CPU feature: this fn's target feature, guaranteed by the caller.
    unsafe {
        while c + 16 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                let o = c + 4 * j;
                *s = vfmaq_f32(*s, vld1q_f32(ap.add(o)), vld1q_f32(bp.add(o)));
            }
            c += 16;
        }
        while c + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(ap.add(c)), vld1q_f32(bp.add(c)));
            c += 4;
        }
    }
    let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(s) + tail_dot(&a[c..], &b[c..])
}

/// `y += a * x`.
///
/// ```text
/// for c step 8: y[c..c+4] = fma(y[c..c+4], x[c..c+4], a); same for c+4..c+8
/// then one 4-wide step if 4 <= n - c; scalar tail (n % 4)
/// ```
#[target_feature(enable = "neon")]
fn axpy_k(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len();
    assert_eq!(x.len(), n);
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let mut c = 0;
    // SAFETY: reads x[c..c+8] and reads/writes y[c..c+8] with c + 8 <= n
    // (then c + 4 <= n); both have length n, `y` is exclusively borrowed and
    // cannot alias the shared `x`. CPU feature: this fn's target feature.
    unsafe {
        while c + 8 <= n {
            let y0 = vfmaq_n_f32(vld1q_f32(yp.add(c)), vld1q_f32(xp.add(c)), a);
            let y1 = vfmaq_n_f32(vld1q_f32(yp.add(c + 4)), vld1q_f32(xp.add(c + 4)), a);
            vst1q_f32(yp.add(c), y0);
            vst1q_f32(yp.add(c + 4), y1);
            c += 8;
        }
        if c + 4 <= n {
            vst1q_f32(
                yp.add(c),
                vfmaq_n_f32(vld1q_f32(yp.add(c)), vld1q_f32(xp.add(c)), a),
            );
            c += 4;
        }
    }
    for (y, x) in y[c..].iter_mut().zip(&x[c..]) {
        *y += a * x;
    }
}

/// Memory-read ceiling: wrapping sum of `bytes` as u64 words.
///
/// ```text
/// acc[0..8] = 0 (8 q-regs of 2 x u64); for c step 128: acc[j] += ld1(bytes[c+16j..+16])
/// result = sum of all lanes + scalar sum of the last len % 128 bytes
/// ```
#[target_feature(enable = "neon")]
fn read_sum_k(bytes: &[u8]) -> u64 {
    let body = bytes.len() / 128 * 128;
    let p = bytes.as_ptr();
    let mut acc = [vdupq_n_u64(0); 8];
    let mut c = 0;
    // SAFETY: each load reads bytes[c + 16j..c + 16j + 16] with j < 8 and
    // c + 128 <= body <= bytes.len(); ld1 needs no alignment. CPU feature:
    // this fn's target feature, guaranteed by the caller.
    unsafe {
        while c < body {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vaddq_u64(*a, vreinterpretq_u64_u8(vld1q_u8(p.add(c + 16 * j))));
            }
            c += 128;
        }
    }
    let s = acc.iter().fold(vdupq_n_u64(0), |s, a| vaddq_u64(s, *a));
    vaddvq_u64(s).wrapping_add(crate::scalar::read_sum(&bytes[body..]))
}
