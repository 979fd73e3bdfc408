//! `analyze spikes` on real runs: a spike injected by scaling one head's W_Q is found at its
//! batch and attributed to that head first by both LCA and revert-one; the replay reproduces
//! the logged losses bit for bit; LCA adds up to the loss change on ordinary steps; a run
//! without a training log or without a checkpoint before the spike gets a clear error.

use std::path::{Path, PathBuf};

use digitlab::config::{Perturbation, TrainConfig};
use digitlab::task::{Layout, TaskConfig};
use digitlab::train::{new_run, train, TrainState};
use digitlab_analysis::attribution::{
    allocate_step, parameter_groups, EvalLoss, LCA_FLOOR, LCA_TOLERANCE,
};
use digitlab_analysis::eval_set::EvalSet;
use digitlab_analysis::replay::Run;
use digitlab_analysis::spike_detection::SpikeOptions;
use digitlab_analysis::spikes::{analyze_spikes, SpikeAnalysisOptions};
use digitlab_snapshots::{read_parquet, RunDir};

fn config(steps: u64, perturbation: Option<Perturbation>) -> TrainConfig {
    let task = TaskConfig {
        n_digits: 5,
        layout: Layout::Prompt,
        targets: vec![0],
    };
    let mut cfg = TrainConfig::default_for(task, 128, 4);
    cfg.steps = steps;
    cfg.checkpoint_every = 100;
    cfg.perturbation = perturbation;
    cfg
}

fn make_run(name: &str, cfg: &TrainConfig) -> PathBuf {
    digitlab::threads::set_threads(1);
    let dir = std::env::temp_dir().join(format!("digitlab-spikes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (run, state, log) = new_run(cfg, &dir).unwrap();
    train(cfg, run, state, log, false).unwrap();
    dir
}

fn options() -> SpikeAnalysisOptions {
    SpikeAnalysisOptions {
        detection: SpikeOptions::default(),
        contexts: 5,
        eval_seed: 7,
        max_attributed: 3,
    }
}

fn text_column(df: &polars::prelude::DataFrame, name: &str) -> Vec<String> {
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap_or("").to_string())
        .collect()
}

fn float_column(df: &polars::prelude::DataFrame, name: &str) -> Vec<f64> {
    df.column(name)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect()
}

#[test]
fn an_injected_spike_is_found_and_attributed_to_its_head() {
    let head = "blocks.0.attn.W_Q[1]";
    let cfg = config(
        900,
        Some(Perturbation {
            batch: 700,
            group: head.into(),
            factor: 10.0,
        }),
    );
    let dir = make_run("injected", &cfg);
    let run = Run::open(&dir).unwrap();
    let report = analyze_spikes(&run, &options()).unwrap();
    assert!(report.iter().any(|l| l.contains(head)), "{report:?}");

    let spikes = read_parquet(&run.dir.analysis_path("spikes")).unwrap();
    let onsets: Vec<i64> = spikes
        .column("onset")
        .unwrap()
        .i64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert!(
        onsets.iter().any(|&o| (699..=701).contains(&o)),
        "onsets {onsets:?}"
    );

    let attribution = read_parquet(&run.dir.analysis_path("spike_attribution")).unwrap();
    let (groups, methods, phases) = (
        text_column(&attribution, "group"),
        text_column(&attribution, "method"),
        text_column(&attribution, "phase"),
    );
    let values = float_column(&attribution, "value");
    let spike_ids: Vec<i64> = attribution
        .column("spike")
        .unwrap()
        .i64()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    let injected = spike_ids[values.iter().position(|_| true).unwrap()];
    let best = |method: &str, phase: &str, largest: bool| {
        let mut rows: Vec<(String, f64)> = (0..values.len())
            .filter(|&i| {
                spike_ids[i] == injected
                    && methods[i] == method
                    && phases[i] == phase
                    && groups[i] != "all"
            })
            .map(|i| (groups[i].clone(), values[i]))
            .collect();
        rows.sort_by(|a, b| {
            if largest {
                b.1.total_cmp(&a.1)
            } else {
                a.1.total_cmp(&b.1)
            }
        });
        rows[0].0.clone()
    };
    assert_eq!(best("lca", "rise", true), head);
    assert_eq!(best("revert_one", "peak", false), head);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_reproduces_the_log_and_lca_adds_up_on_ordinary_steps() {
    let cfg = config(400, None);
    let dir = make_run("lca", &cfg);
    let run = RunDir::open(&dir).unwrap();
    let log = run.read_train_log().unwrap().unwrap();
    let entry = run
        .manifest()
        .checkpoints
        .iter()
        .find(|c| c.batch == 200)
        .unwrap()
        .clone();
    let mut state =
        TrainState::from_checkpoint(&cfg, run.read_checkpoint(&entry).unwrap()).unwrap();
    let set = EvalSet::new(&cfg.task, 0, 5, 3);
    let eval = EvalLoss {
        cfg: cfg.clone(),
        batch: &set.batch,
    };
    let groups = parameter_groups(&cfg);
    let mut before = state.params.clone();
    let mut point = eval.loss_and_grads(&before).unwrap();
    let mut steps_checked = 0;
    while state.batch < 230 {
        let row = state.step(&cfg).unwrap();
        assert_eq!(
            row.loss.to_bits(),
            log.rows[row.batch as usize].loss.to_bits(),
            "batch {}",
            row.batch
        );
        let next = eval.loss_and_grads(&state.params).unwrap();
        let a = allocate_step(&eval, &groups, &before, &state.params, &point, &next).unwrap();
        let change = a.loss_after - a.loss_before;
        let total: f64 = a.per_group.iter().sum();
        // Independent check of the endpoints: the allocation's losses are the eval losses.
        assert_eq!(a.loss_before, point.0);
        assert!(
            (total - change).abs() <= LCA_TOLERANCE * change.abs() + LCA_FLOOR,
            "step {}: {total} vs {change}",
            row.batch
        );
        before = state.params.clone();
        point = next;
        steps_checked += 1;
    }
    assert_eq!(steps_checked, 30);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn error_of(dir: &Path) -> String {
    let run = Run::open(dir).unwrap();
    match analyze_spikes(&run, &options()) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_log_or_checkpoint_is_a_clear_error() {
    let cfg = config(
        900,
        Some(Perturbation {
            batch: 700,
            group: "unembed.W_U".into(),
            factor: 4.0,
        }),
    );
    let dir = make_run("bad", &cfg);
    // No checkpoint before the spike: keep only the final one in the manifest.
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let checkpoints = manifest["checkpoints"].as_array_mut().unwrap();
    checkpoints.retain(|c| c["batch"].as_u64() == Some(900));
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let message = error_of(&dir);
    assert!(
        message.contains("checkpoint") && message.contains("--checkpoint-every"),
        "{message}"
    );
    // No training log.
    std::fs::remove_file(dir.join("train_log.parquet")).unwrap();
    let message = error_of(&dir);
    assert!(message.contains("train_log.parquet"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}
