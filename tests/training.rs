//! The training loop of the library (`TrainState`): training the units digit at the defaults
//! (d_model 128, 4 heads, batch 128, lr 1e-3, wd 1.0, seed 0) drops the loss below 0.01 within
//! 1000 steps; a checkpoint round trip (in memory, and through a checkpoint file of a run
//! directory) continues bit for bit; every n and both layouts train; and a log row's numbers
//! (loss, per-digit losses, logsumexp, norms, lr) agree with an f64 computation written here
//! from the model's own logits and the weights before and after the step; and snapshots every
//! 5 batches, faster than the writer rewrites the log, are all listed with a complete log.

mod common;

use common::{one_thread, scratch};

use candle_core::{Device, Tensor};
use digitlab::config::TrainConfig;
use digitlab::model::{Hooks, Transformer};
use digitlab::task::{training_batch, Layout, TaskConfig};
use digitlab::train::TrainState;
use digitlab_snapshots::RunDir;

fn config(task: TaskConfig, d_model: usize, n_heads: usize, batch_size: usize) -> TrainConfig {
    let mut cfg = TrainConfig::default_for(task, d_model, n_heads);
    cfg.batch_size = batch_size;
    cfg.validate().unwrap();
    cfg
}

fn units_digit() -> TaskConfig {
    TaskConfig {
        n_digits: 5,
        layout: Layout::Prompt,
        targets: vec![0],
        modp: None,
    }
}

fn bits(state: &TrainState) -> Vec<Vec<u32>> {
    let mut all: Vec<Vec<u32>> = state
        .params
        .iter()
        .map(|p| p.data.iter().map(|x| x.to_bits()).collect())
        .collect();
    all.extend(
        state
            .adam
            .m
            .iter()
            .chain(&state.adam.v)
            .map(|t| t.iter().map(|x| x.to_bits()).collect()),
    );
    all
}

#[test]
fn units_digit_at_the_defaults_trains_below_0_01_within_1000_steps() {
    one_thread();
    let cfg = TrainConfig::default_for(units_digit(), 128, 4);
    assert_eq!(
        (
            cfg.model.d_model,
            cfg.model.n_heads,
            cfg.model.d_mlp,
            cfg.batch_size,
            cfg.seed
        ),
        (128, 4, 512, 128, 0)
    );
    assert_eq!(
        (
            cfg.optimizer.lr,
            cfg.optimizer.weight_decay,
            cfg.optimizer.beta1,
            cfg.optimizer.beta2
        ),
        (1e-3, 1.0, 0.9, 0.98)
    );
    let mut state = TrainState::new(&cfg);
    let mut losses = Vec::new();
    while state.batch < 1000 {
        let row = state.step(&cfg).unwrap();
        assert_eq!(row.batch + 1, state.batch);
        assert!(
            row.loss.is_finite(),
            "loss {} at batch {}",
            row.loss,
            row.batch
        );
        losses.push(row.loss);
        if row.loss < 0.01 {
            break;
        }
    }
    let first = losses[0];
    let last = *losses.last().unwrap();
    // It starts near chance (ln 10 on the digits, or a bit above with 12 outputs)...
    assert!((1.5..4.0).contains(&first), "initial loss {first}");
    // ...and ends below 0.01 before batch 1000.
    assert!(
        last < 0.01,
        "loss still {last} after {} steps",
        losses.len()
    );
    eprintln!("units digit: loss below 0.01 after {} steps", losses.len());
}

