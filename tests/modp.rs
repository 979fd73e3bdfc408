//! Modular addition (docs/metrics.md, 'The task'): the seeded split (sizes, disjoint, covering
//! the p² pairs, a function of the seed), the labels and tokens against integer arithmetic
//! written here, the config (an addition config still serialises and hashes as before the task
//! existed), a short full-batch training run whose memorisation shows in the log (training
//! loss far below ln p while the test loss stays near it), resume byte-identity, and every bad
//! input of `train --task modp` refused with exit status 2 before anything is written.

mod common;

use std::collections::HashSet;

use digitlab::config::TrainConfig;
use digitlab::modp::ModpTask;
use digitlab::task::{training_batch, Layout, TaskConfig};

fn task(p: usize, train_fraction: f64) -> ModpTask {
    ModpTask {
        p,
        train_fraction,
        eval_every: 100,
    }
}

#[test]
fn split_sizes_are_disjoint_cover_every_pair_and_follow_the_seed() {
    for (p, fraction) in [(113, 0.3), (23, 0.5), (7, 0.1), (3, 0.9)] {
        let t = task(p, fraction);
        let split = t.split(0);
        let want_train = (fraction * (p * p) as f64).round() as usize;
        assert_eq!(split.train.len(), want_train, "p {p}");
        assert_eq!(split.test.len(), p * p - want_train, "p {p}");
        let train: HashSet<_> = split.train.iter().copied().collect();
        let test: HashSet<_> = split.test.iter().copied().collect();
        assert_eq!(train.len(), split.train.len(), "no repeats");
        assert!(train.is_disjoint(&test));
        let all: HashSet<(u32, u32)> = (0..p as u32)
            .flat_map(|x| (0..p as u32).map(move |y| (x, y)))
            .collect();
        assert_eq!(
            train.union(&test).copied().collect::<HashSet<_>>(),
            all,
            "p {p}"
        );
        assert_eq!(t.split(0), split, "a function of the seed");
    }
    let t = task(113, 0.3);
    assert_ne!(
        t.split(0).train,
        t.split(1).train,
        "another seed, another split"
    );
    // Not an ordered block of the grid: the training set reaches every x.
    let xs: HashSet<u32> = t.split(0).train.iter().map(|&(x, _)| x).collect();
    assert_eq!(xs.len(), 113);
}

#[test]
fn labels_tokens_and_the_training_batch() {
    let t = task(23, 0.3);
    let split = t.split(5);
    let cfg = TaskConfig::modp(23, 0.3, 100);
    let batch = training_batch(&cfg, 5, 17, t.n_train());
    assert_eq!(batch.examples, split.train.len());
    assert_eq!(batch.tokens.len(), 3 * split.train.len());
    for (i, &(x, y)) in split.train.iter().enumerate() {
        assert_eq!(batch.tokens[3 * i..3 * i + 3], [x, y, 23]);
        // (x + y) mod p by subtraction, not by `%`.
        let sum = x + y;
        let want = if sum >= 23 { sum - 23 } else { sum };
        assert_eq!(batch.targets[i], want);
        assert_eq!(t.label(x, y), want);
    }
    assert_eq!(
        training_batch(&cfg, 5, 0, t.n_train()),
        batch,
        "full batch: every epoch is the training set"
    );
    assert_eq!(cfg.n_ctx(), 3);
    assert_eq!(cfg.predicting_position(0), 2);
    assert_eq!(cfg.d_vocab(), 24);
}

#[test]
fn modp_config_has_p_plus_one_inputs_p_outputs_and_full_batch() {
    let cfg = TrainConfig::default_for(TaskConfig::modp(113, 0.3, 100), 128, 4);
    cfg.validate().unwrap();
    assert_eq!(
        (cfg.model.d_vocab, cfg.model.d_vocab_out, cfg.model.n_ctx),
        (114, 113, 3)
    );
    assert_eq!(cfg.batch_size, 3831);
    assert!(cfg.fused_step_applies());
    let json = serde_json::to_value(&cfg).unwrap();
    assert_eq!(
        json["task"]["modp"],
        serde_json::json!({"p": 113, "train_fraction": 0.3, "eval_every": 100})
    );
    let back: TrainConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, cfg);
    let mut wrong = cfg.clone();
    wrong.batch_size = 128;
    assert!(wrong
        .validate()
        .unwrap_err()
        .to_string()
        .contains("full-batch"));
}

/// An addition config as `main` wrote it before modular addition existed (a literal), whose
/// hash must not change: runs trained before keep opening.
#[test]
fn addition_configs_serialise_and_hash_as_before() {
    let old = r#"{"digitlab_version":"0.1.0","task":{"n_digits":5,"layout":"prompt","targets":[0]},"model":{"n_layers":1,"d_model":128,"n_heads":4,"d_mlp":512,"d_vocab":12,"d_vocab_out":12,"n_ctx":12},"optimizer":{"lr":0.001,"beta1":0.9,"beta2":0.98,"eps":1e-8,"weight_decay":1.0,"warmup_steps":0,"grad_clip":null},"batch_size":128,"steps":3000,"seed":0,"snapshot_every":50,"checkpoint_every":500}"#;
    let old_value: serde_json::Value = serde_json::from_str(old).unwrap();
    let cfg: TrainConfig = serde_json::from_value(old_value.clone()).unwrap();
    assert_eq!(cfg.task.modp, None);
    assert_eq!(cfg.task.layout, Layout::Prompt);
    assert_eq!(serde_json::to_value(&cfg).unwrap(), old_value);
    assert_eq!(
        cfg.trajectory_hash(),
        digitlab_snapshots::run_config_hash(&old_value)
    );
    let mut fresh = TrainConfig::default_for(
        TaskConfig {
            n_digits: 5,
            layout: Layout::Prompt,
            targets: vec![0],
            modp: None,
        },
        128,
        4,
    );
    fresh.digitlab_version = "0.1.0".into();
    assert_eq!(fresh, cfg);
}

