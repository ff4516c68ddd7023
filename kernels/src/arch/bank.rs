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
    /// Rows x tokens of a [`gemm`] tile: `R * T` accumulators, `T`
    /// activations and one widened weight must fit in the bank's registers
    /// (AVX2: 16, AVX-512 and NEON: 32).
    const GEMM_TILE: (usize, usize);
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

/// Weight bytes per row of a panel of [`gemm`]: 1024 f16 or 512 f32
/// columns; a group of [`GEMM_T`] tokens' panel of `x` is then 6-12 KiB.
const GEMM_KC_BYTES: usize = 2048;
/// Weight bytes per row block of [`gemm`] (12 rows of a panel), which stay
/// in L1 beside the tokens' panel while every token group passes by.
const GEMM_L1: usize = 24 << 10;
/// Bytes of f32 inputs per pass of [`gemm`] over a panel (24 tokens of
/// f16 panels, 48 of f32): with the chunk of weights they stay in L2, so
/// each block of rows re-reads them from there, not from L3.
const GEMM_L2_X: usize = 96 << 10;

/// `y[i] = W x[i]` for `t` tokens (prompt prefill): `x` is `t` rows of
/// `n` inputs, `y` is `t` rows of `rows` outputs, token-major; W row-major
/// `[rows][n]`.
///
/// ```text
/// for each pass of TB tokens (their panels of x: 96 KiB, kept in L2):
/// for each panel of KC columns (KC * size of a weight = 2 KiB):
///   for each block of 12 rows (24 KiB of the panel's weights, kept in L1):
///     for each group of T tokens (then one group of fewer):
///       for each tile of R rows of the block (then single rows):
///         acc[r][j] = 0                                 (R x T registers)
///         for c in panel step L: xj = x[j][c..c+L]        (T loads, L1)
///           for r: w = W[r][c..c+L] (one load, widened); acc[r][j] += w * xj
///         y[j][r] (+)= hsum(acc[r][j]) + scalar dot of the panel's tail
/// ```
/// The tile `(R, T)` is the bank's [`Bank::GEMM_TILE`]. With AVX2's 3 x 3,
/// per step R + T = 6 loads from L1 feed R * T = 9 independent FMAs,
/// against 2 loads per FMA (one from L2) in the GEMV, and each weight is
/// widened once per 3 tokens. With AVX2 the tile takes 13 of the 16
/// registers: a 4 x 3 tile needs all 16 plus one to overlap the f16
/// widening, and the spilled accumulator cost a third of the speed.
/// AVX-512 has 32 registers and takes 4 x 4 (8 loads, 16 FMAs). On Zen 4,
/// thread CPU time, 64 rows x 2048 in L2, 64 tokens, GFLOP/s f16 / f32:
/// 4 x 4 94-96 / 66-68; 3 x 3 81-92 / 54-63; 4 x 6 90 / 56; 6 x 4 89-90 /
/// 54; 3 x 8 82 / 49; AVX2's 3 x 3 in the same run 88-89 / 62.
/// Measured (2048-column f16 chunk of 64 rows, 64 tokens, 1 thread, the
/// chunk and `x` warm): 64-71 GFLOP/s against 35 for the GEMV per token
/// and ~93 for a loop of independent FMAs alone; f32 50-55. In a whole
/// prefill `x` of 64 tokens (0.5-1.4 MB) no longer fits in L2 beside the
/// chunk, so tokens go in passes of TB: a 64-token f16 prefill, 1 thread,
/// took 2840-3159 ms against 3189-3474 ms without passes (3 alternating
/// pairs; 2 threads 1648-1695 against 1648-1901). The sums are the GEMV's in another
/// order, so the bits differ from [`gemv`]'s (the tests bound the
/// difference by the sum of `|w x|`).
///
/// # Safety
/// See the module docs.
///
/// # Panics
/// If `t == 0` or the shapes do not fit.
#[inline(always)]
pub(crate) unsafe fn gemm<B: Load<E>, E: Widen, const R: usize, const T: usize>(
    w: &[E],
    x: &[f32],
    t: usize,
    y: &mut [f32],
) {
    assert!(t > 0, "gemm: no tokens");
    let (n, rows) = (x.len() / t, y.len() / t);
    assert!(
        x.len() == t * n && y.len() == t * rows && w.len() == rows * n,
        "gemm: shapes"
    );
    if n == 0 {
        // No panel runs: every output is the empty sum.
        y.fill(0.0);
        return;
    }
    let esize = core::mem::size_of::<E>();
    let panel = GEMM_KC_BYTES / esize;
    // Rows per block: its panel of weights fills about GEMM_L1 bytes.
    let rb = (GEMM_L1 / GEMM_KC_BYTES / R).max(1) * R;
    // Tokens per pass: their panels of `x` fill about GEMM_L2_X bytes.
    let tb = (GEMM_L2_X / (panel * 4) / T).max(1) * T;
    for t0 in (0..t).step_by(tb) {
        let t1 = (t0 + tb).min(t);
        for k0 in (0..n).step_by(panel) {
            let kc = panel.min(n - k0);
            let first = k0 == 0;
            for r0 in (0..rows).step_by(rb) {
                let rs = (r0, (r0 + rb).min(rows));
                let mut j = t0;
                let args = ((n, rows), rs, first);
                // SAFETY: tokens `j..j + T <= t1 <= t`, rows `rs` and the
                // panel `k0..k0 + kc <= n` are inside the asserted shapes;
                // CPU features per the caller's contract.
                unsafe {
                    while j + T <= t1 {
                        gemm_tokens::<B, E, R, T>(w, x, y, (j, k0, kc), args);
                        j += T;
                    }
                    // The last tokens, fewer than T <= 8.
                    match t1 - j {
                        7 => gemm_tokens::<B, E, R, 7>(w, x, y, (j, k0, kc), args),
                        6 => gemm_tokens::<B, E, R, 6>(w, x, y, (j, k0, kc), args),
                        5 => gemm_tokens::<B, E, R, 5>(w, x, y, (j, k0, kc), args),
                        4 => gemm_tokens::<B, E, R, 4>(w, x, y, (j, k0, kc), args),
                        3 => gemm_tokens::<B, E, R, 3>(w, x, y, (j, k0, kc), args),
                        2 => gemm_tokens::<B, E, R, 2>(w, x, y, (j, k0, kc), args),
                        1 => gemm_tokens::<B, E, R, 1>(w, x, y, (j, k0, kc), args),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Tokens `j..j + T` of [`gemm`] over the panel of columns `k0..k0 + kc`,
/// all rows: tiles of `R` rows, then single rows. The first panel
/// stores its sums, later ones add to them.
///
/// # Safety
/// See the module docs; `j + T <= t` and `k0 + kc <= n` for the shapes
/// `(n, rows)` of `w`, `x` and `y`.
#[inline(always)]
unsafe fn gemm_tokens<B: Load<E>, E: Widen, const R: usize, const T: usize>(
    w: &[E],
    x: &[f32],
    y: &mut [f32],
    (j, k0, kc): (usize, usize, usize),
    ((n, rows), (r0, r1), first): ((usize, usize), (usize, usize), bool),
) {
    let xs: [&[f32]; T] = core::array::from_fn(|i| &x[(j + i) * n + k0..(j + i) * n + k0 + kc]);
    let mut put = |r: usize, sums: &[f32; T]| {
        for (i, s) in sums.iter().enumerate() {
            let o = &mut y[(j + i) * rows + r];
            *o = if first { *s } else { *o + s };
        }
    };
    let mut r = r0;
    while r + R <= r1 {
        let ws: [&[E]; R] = core::array::from_fn(|i| &w[(r + i) * n + k0..(r + i) * n + k0 + kc]);
        // SAFETY: CPU features per the caller's contract; the slices
        // have length `kc` each.
        let sums = unsafe { gemm_tile::<B, E, R, T>(&ws, &xs) };
        for (i, s) in sums.iter().enumerate() {
            put(r + i, s);
        }
        r += R;
    }
    while r < r1 {
        let ws = [&w[r * n + k0..r * n + k0 + kc]];
        // SAFETY: as above.
        let sums = unsafe { gemm_tile::<B, E, 1, T>(&ws, &xs) };
        put(r, &sums[0]);
        r += 1;
    }
}

/// `out[r][j] = ws[r] . xs[j]` for an R x T tile, every slice of one
/// length: R * T accumulators, each step loads `T` activations and `R`
/// weights once.
///
/// # Safety
/// See the module docs.
#[inline(always)]
unsafe fn gemm_tile<B: Load<E>, E: Widen, const R: usize, const T: usize>(
    ws: &[&[E]; R],
    xs: &[&[f32]; T],
) -> [[f32; T]; R] {
    let (n, l) = (xs[0].len(), B::LANES);
    assert!(ws.iter().all(|w| w.len() == n) && xs.iter().all(|x| x.len() == n));
    let mut out = [[0.0; T]; R];
    // SAFETY: every load reads `[c..c + L]` of a slice of length `n` with
    // `c + L <= n` (asserted lengths). CPU features per the caller's
    // contract.
    unsafe {
        let mut acc = [[B::zero(); T]; R];
        let mut c = 0;
        while c + l <= n {
            let xv: [B::V; T] = core::array::from_fn(|j| B::load(xs[j].as_ptr().add(c)));
            for (a, w) in acc.iter_mut().zip(ws) {
                let wv = B::load_w(w.as_ptr().add(c));
                for (a, xv) in a.iter_mut().zip(&xv) {
                    *a = B::fma(wv, *xv, *a);
                }
            }
            c += l;
        }
        for ((o, a), w) in out.iter_mut().zip(&acc).zip(ws) {
            for ((o, a), x) in o.iter_mut().zip(a).zip(xs) {
                *o = B::hsum(*a) + tail_dot(&w[c..], &x[c..]);
            }
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

            /// `y[i] = W x[i]` for `t` tokens; the caller checked the
            /// shapes (`x` is `t` rows, `y` is `t` rows, `w` fits).
            pub(crate) fn gemm(self, w: $crate::Weights<'_>, x: &[f32], t: usize, y: &mut [f32]) {
                match w {
                    // SAFETY: the token proves the CPU features (see `gemv`).
                    $crate::Weights::F32(w) => unsafe { gemm_k(w, x, t, y) },
                    // SAFETY: as above.
                    $crate::Weights::F16(w) => unsafe { gemm_k(w, x, t, y) },
                    // SAFETY: as above.
                    $crate::Weights::BF16(w) => unsafe { gemm_k(w, x, t, y) },
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

        /// `y[i] = W x[i]` for `t` tokens ([`bank::gemm`](crate::arch::bank::gemm)).
        #[target_feature(enable = $features)]
        fn gemm_k<E: $crate::arch::Widen>(w: &[E], x: &[f32], t: usize, y: &mut [f32])
        where
            $token: $crate::arch::bank::Load<E>,
        {
            const TILE: (usize, usize) = <$token as $crate::arch::bank::Bank>::GEMM_TILE;
            // SAFETY: this fn's target features are the bank's.
            unsafe { $crate::arch::bank::gemm::<$token, E, { TILE.0 }, { TILE.1 }>(w, x, t, y) }
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
