//! The scalar oracle itself, against small hand-computed examples.

use tpi_kernels::{bf16, f16, scalar, Weights};

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "index {i}: got {g} want {w}\n{got:?}\n{want:?}"
        );
    }
}

#[test]
fn scalar_gemv_computes_row_dot_products() {
    // [[1 2 3], [4 5 6]] * [1, 0, -1] = [-2, -2]; * [0.5, 1, 2] = [8.5, 19]
    let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut y = [0.0; 2];
    scalar::gemv(Weights::F32(&w), &[1.0, 0.0, -1.0], &mut y);
    assert_close(&y, &[-2.0, -2.0]);
    let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    scalar::gemv(Weights::F16(&wh), &[0.5, 1.0, 2.0], &mut y);
    assert_close(&y, &[8.5, 19.0]);
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    scalar::gemv(Weights::BF16(&wb), &[0.5, 1.0, 2.0], &mut y);
    assert_close(&y, &[8.5, 19.0]);
}

#[test]
fn scalar_dot_and_axpy_on_small_vectors() {
    assert_eq!(scalar::dot(&[1.0, 2.0, 3.0], &[4.0, -5.0, 6.0]), 12.0);
    let mut y = [1.0, 1.0, 1.0];
    scalar::axpy(&mut y, 2.0, &[1.0, -1.0, 0.5]);
    assert_eq!(y, [3.0, -1.0, 2.0]);
}

#[test]
fn scalar_rmsnorm_divides_by_root_mean_square() {
    // x = [3, 4]: mean(x^2) = 12.5, rms = 3.5355339; w = [1, 2]
    let mut out = [0.0; 2];
    scalar::rmsnorm(&mut out, &[3.0, 4.0], &[1.0, 2.0], 0.0);
    assert_close(&out, &[0.84852814, 2.2627417]);
    // eps is added inside the root: x = [0, 0] stays 0, x = [1, 1] with eps 3 -> 1/2.
    scalar::rmsnorm(&mut out, &[1.0, 1.0], &[1.0, 1.0], 3.0);
    assert_close(&out, &[0.5, 0.5]);
}

#[test]
fn scalar_rope_rotates_pairs_half_a_head_apart() {
    // Two heads of head_dim 4 (half = 2); pair (i, i + 2) rotated by angle_i.
    // angle_0 = 90 degrees (cos 0, sin 1), angle_1 = 0 (cos 1, sin 0).
    let mut x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    scalar::rope(&mut x, &[0.0, 1.0], &[1.0, 0.0]);
    // (x0, x2) = (1, 3) -> (1*0 - 3*1, 3*0 + 1*1) = (-3, 1); (x1, x3) unchanged.
    assert_close(&x, &[-3.0, 2.0, 1.0, 4.0, -7.0, 6.0, 5.0, 8.0]);
}

#[test]
fn scalar_softmax_matches_hand_values_and_ignores_shift() {
    let mut x = [1.0, 2.0, 3.0];
    scalar::softmax(&mut x);
    assert_close(&x, &[0.09003057, 0.24472847, 0.66524096]);
    let mut y = [1001.0, 1002.0, 1003.0];
    tpi_kernels::softmax(&mut y);
    assert_close(&y, &x);
}

#[test]
fn scalar_silu_mul_gates_up_projection() {
    // silu(v) = v / (1 + e^-v): silu(1) = 0.7310586, silu(-1) = -0.26894142
    let mut g = [1.0, 0.0, -1.0];
    scalar::silu_mul(&mut g, &[2.0, 5.0, 1.0]);
    assert_close(&g, &[1.4621172, 0.0, -0.26894142]);
}

#[test]
fn argmax_returns_first_maximum_and_zero_when_empty() {
    assert_eq!(tpi_kernels::argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(tpi_kernels::argmax(&[-5.0]), 0);
    assert_eq!(tpi_kernels::argmax(&[]), 0);
}

#[test]
fn rope_free_function_checks_shape() {
    let r = std::panic::catch_unwind(|| {
        let mut x = [0.0; 6];
        tpi_kernels::rope(&mut x, &[1.0, 1.0], &[0.0, 0.0]);
    });
    assert!(r.is_err(), "6 values are not whole heads of 4");
}
