//! The SIMD vocabulary, and the loops written once over it.
//!
//! A backend is a *register bank*: vectors `V` of `LANES` f32 with load,
//! store, fused multiply-add, add and a horizontal sum, plus a widening load
//! per stored weight type ([`Load`]). The kernels here (GEMV, blocks of rows,
//! one row, axpy) are generic over the bank and `#[inline(always)]`: each
//! backend's `#[target_feature]` entry point instantiates them, so every
//! vector operation is compiled inside a function that has the backend's
//! features, and the loops exist once for AVX-512, AVX2 and NEON.
//!
//! Safety contract of every `unsafe fn` here and in the traits: the CPU
//! supports the bank's features (the backend's token proves it, and its
//! entry points carry them as target features), and each pointer argument
//! is valid for `LANES` elements (the loops below check their bounds).

use super::{tail_dot, Widen};

/// One SIMD register bank.
pub(crate) trait Bank {
    type V: Copy;
    /// f32 lanes per vector.
    const LANES: usize;
    /// Rows up to this many columns are read one at a time, longer ones in
    /// blocks of 4 rows sharing the `x` loads (see [`gemv`]).
    const ONE_ROW_MAX_COLS: usize;
    /// # Safety
    /// See the module docs.
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// See the module docs.
    unsafe fn splat(a: f32) -> Self::V;
    /// # Safety
    /// See the module docs.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// See the module docs.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`, one rounding.
    ///
    /// # Safety
    /// See the module docs.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// # Safety
    /// See the module docs.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes.
    ///
    /// # Safety
    /// See the module docs.
    unsafe fn hsum(v: Self::V) -> f32;
}

/// Widening load of `LANES` stored weights of type `E` into one vector.
pub(crate) trait Load<E>: Bank {
    /// # Safety
    /// See the module docs.
    unsafe fn load_w(p: *const E) -> Self::V;
}

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
/// 1-2 bytes of `x` refetched from L2. Measured on Zen 4 (AVX-512, 1
/// thread, weights in DRAM, GB/s one row / 4-row blocks): f16 5632x2048
/// 30.1 / 18.6, 4096x4096 27.7 / 18.7, 4096x2816 28.1 / 15.1; f16
/// 2048x5632 11.0 / 15.9, 1024x8192 11.5 / 19.8, 1024x11264 9.2 / 15.6
/// (f32 alike, smaller gaps). Also measured and not adopted: software
/// prefetch 1024 bytes ahead (f16 one row: 17.7 vs 29.2 GB/s), 8
/// accumulators per row (within noise of 4), column tiles of long rows
/// (8-10 GB/s: strided segments defeat the prefetcher).
///
/// # Safety
/// See the module docs.
///
/// # Panics
/// If `w.len() != x.len() * y.len()`.
#[inline(always)]
pub(crate) unsafe fn gemv<B: Load<E>, E: Widen>(w: &[E], x: &[f32], y: &mut [f32]) {
    let n = x.len();
    assert_eq!(w.len(), n * y.len(), "gemv: weight shape");
    let mut r = 0;
    if n > B::ONE_ROW_MAX_COLS {
        for yb in y.chunks_exact_mut(4) {
            // SAFETY: CPU features per the caller's contract.
            yb.copy_from_slice(&unsafe { rows_block::<B, 4, E>(&w[r * n..(r + 4) * n], x) });
            r += 4;
        }
    }
    for yr in &mut y[r..] {
        // SAFETY: CPU features per the caller's contract.
        *yr = unsafe { row_dot::<B, E>(&w[r * n..(r + 1) * n], x) };
        r += 1;
    }
}

