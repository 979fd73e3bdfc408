//! AdamW as PyTorch's `torch.optim.AdamW` computes it, against a hand computation in f64 written
//! here: two steps of `AdamW::update` with weight decay (decoupled: theta * (1 - lr * wd)), the
//! moments, the bias corrections and eps, on tensors whose sizes exercise both the vectorised
//! groups and the remainder; gradient scaling (clipping) applied to the update but not to the
//! logged gradient norm; the returned gradient, weight and update norms; the learning-rate
//! warm-up `lr_at` and `clip_scale`.

use digitlab::optim::{AdamW, OptimizerConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(lr: f64, weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig {
        lr,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        weight_decay,
        warmup_steps: 0,
        grad_clip: None,
    }
}

/// PyTorch's AdamW, one step on one element, in f64: returns the new (theta, m, v).
fn adamw_by_hand(
    cfg: &OptimizerConfig,
    lr: f64,
    t: i32,
    theta: f64,
    g: f64,
    m: f64,
    v: f64,
) -> (f64, f64, f64) {
    let theta = theta * (1.0 - lr * cfg.weight_decay);
    let m = cfg.beta1 * m + (1.0 - cfg.beta1) * g;
    let v = cfg.beta2 * v + (1.0 - cfg.beta2) * g * g;
    let m_hat = m / (1.0 - cfg.beta1.powi(t));
    let v_hat = v / (1.0 - cfg.beta2.powi(t));
    (theta - lr * m_hat / (v_hat.sqrt() + cfg.eps), m, v)
}

fn norm(x: impl Iterator<Item = f64>) -> f64 {
    x.map(|v| v * v).sum::<f64>().sqrt()
}

fn close(a: f64, b: f64, rel: f64, what: &str) {
    assert!(
        (a - b).abs() <= rel * b.abs().max(1e-30),
        "{what}: {a} vs {b}"
    );
}

/// Random weights and gradients for tensors of `sizes`; some gradients tiny or zero, where eps
/// decides the update.
fn random_tensors(rng: &mut ChaCha8Rng, sizes: &[usize]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let weights = sizes
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let grads = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| match i % 7 {
                    0 => 0.0,
                    1 => 1e-8,
                    2 => -3e-9,
                    _ => rng.random_range(-0.5..0.5),
                })
                .collect()
        })
        .collect();
    (weights, grads)
}

