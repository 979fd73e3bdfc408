//! What the analyses read from a model (a digit's logits and MLP activations at its predicting
//! position), which `analyze` computes from the prefix ending at that position (through the
//! last-position path for one layer), against the general forward pass over the whole sequence
//! (`common::reference`): both layouts, every digit, one and two layers, to 1e-5.

mod common;

use candle_core::Device;
use common::{eval_examples, reference_logits, reference_mlp_post};
use digitlab::config::TrainConfig;
use digitlab::model::Transformer;
use digitlab::task::{Layout, TaskConfig};
use digitlab_analysis::activations::{digit_logits, mlp_post_at_prediction};

/// `got` (`[example][value]` flattened) against the reference rows, to 1e-5 of the largest.
fn assert_close(got: &[f32], want: &[Vec<f64>], what: &str) {
    let want: Vec<f64> = want.concat();
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    for (i, (&g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-5 * scale,
            "{what}: element {i}: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn digit_logits_and_mlp_activations_match_the_whole_sequence_forward_pass() {
    let tasks = [
        TaskConfig {
            n_digits: 3,
            layout: Layout::Answer,
            targets: vec![0, 1, 2, 3],
            modp: None,
        },
        TaskConfig {
            n_digits: 2,
            layout: Layout::Prompt,
            targets: vec![1],
            modp: None,
        },
    ];
    for task in tasks {
        for n_layers in [1, 2] {
            let mut cfg = TrainConfig::default_for(task.clone(), 16, 2);
            cfg.model.n_layers = n_layers;
            let mut params = cfg.model.init_params(3);
            // Nonzero biases, so that the paths that carry them are exercised.
            for p in params.iter_mut().filter(|p| p.name.contains(".b_")) {
                for (i, x) in p.data.iter_mut().enumerate() {
                    *x = 0.3 * (i as f32 * 0.7).sin();
                }
            }
            let model = Transformer::from_params(&cfg.model, &params, &Device::Cpu).unwrap();
            for &k in &cfg.task.targets {
                let (set, examples) = eval_examples(&cfg, k);
                let what = format!("{:?} layers {n_layers} digit {k}", task.layout);
                assert_close(
                    &digit_logits(&cfg, &model, &set).unwrap(),
                    &reference_logits(&cfg, &model, &examples, k),
                    &format!("{what}: logits"),
                );
                assert_close(
                    &mlp_post_at_prediction(&cfg, &model, &set).unwrap(),
                    &reference_mlp_post(&cfg, &model, &examples, k),
                    &format!("{what}: mlp post"),
                );
            }
        }
    }
}
