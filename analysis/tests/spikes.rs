//! `analyze spikes` on real runs: a spike injected by scaling one head's W_Q is found at its
//! batch and attributed to that head first by both LCA and revert-one; the replay reproduces
//! the logged losses bit for bit; LCA adds up to the loss change on ordinary steps; a run
//! whose `config.json` names a kernel this machine does not run is replayed to a tolerance,
//! said once and marked `replay_exact = false`, and stops when a logged loss is beyond it; a
//! run without a training log or without a checkpoint before the spike gets a clear error.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{setup, train_run, Scratch};
use digitlab::config::{Perturbation, TrainConfig};
use digitlab::fused::{Kernel, Simd};
use digitlab::model::{Hooks, Transformer};
use digitlab::task::{Layout, TaskConfig};
use digitlab::train::TrainState;
use digitlab_analysis::analyses::spikes::{analyze_spikes, SpikeAnalysisOptions};
use digitlab_analysis::attribution::{allocate_step, EvalLoss, LCA_FLOOR, LCA_TOLERANCE};
use digitlab_analysis::eval_set::EvalSet;
use digitlab_analysis::metrics::spike_detection::SpikeOptions;
use digitlab_analysis::run::Run;
use digitlab_snapshots::{read_parquet, NamedTensor, RunDir};

fn config(steps: u64, perturbation: Option<Perturbation>) -> TrainConfig {
    let task = TaskConfig {
        n_digits: 5,
        layout: Layout::Prompt,
        targets: vec![0],
        modp: None,
    };
    let mut cfg = TrainConfig::default_for(task, 128, 4);
    cfg.steps = steps;
    cfg.checkpoint_every = 100;
    cfg.perturbation = perturbation;
    cfg
}

/// A 900-batch run whose `group` is scaled by `factor` at batch 700.
fn injected_spike(group: &str, factor: f32) -> TrainConfig {
    config(
        900,
        Some(Perturbation {
            batch: 700,
            group: group.into(),
            factor,
        }),
    )
}

/// Trains `cfg` into a fresh scratch folder; returns the folder and the run directory in it.
fn make_run(name: &str, cfg: &TrainConfig) -> (Scratch, PathBuf) {
    setup();
    let scratch = Scratch::new(&format!("spikes-{name}"));
    let dir = scratch.path().join("run");
    train_run(&dir, cfg);
    (scratch, dir)
}