use common::train as train_bin;

/// A few hundred epochs at p = 23 (half the pairs for training) memorise the training set: the
/// training loss falls far below ln 23 while the test loss, logged every 50 epochs and null in
/// between, stays high. The log's numbers are checked against the log itself (ln p at the
/// start, checked in f64 here).
/// The options of the short run (p = 23, half the pairs for training, test loss every 50
/// epochs, a small model), without the step count and the run directory.
const SHORT_RUN: [&str; 18] = [
    "--task",
    "modp",
    "--p",
    "23",
    "--train-fraction",
    "0.5",
    "--eval-every",
    "50",
    "--d-model",
    "32",
    "--n-heads",
    "4",
    "--snapshot-every",
    "100",
    "--checkpoint-every",
    "200",
    "--weight-decay",
    "1",
];

/// A few hundred epochs at p = 23 memorise the training set: the training loss falls far below
/// ln 23 (checked in f64 here) while the test loss, logged every 50 epochs and null in between,
/// stays high. A run stopped at epoch 250 and resumed to 400 from its checkpoint at 200 ends
/// with the same bytes.
#[test]
fn a_short_run_memorises_and_the_log_shows_it() {
    let root = common::scratch("memorise");
    let dir = root.join("m");
    let run = |steps: &str, dir: &std::path::Path| {
        let out = train_bin()
            .args(SHORT_RUN)
            .args(["--steps", steps, "-q"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("400", &dir);
    let log = common::log_rows(&dir);
    assert_eq!(log.len(), 400);
    let loss: Vec<f32> = log.iter().map(|r| r.loss).collect();
    let test: Vec<Option<f32>> = log.iter().map(|r| r.test_loss).collect();
    let ln_p = (23f64).ln();
    assert!(
        (f64::from(loss[0]) - ln_p).abs() < 0.5,
        "starts near ln p: {}",
        loss[0]
    );
    for (i, t) in test.iter().enumerate() {
        assert_eq!(t.is_some(), i % 50 == 0, "test loss at epoch {i}: {t:?}");
    }
    let last_train = f64::from(loss[399]);
    let last_test = f64::from(test[350].unwrap());
    assert!(last_train < 0.1, "memorised: train loss {last_train}");
    assert!(
        last_test > ln_p && last_test > 10.0 * last_train,
        "not generalised yet: test {last_test} vs train {last_train}"
    );

    let copy = root.join("copy");
    run("250", &copy);
    let out = train_bin()
        .args(["--resume"])
        .arg(&copy)
        .args(["--steps", "400", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "train_log.parquet",
        "snapshots/batch-000400.safetensors.zst",
    ] {
        let same =
            std::fs::read(dir.join(file)).unwrap() == std::fs::read(copy.join(file)).unwrap();
        assert!(same, "{file} differs after resume");
    }
}

#[test]
fn bad_input_is_refused_with_status_2_and_nothing_written() {
    let root = common::scratch("bad-modp");
    let cases: &[(&[&str], &str)] = &[
        (&["--task", "modp", "--p", "2"], "--p must be between 3"),
        (&["--task", "modp", "--p", "0"], "--p must be between 3"),
        (
            &["--task", "modp", "--train-fraction", "0"],
            "--train-fraction must be strictly between 0 and 1",
        ),
        (
            &["--task", "modp", "--train-fraction", "1"],
            "--train-fraction must be strictly between 0 and 1",
        ),
        (
            &["--task", "modp", "--train-fraction", "-0.2"],
            "--train-fraction must be strictly between 0 and 1",
        ),
        (
            &["--task", "modp", "--train-fraction", "1.5"],
            "--train-fraction must be strictly between 0 and 1",
        ),
        (
            &["--task", "modp", "--train-fraction", "NaN"],
            "--train-fraction must be strictly between 0 and 1",
        ),
        (
            &["--task", "modp", "--p", "3", "--train-fraction", "0.01"],
            "leaves the training or the test set empty",
        ),
        (
            &["--task", "modp", "--eval-every", "0"],
            "--eval-every must be at least 1",
        ),
        (
            &["--task", "modp", "--digit", "1"],
            "--digit cannot be used with --task modp",
        ),
        (
            &["--task", "modp", "--digits", "all"],
            "--digits cannot be used with --task modp",
        ),
        (
            &["--task", "modp", "--layout", "answer"],
            "--layout cannot be used with --task modp",
        ),
        (
            &["--task", "modp", "--n-digits", "3"],
            "--n-digits cannot be used with --task modp",
        ),
        (
            &["--task", "modp", "--batch-size", "64"],
            "--batch-size cannot be used with --task modp",
        ),
        (&["--p", "7"], "--p only apply to --task modp"),
        (
            &["--train-fraction", "0.5"],
            "--train-fraction only apply to --task modp",
        ),
    ];
    for (i, (args, message)) in cases.iter().enumerate() {
        let dir = root.join(format!("bad{i}"));
        let out = train_bin()
            .args(*args)
            .arg(&dir)
            .arg("-q")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!dir.exists(), "{args:?} wrote {}", dir.display());
    }
}