/// R rows of `W x` sharing every load of `x` (long rows: R = 4).
///
/// ```text
/// L = LANES; acc[i][j] = 0          (i < R rows, j < 2 column halves: 2R regs)
/// for c in 0.. step 2L while c + 2L <= n:
///     xa = x[c..c+L]; xb = x[c+L..c+2L]         loaded once for all R rows
///     acc[i][0] += W[i][c..c+L] * xa;  acc[i][1] += W[i][c+L..c+2L] * xb
/// if c + L <= n: acc[i][0] += W[i][c..c+L] * x[c..c+L]; c += L
/// out[i] = hsum(acc[i][0] + acc[i][1]) + scalar dot of the last n % L columns
/// ```
/// With R = 4 there are 8 independent FMA chains, enough to cover the FMA
/// latency while the loop waits on memory anyway.
///
/// # Safety
/// See the module docs.
#[inline(always)]
unsafe fn rows_block<B: Load<E>, const R: usize, E: Widen>(w: &[E], x: &[f32]) -> [f32; R] {
    let (n, l) = (x.len(), B::LANES);
    assert_eq!(w.len(), R * n);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut out = [0.0; R];
    // SAFETY: every load reads x[c..c+L] or W[i][c..c+L] (i < R) at offsets
    // with c + 2L <= n (resp. c + L <= n for the single step), inside `x`
    // (len n) and `w` (len R * n, asserted above). CPU features per the
    // caller's contract.
    unsafe {
        let mut acc = [[B::zero(); 2]; R];
        let mut c = 0;
        while c + 2 * l <= n {
            let xa = B::load(xp.add(c));
            let xb = B::load(xp.add(c + l));
            for (i, a) in acc.iter_mut().enumerate() {
                let p = wp.add(i * n + c);
                a[0] = B::fma(B::load_w(p), xa, a[0]);
                a[1] = B::fma(B::load_w(p.add(l)), xb, a[1]);
            }
            c += 2 * l;
        }
        if c + l <= n {
            let xa = B::load(xp.add(c));
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = B::fma(B::load_w(wp.add(i * n + c)), xa, a[0]);
            }
            c += l;
        }
        for (i, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
            *o = B::hsum(B::add(a[0], a[1])) + tail_dot(&w[i * n + c..(i + 1) * n], &x[c..]);
        }
    }
    out
}

/// Dot product of one stored row with `x`, f32 accumulation (also the dot
/// of two f32 vectors, for attention scores).
///
/// ```text
/// L = LANES; acc[0..4] = 0 (4 regs); for c step 4L: acc[j] += W[c+jL..+L] * x[c+jL..+L]
/// then L-wide steps into acc[0]; result = hsum(sum acc) + scalar tail (n % L)
/// ```
/// Four independent FMA chains cover the FMA latency at the rate memory
/// delivers the row.
///
/// # Safety
/// See the module docs.
///
/// # Panics
/// If `w.len() != x.len()`.
#[inline(always)]
pub(crate) unsafe fn row_dot<B: Load<E>, E: Widen>(w: &[E], x: &[f32]) -> f32 {
    let (n, l) = (x.len(), B::LANES);
    assert_eq!(w.len(), n, "row_dot: length");
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    // SAFETY: loads read W[c..c+4L] / x[c..c+4L] with c + 4L <= n, then
    // W[c..c+L] / x[c..c+L] with c + L <= n; both slices have length n
    // (asserted). CPU features per the caller's contract.
    unsafe {
        let mut acc = [B::zero(); 4];
        let mut c = 0;
        while c + 4 * l <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = c + l * j;
                *a = B::fma(B::load_w(wp.add(o)), B::load(xp.add(o)), *a);
            }
            c += 4 * l;
        }
        while c + l <= n {
            acc[0] = B::fma(B::load_w(wp.add(c)), B::load(xp.add(c)), acc[0]);
            c += l;
        }
        let s = B::add(B::add(acc[0], acc[1]), B::add(acc[2], acc[3]));
        B::hsum(s) + tail_dot(&w[c..], &x[c..])
    }
}