/// The eval loss of the units digit at `params`, from the model's general forward pass (not
/// the training path the attribution uses) and a plain f64 cross-entropy.
fn eval_loss_by_hand(cfg: &TrainConfig, params: &[NamedTensor], set: &EvalSet) -> f64 {
    let model = Transformer::from_params(&cfg.model, params, &Device::Cpu).unwrap();
    let n_ctx = cfg.task.n_ctx();
    let tokens = Tensor::from_slice(&set.batch.tokens, (set.len(), n_ctx), &Device::Cpu).unwrap();
    let logits = model
        .forward(&tokens, &mut Hooks::none())
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let position = cfg.task.predicting_position(0);
    let mut sum = 0.0;
    for (example, labels) in logits.iter().zip(&set.labels) {
        let z: Vec<f64> = example[position].iter().map(|&x| f64::from(x)).collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        sum += lse - z[usize::from(labels.true_digit)];
    }
    sum / set.len() as f64
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

fn int_column(df: &polars::prelude::DataFrame, name: &str) -> Vec<i64> {
    df.column(name)
        .unwrap()
        .i64()
        .unwrap()
        .iter()
        .flatten()
        .collect()
}

/// `replay_exact` of the attributed spikes, and whether it is null on every other one.
fn replay_exact_of_attributed(df: &polars::prelude::DataFrame) -> (Vec<bool>, bool) {
    let attributed: Vec<bool> = df
        .column("attributed")
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .map(|a| a.unwrap())
        .collect();
    let exact: Vec<Option<bool>> = df
        .column("replay_exact")
        .unwrap()
        .bool()
        .unwrap()
        .iter()
        .collect();
    let of_attributed = (0..exact.len())
        .filter(|&i| attributed[i])
        .map(|i| exact[i].expect("an attributed spike has replay_exact"))
        .collect();
    let others_null = (0..exact.len()).all(|i| attributed[i] || exact[i].is_none());
    (of_attributed, others_null)
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
    let cfg = injected_spike(head, 10.0);
    let (_scratch, dir) = make_run("injected", &cfg);
    let run = Run::open(&dir).unwrap();
    let report = analyze_spikes(&run, &options()).unwrap();
    assert!(report.iter().any(|l| l.contains(head)), "{report:?}");

    let spikes = read_parquet(&run.dir.analysis_path("spikes")).unwrap();
    let (onsets, spike_of_table) = (int_column(&spikes, "onset"), int_column(&spikes, "spike"));
    // The spike the perturbation made: the one that opens at its batch.
    let injected = onsets
        .iter()
        .position(|o| (699..=701).contains(o))
        .map(|i| spike_of_table[i])
        .unwrap_or_else(|| panic!("no spike opens near batch 700; onsets {onsets:?}"));

    let attribution = read_parquet(&run.dir.analysis_path("spike_attribution")).unwrap();
    let (groups, methods, phases) = (
        text_column(&attribution, "group"),
        text_column(&attribution, "method"),
        text_column(&attribution, "phase"),
    );
    let values = float_column(&attribution, "value");
    let spike_ids = int_column(&attribution, "spike");
    assert!(
        spike_ids.contains(&injected),
        "the injected spike {injected} was not attributed (attributed: {spike_ids:?})"
    );
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
    // Replayed on the kernel that trained it: bit-exact, and said so in the table.
    assert!(run.cfg.replays_exactly_here());
    let (exact, others_null) = replay_exact_of_attributed(&spikes);
    assert!(!exact.is_empty() && exact.iter().all(|&e| e), "{exact:?}");
    assert!(others_null);
    assert!(
        !report.iter().any(|l| l.contains("bit for bit")),
        "{report:?}"
    );
}

/// The injected-spike run with `config.json` naming the same step on another instruction set
/// (the kernel is outside the config hash, so the run still opens): the replay here computes
/// the same bits, but cannot know it, so it is checked to the tolerance.
#[test]
fn a_run_of_another_kernel_is_replayed_to_a_tolerance_said_once_and_marked() {
    let cfg = injected_spike("blocks.0.attn.W_Q[1]", 10.0);
    let (_scratch, dir) = make_run("other-kernel", &cfg);
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    let here: Kernel = serde_json::from_value(config["kernel"].clone()).unwrap();
    assert_eq!(here, cfg.training_kernel());
    let other = Kernel {
        simd: if here.simd == Simd::Fma {
            Simd::Avx512
        } else {
            Simd::Fma
        },
        ..here
    };
    config["kernel"] = serde_json::Value::from(other.to_string());
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let run = Run::open(&dir).unwrap();
    assert!(!run.cfg.replays_exactly_here());
    let report = analyze_spikes(&run, &options()).unwrap();
    let notes: Vec<&String> = report
        .iter()
        .filter(|l| l.contains("bit for bit"))
        .collect();
    assert_eq!(notes.len(), 1, "said once: {report:?}");
    assert!(
        notes[0].contains(&other.to_string()) && notes[0].contains(&here.to_string()),
        "{}",
        notes[0]
    );
    let spikes = read_parquet(&run.dir.analysis_path("spikes")).unwrap();
    let (exact, others_null) = replay_exact_of_attributed(&spikes);
    assert!(!exact.is_empty() && exact.iter().all(|&e| !e), "{exact:?}");
    assert!(others_null);

    // A logged loss at a replayed batch moved within the tolerance still passes (a bit-exact
    // check would stop); moved beyond it, the analysis stops and says why.
    let relog = |factor: f32| {
        let locked = RunDir::open_locked(&dir).unwrap();
        let mut log = locked.read_train_log().unwrap().unwrap();
        log.rows[700].loss *= factor;
        locked.write_train_log(&log).unwrap();
    };
    relog(1.0 + 2e-5);
    analyze_spikes(&Run::open(&dir).unwrap(), &options()).unwrap();
    relog(1.0 + 1e-3);
    let message = error_of(&dir);
    assert!(
        message.contains("batch 700")
            && message.contains("relative")
            && message.contains(&other.to_string()),
        "{message}"
    );
}

#[test]
fn replay_reproduces_the_log_and_lca_adds_up_on_ordinary_steps() {
    let cfg = config(400, None);
    let (_scratch, dir) = make_run("lca", &cfg);
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
    let groups = cfg.model.param_groups();
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
        // The allocation's endpoints are the eval losses, as an f64 cross-entropy over the
        // general forward pass computes them (the float32 paths differ by rounding only).
        for (got, params) in [(a.loss_before, &before), (a.loss_after, &state.params)] {
            let want = eval_loss_by_hand(&cfg, params, &set);
            assert!(
                (got - want).abs() <= 1e-5 * want.max(1.0),
                "step {}: eval loss {got} vs {want} by hand",
                row.batch
            );
        }
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
    let cfg = injected_spike("unembed.W_U", 4.0);
    let (_scratch, dir) = make_run("bad", &cfg);
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
}