fn check_round_trip(cfg: &TrainConfig, name: &str) {
    let mut original = TrainState::new(cfg);
    for _ in 0..7 {
        original.step(cfg).unwrap();
    }
    let checkpoint = original.to_checkpoint(cfg);
    assert_eq!(checkpoint.batch, 7);

    // In memory.
    let restored = TrainState::from_checkpoint(cfg, checkpoint.clone()).unwrap();
    assert_eq!(restored.batch, 7);
    assert_eq!(restored.adam.step, 7);
    assert_eq!(bits(&restored), bits(&original));

    // Through a checkpoint file (which comes back with its tensors sorted by name).
    let dir = scratch(name).join("run");
    let mut run = RunDir::create(&dir, &serde_json::to_value(cfg).unwrap()).unwrap();
    let entry = run.write_checkpoint(&checkpoint).unwrap();
    let reopened = RunDir::open(&dir).unwrap();
    assert_eq!(
        reopened.manifest().checkpoints,
        std::slice::from_ref(&entry)
    );
    let from_file =
        TrainState::from_checkpoint(cfg, reopened.read_checkpoint(&entry).unwrap()).unwrap();
    assert_eq!(bits(&from_file), bits(&original));

    let mut continued = original.clone();
    let mut rows = Vec::new();
    for _ in 0..5 {
        rows.push(continued.step(cfg).unwrap());
    }
    for mut resumed in [restored, from_file] {
        for row in &rows {
            assert_eq!(
                &resumed.step(cfg).unwrap(),
                row,
                "log row of batch {}",
                row.batch
            );
        }
        assert_eq!(resumed.batch, 12);
        assert_eq!(
            bits(&resumed),
            bits(&continued),
            "params and moments after 5 more steps"
        );
    }
    // The steps did change the weights (the comparison above is not vacuous).
    assert_ne!(bits(&continued), bits(&original));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoint_round_trip_continues_bit_for_bit() {
    one_thread();
    check_round_trip(&config(units_digit(), 16, 2, 32), "prompt");
    // The general path too: two layers, answer layout, several digits.
    let answer = TaskConfig {
        n_digits: 3,
        layout: Layout::Answer,
        targets: vec![0, 2, 3],
        modp: None,
    };
    let mut cfg = config(answer, 8, 2, 16);
    cfg.model.n_layers = 2;
    cfg.optimizer.warmup_steps = 10;
    check_round_trip(&cfg, "answer");
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    one_thread();
    let cfg = config(units_digit(), 16, 2, 8);
    let other = config(units_digit(), 8, 2, 8);
    let checkpoint = TrainState::new(&other).to_checkpoint(&other);
    let err = TrainState::from_checkpoint(&cfg, checkpoint)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn every_n_and_both_layouts_train() {
    one_thread();
    for n in 1..=9 {
        for (layout, targets, n_layers) in [
            (Layout::Prompt, vec![0], 1),
            (Layout::Prompt, vec![n], 2),
            (Layout::Answer, (0..=n).collect(), 1),
        ] {
            let task = TaskConfig {
                n_digits: n,
                layout,
                targets,
                modp: None,
            };
            let mut cfg = config(task.clone(), 8, 2, 16);
            cfg.model.n_layers = n_layers;
            let mut state = TrainState::new(&cfg);
            let first = state
                .step(&cfg)
                .unwrap_or_else(|e| panic!("{task:?}, {n_layers} layers: {e}"));
            assert!(
                first.loss.is_finite() && first.loss > 0.5,
                "{task:?}: loss {}",
                first.loss
            );
            assert_eq!(first.digit_loss.len(), task.targets.len());
            assert_eq!(state.batch, 1);
        }
    }
}

/// Mean cross-entropy, mean and max logsumexp of `[rows, outputs]` logits, in f64.
fn ce_and_lse(logits: &[f32], outputs: usize, targets: &[u32]) -> (f64, f64, f64) {
    let (mut ce, mut lse_sum, mut lse_max) = (0.0, 0.0, f64::NEG_INFINITY);
    for (row, &t) in logits.chunks(outputs).zip(targets) {
        let row: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        ce += lse - row[t as usize];
        lse_sum += lse;
        lse_max = lse_max.max(lse);
    }
    let n = targets.len() as f64;
    (ce / n, lse_sum / n, lse_max)
}

fn close(a: f32, b: f64, rel: f64, what: &str) {
    assert!(
        (f64::from(a) - b).abs() <= rel * b.abs().max(1e-12),
        "{what}: {a} vs {b}"
    );
}

#[test]
fn log_row_agrees_with_an_independent_computation() {
    one_thread();
    let task = TaskConfig {
        n_digits: 4,
        layout: Layout::Answer,
        targets: vec![0, 2, 4],
        modp: None,
    };
    let mut cfg = config(task.clone(), 16, 4, 64);
    cfg.optimizer.warmup_steps = 5;
    let mut state = TrainState::new(&cfg);
    for _ in 0..3 {
        state.step(&cfg).unwrap();
    }
    let before = state.params.clone();
    let row = state.step(&cfg).unwrap();
    assert_eq!(row.batch, 3);
    close(row.lr, 1e-3 * 4.0 / 5.0, 1e-6, "warm-up lr at batch 3");

    // The model's logits at the predicting positions of batch 3, with the weights before the step.
    let model = Transformer::from_params(&cfg.model, &before, &Device::Cpu).unwrap();
    let batch = training_batch(&task, cfg.seed, 3, cfg.batch_size);
    let tokens =
        Tensor::from_slice(&batch.tokens, (cfg.batch_size, task.n_ctx()), &Device::Cpu).unwrap();
    let positions: Vec<usize> = task
        .targets
        .iter()
        .map(|&k| task.predicting_position(k))
        .collect();
    let logits = model
        .logits_at(&tokens, &positions, &mut Hooks::none())
        .unwrap();
    let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let targets: Vec<u32> = batch
        .pairs
        .iter()
        .flat_map(|p| {
            let s = p.sum_digits();
            task.targets.iter().map(move |&k| u32::from(s[k]))
        })
        .collect();
    let out = cfg.model.d_vocab_out;
    let (loss, lse_mean, lse_max) = ce_and_lse(&logits, out, &targets);
    close(row.loss, loss, 1e-5, "loss");
    close(row.logsumexp_mean, lse_mean, 1e-5, "logsumexp mean");
    close(row.logsumexp_max, lse_max, 1e-5, "logsumexp max");
    assert_eq!(
        row.saturated_fraction, 0.0,
        "nothing is saturated after 3 steps"
    );
    let k = task.targets.len();
    for (i, &digit) in task.targets.iter().enumerate() {
        let rows: Vec<f32> = logits
            .chunks(out)
            .skip(i)
            .step_by(k)
            .flatten()
            .copied()
            .collect();
        let t: Vec<u32> = targets.iter().skip(i).step_by(k).copied().collect();
        close(
            row.digit_loss[i],
            ce_and_lse(&rows, out, &t).0,
            1e-5,
            &format!("loss of digit {digit}"),
        );
    }

    // Per-tensor norms: weights after the step, change made by the step; the global gradient
    // norm is the root of the summed squares of the per-tensor ones.
    let trained: Vec<usize> = cfg
        .model
        .param_specs()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.trained)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(row.tensors.len(), trained.len());
    let norm = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>().sqrt();
    let mut grad_sq = 0.0;
    for (stats, &i) in row.tensors.iter().zip(&trained) {
        let name = &state.params[i].name;
        let after = &state.params[i].data;
        close(
            stats.weight_norm,
            norm(&mut after.iter().map(|&x| f64::from(x))),
            1e-5,
            &format!("weight norm {name}"),
        );
        let change = norm(
            &mut after
                .iter()
                .zip(&before[i].data)
                .map(|(&a, &b)| f64::from(a) - f64::from(b)),
        );
        close(
            stats.update_norm,
            change,
            1e-4,
            &format!("update norm {name}"),
        );
        assert!(stats.grad_norm > 0.0, "{name}");
        grad_sq += f64::from(stats.grad_norm).powi(2);
    }
    close(row.grad_norm, grad_sq.sqrt(), 1e-5, "global gradient norm");
}

/// Snapshots every 5 batches of a small model come far faster than the log can be rewritten;
/// the writer gathers them. Every snapshot and checkpoint is listed, the log has every batch,
/// and its rows are those of a run that saved its weights only at the end.
#[test]
fn frequent_snapshots_are_all_written_and_the_log_is_complete() {
    let steps = 400;
    let run = |snapshot_every: u64| {
        let mut cfg = config(units_digit(), 16, 1, 16);
        cfg.steps = steps;
        cfg.snapshot_every = snapshot_every;
        cfg.checkpoint_every = 10 * snapshot_every;
        let dir = scratch(&format!("frequent-snapshots-{snapshot_every}"));
        let (run, state, log) = digitlab::train::new_run(&cfg, &dir.join("run")).unwrap();
        digitlab::train::train(&cfg, run, state, log, false).unwrap();
        let run = RunDir::open(&dir.join("run")).unwrap();
        let batches = |files: &[digitlab_snapshots::FileEntry]| -> Vec<u64> {
            files.iter().map(|f| f.batch).collect()
        };
        let expected: Vec<u64> = (0..=steps).step_by(snapshot_every as usize).collect();
        assert_eq!(batches(&run.manifest().snapshots), expected);
        let checkpoints: Vec<u64> = (0..=steps)
            .filter(|b| b % (10 * snapshot_every) == 0 || *b == steps)
            .collect();
        assert_eq!(batches(&run.manifest().checkpoints), checkpoints);
        let log = run.read_train_log().unwrap().expect("the log is written");
        let rows: Vec<u64> = log.rows.iter().map(|r| r.batch).collect();
        assert_eq!(rows, (0..steps).collect::<Vec<_>>());
        log.rows
    };
    assert_eq!(
        run(5),
        run(steps),
        "the log's rows depend on how often weights were saved"
    );
}