/// `y += a * x`.
///
/// ```text
/// L = LANES; for c step 2L: y[c..c+L] = fma(a, x[c..c+L], y[c..c+L]); same for c+L..c+2L
/// then one L-wide step if L <= n - c; scalar tail (n % L)
/// ```
///
/// # Safety
/// See the module docs.
///
/// # Panics
/// If `x.len() != y.len()`.
#[inline(always)]
pub(crate) unsafe fn axpy<B: Bank>(y: &mut [f32], a: f32, x: &[f32]) {
    let (n, l) = (y.len(), B::LANES);
    assert_eq!(x.len(), n);
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let mut c = 0;
    // SAFETY: reads x[c..c+2L] and reads/writes y[c..c+2L] with c + 2L <= n
    // (then c + L <= n); both have length n, `y` is exclusively borrowed and
    // cannot alias the shared `x`. CPU features per the caller's contract.
    unsafe {
        let av = B::splat(a);
        while c + 2 * l <= n {
            let y0 = B::fma(av, B::load(xp.add(c)), B::load(yp.add(c)));
            let y1 = B::fma(av, B::load(xp.add(c + l)), B::load(yp.add(c + l)));
            B::store(yp.add(c), y0);
            B::store(yp.add(c + l), y1);
            c += 2 * l;
        }
        if c + l <= n {
            B::store(
                yp.add(c),
                B::fma(av, B::load(xp.add(c)), B::load(yp.add(c))),
            );
            c += l;
        }
    }
    for (y, x) in y[c..].iter_mut().zip(&x[c..]) {
        *y += a * x;
    }
}

/// A backend's safe token type and its `#[target_feature]` entry points
/// into the kernels above:
/// `backend!(Token, "target,features", has_features_fn)`, in a module that
/// implements [`Bank`] and [`Load`] for `Token` and defines
/// `read_sum_k(&[u8]) -> u64` with the same target features.
///
/// The token's only constructor checks the CPU (`has_features_fn`), so its
/// safe methods may call the entry points: that check is the invariant
/// every `unsafe` call below rests on.
macro_rules! backend {
    ($token:ident, $features:literal, $has:path) => {
        /// Proof that this backend's CPU features are usable: only
        /// `new` builds it, after the CPU check returned true.
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $token(());

        impl $token {
            pub(crate) fn new() -> Option<Self> {
                if $has() {
                    Some($token(()))
                } else {
                    None
                }
            }

            /// `y = W x`; the caller checked `w.len() == y.len() * x.len()`.
            pub(crate) fn gemv(self, w: $crate::Weights<'_>, x: &[f32], y: &mut [f32]) {
                match w {
                    // SAFETY: `self` exists only if the CPU check in `new`
                    // passed, so the CPU has the features `gemv_k` is
                    // compiled for.
                    $crate::Weights::F32(w) => unsafe { gemv_k(w, x, y) },
                    // SAFETY: as above.
                    $crate::Weights::F16(w) => unsafe { gemv_k(w, x, y) },
                    // SAFETY: as above.
                    $crate::Weights::BF16(w) => unsafe { gemv_k(w, x, y) },
                }
            }

            pub(crate) fn dot(self, a: &[f32], b: &[f32]) -> f32 {
                // SAFETY: the token proves the CPU features (see `gemv`).
                unsafe { dot_k(a, b) }
            }

            pub(crate) fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
                // SAFETY: the token proves the CPU features (see `gemv`).
                unsafe { axpy_k(y, a, x) }
            }

            pub(crate) fn read_sum(self, bytes: &[u8]) -> u64 {
                // SAFETY: the token proves the CPU features (see `gemv`).
                unsafe { read_sum_k(bytes) }
            }
        }

        /// `y = W x` ([`bank::gemv`](crate::arch::bank::gemv) on this bank).
        #[target_feature(enable = $features)]
        fn gemv_k<E: $crate::arch::Widen>(w: &[E], x: &[f32], y: &mut [f32])
        where
            $token: $crate::arch::bank::Load<E>,
        {
            // SAFETY: this fn's target features are the bank's.
            unsafe { $crate::arch::bank::gemv::<$token, E>(w, x, y) }
        }

        /// Dot product of two f32 vectors (attention scores).
        #[target_feature(enable = $features)]
        fn dot_k(a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: this fn's target features are the bank's.
            unsafe { $crate::arch::bank::row_dot::<$token, f32>(a, b) }
        }

        /// `y += a * x`.
        #[target_feature(enable = $features)]
        fn axpy_k(y: &mut [f32], a: f32, x: &[f32]) {
            // SAFETY: this fn's target features are the bank's.
            unsafe { $crate::arch::bank::axpy::<$token>(y, a, x) }
        }
    };
}
pub(crate) use backend;