/// Two steps of `AdamW::update` against the hand computation, elements and norms.
fn check_two_steps(cfg: &OptimizerConfig, lrs: [f64; 2], grad_scale: f32) {
    let sizes = [37, 5, 16, 1];
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let (mut weights, _) = random_tensors(&mut rng, &sizes);
    let mut adam = AdamW::new(&sizes);
    assert_eq!(adam.step, 0);
    assert!(adam.m.iter().chain(&adam.v).flatten().all(|&x| x == 0.0));

    // The hand state in f64, started from the same f32 weights.
    let mut theta: Vec<Vec<f64>> = weights
        .iter()
        .map(|w| w.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let mut m: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
    let mut v = m.clone();

    for (step, &lr) in lrs.iter().enumerate() {
        let t = step as i32 + 1;
        let (_, grads) = random_tensors(&mut rng, &sizes);
        let before = weights.clone();
        let mut params: Vec<&mut [f32]> = weights.iter_mut().map(|w| w.as_mut_slice()).collect();
        let stats = adam.update(cfg, lr, &mut params, &grads, grad_scale);
        assert_eq!(adam.step, t as u64);
        assert_eq!(stats.len(), sizes.len());

        for i in 0..sizes.len() {
            for j in 0..sizes[i] {
                let g = f64::from(grads[i][j]) * f64::from(grad_scale);
                let (th, mm, vv) = adamw_by_hand(cfg, lr, t, theta[i][j], g, m[i][j], v[i][j]);
                theta[i][j] = th;
                m[i][j] = mm;
                v[i][j] = vv;
                let what = format!("step {t}, tensor {i}[{j}] (grad {g})");
                // f32 rounding of `old * decay - step`: a few ulps of the larger of the two.
                let tol = 1e-6 * (f64::from(before[i][j]).abs() + lr);
                assert!(
                    (f64::from(weights[i][j]) - th).abs() <= tol,
                    "{what}: theta {} vs {th}",
                    weights[i][j]
                );
                close(f64::from(adam.m[i][j]), mm, 1e-5, &format!("{what}: m"));
                close(f64::from(adam.v[i][j]), vv, 1e-5, &format!("{what}: v"));
            }
            // Norms: of the raw (unscaled) gradient, the new weights, and the change.
            let s = stats[i];
            close(
                f64::from(s.grad_norm),
                norm(grads[i].iter().map(|&g| f64::from(g))),
                1e-5,
                "grad norm",
            );
            close(
                f64::from(s.weight_norm),
                norm(theta[i].iter().copied()),
                1e-5,
                "weight norm after the update",
            );
            let update = norm(
                weights[i]
                    .iter()
                    .zip(&before[i])
                    .map(|(&a, &b)| f64::from(a) - f64::from(b)),
            );
            close(f64::from(s.update_norm), update, 1e-4, "update norm");
            let update_by_hand = norm(
                theta[i]
                    .iter()
                    .zip(&before[i])
                    .map(|(&a, &b)| a - f64::from(b)),
            );
            close(
                f64::from(s.update_norm),
                update_by_hand,
                1e-3,
                "update norm by hand",
            );
        }
    }
}

#[test]
fn two_adamw_steps_match_pytorch_formula_with_weight_decay() {
    // A large lr and weight decay so the decoupled decay is far above rounding.
    check_two_steps(&config(0.05, 0.5), [0.05, 0.05], 1.0);
}

#[test]
fn adamw_at_the_defaults() {
    check_two_steps(&config(1e-3, 1.0), [1e-3, 1e-3], 1.0);
}

#[test]
fn adamw_with_warm_up_learning_rates_and_clipped_gradients() {
    let mut cfg = config(0.02, 0.1);
    cfg.warmup_steps = 4;
    cfg.grad_clip = Some(0.5);
    // The lr of each step is passed in (lr_at), and the scale multiplies the gradient only.
    check_two_steps(&cfg, [cfg.lr_at(0), cfg.lr_at(1)], 0.3);
}

#[test]
fn without_weight_decay_a_zero_gradient_leaves_the_weight_alone() {
    let cfg = config(0.1, 0.0);
    let mut adam = AdamW::new(&[3]);
    let mut w = vec![0.5f32, -2.0, 3.0];
    let stats = adam.update(
        &cfg,
        0.1,
        &mut [w.as_mut_slice()],
        &[vec![0.0, 0.0, 0.0]],
        1.0,
    );
    assert_eq!(w, [0.5, -2.0, 3.0]);
    assert_eq!(stats[0].update_norm, 0.0);
    // With decay, the same step shrinks the weights by exactly (1 - lr * wd).
    let cfg = config(0.1, 0.5);
    let mut adam = AdamW::new(&[3]);
    let stats = adam.update(
        &cfg,
        0.1,
        &mut [w.as_mut_slice()],
        &[vec![0.0, 0.0, 0.0]],
        1.0,
    );
    for (x, orig) in w.iter().zip([0.5f64, -2.0, 3.0]) {
        close(f64::from(*x), orig * 0.95, 1e-6, "decayed weight");
    }
    close(
        f64::from(stats[0].update_norm),
        0.05 * norm([0.5f64, -2.0, 3.0].into_iter()),
        1e-5,
        "decay-only update",
    );
}

#[test]
fn the_first_step_moves_each_weight_by_about_lr() {
    // After one step m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps): lr times
    // the sign, whatever the gradient's size (eps aside).
    let cfg = config(0.01, 0.0);
    let mut adam = AdamW::new(&[4]);
    let mut w = vec![0.0f32; 4];
    adam.update(
        &cfg,
        0.01,
        &mut [w.as_mut_slice()],
        &[vec![1e3, -1e-2, 1e-4, -1e-8]],
        1.0,
    );
    let expected = [
        -0.01,
        0.01,
        -0.01 * 1e-4 / (1e-4 + 1e-8),
        0.01 * 1e-8 / (1e-8 + 1e-8),
    ];
    for (x, e) in w.iter().zip(expected) {
        close(f64::from(*x), e, 1e-5, "first step");
    }
}

#[test]
fn warm_up_is_linear_then_constant() {
    let mut cfg = config(1e-3, 1.0);
    for t in [0, 1, 10, 1000] {
        assert_eq!(cfg.lr_at(t), 1e-3, "no warm-up by default");
    }
    cfg.warmup_steps = 10;
    for t in 0..30u64 {
        let expected = 1e-3 * ((t + 1) as f64 / 10.0).min(1.0);
        close(cfg.lr_at(t), expected, 1e-12, &format!("lr_at({t})"));
    }
    close(cfg.lr_at(0), 1e-4, 1e-12, "first warm-up step");
    assert_eq!(cfg.lr_at(9), 1e-3);
}

#[test]
fn clip_scale_is_max_norm_over_norm_above_the_threshold_only() {
    let mut cfg = config(1e-3, 1.0);
    for g in [0.0, 0.5, 1e6] {
        assert_eq!(cfg.clip_scale(g), 1.0, "no clipping by default");
    }
    cfg.grad_clip = Some(2.0);
    assert_eq!(cfg.clip_scale(0.5), 1.0);
    assert_eq!(cfg.clip_scale(2.0), 1.0);
    // PyTorch's clip_grad_norm_: max_norm / (total_norm + 1e-6).
    close(
        f64::from(cfg.clip_scale(8.0)),
        2.0 / (8.0 + 1e-6),
        1e-6,
        "clip at 8",
    );
    close(f64::from(cfg.clip_scale(1e4)), 2e-4, 1e-5, "clip at 1e4");
}

/// Weights and gradients around 3e19 are finite in f32, but their squares are not: the norms
/// must still come out finite and right (squares and sums in f64).
#[test]
fn norms_of_huge_finite_values_do_not_overflow() {
    let big = 3e19f32;
    // 37 elements: two vectorised groups and a remainder.
    let n = 37;
    let mut theta = vec![big; n];
    let grad = vec![-big; n];
    let mut adam = AdamW::new(&[n]);
    let cfg = config(1e-3, 0.0);
    let stats = adam.update(
        &cfg,
        1e-3,
        &mut [theta.as_mut_slice()],
        std::slice::from_ref(&grad),
        1.0,
    );
    let expected_grad = norm(grad.iter().map(|&g| f64::from(g)));
    assert!(expected_grad.is_finite() && expected_grad < f64::from(f32::MAX));
    close(
        f64::from(stats[0].grad_norm),
        expected_grad,
        1e-6,
        "grad norm",
    );
    let expected_weight = norm(theta.iter().map(|&w| f64::from(w)));
    close(
        f64::from(stats[0].weight_norm),
        expected_weight,
        1e-6,
        "weight norm",
    );
    assert!(theta.iter().all(|w| w.is_finite()));
    close(
        digitlab::optim::sum_of_squares(&grad),
        n as f64 * f64::from(big) * f64::from(big),
        1e-12,
        "sum of squares",
    );
}
