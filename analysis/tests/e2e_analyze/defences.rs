//! `analyze` defends the run it reads: every option and input is checked before any table is
//! written (exit status 2, a message naming the option or file), a config `train` would refuse
//! is refused (and skipped by `summary`), tables are written under the analysis lock (not the
//! run's own, so a run still training can be analysed), one invocation uses the snapshots
//! listed when it started, and a failed write exits with status 1.

use std::path::Path;
use std::process::Command;

use digitlab::config::TrainConfig;
use digitlab_analysis::analyses::phases::{phase_inputs, run_phases};
use digitlab_analysis::analyses::snapshot::{run_snapshot_analyses, EvalOptions, SnapshotAnalysis};
use digitlab_analysis::metrics::phases::PhaseOptions;
use digitlab_analysis::run::{Run, Selection};
use digitlab_snapshots::{read_parquet, run_config_hash, RunDir};
use polars::prelude::DataFrame;

use crate::common::*;

/// Runs `analyze args`; asserts exit status 2, a message naming every one of `needles`, no
/// table written into `run`, and nothing but the run in the scratch folder; returns the message.
fn refused(scratch: &Scratch, run: &Path, args: &[&str], needles: &[&str]) -> String {
    let out = analyze(args);
    let message = failed_with(&out, needles);
    assert_eq!(out.status.code(), Some(2), "analyze {args:?}:\n{message}");
    no_analysis_written(run);
    let names: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [run.file_name().unwrap()], "written beside the run");
    message
}

/// Rewrites the JSON file at `path` with `edit` applied; returns the new value.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
    value
}

/// The batches a table holds, sorted and deduplicated.
fn batches(df: &DataFrame) -> Vec<i64> {
    let mut b: Vec<i64> = df
        .column("batch")
        .unwrap()
        .i64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    b.sort();
    b.dedup();
    b
}

#[test]
fn every_option_is_checked_before_anything_is_written() {
    setup();
    let scratch = Scratch::new("defences-options");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let r = s(&run);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["all", "--zero-floor", "0"], vec!["--zero-floor"]),
        (vec!["all", "--flat-slope=-1"], vec!["--flat-slope"]),
        (
            vec!["phases", "--level-tolerance", "nan"],
            vec!["--level-tolerance"],
        ),
        (
            vec!["all", "--smoothing-batches", "0"],
            vec!["--smoothing-batches"],
        ),
        (
            vec!["all", "--min-plateau-batches", "0"],
            vec!["--min-plateau-batches"],
        ),
        (
            vec!["all", "--key-threshold", "NaN"],
            vec!["--key-threshold"],
        ),
        (vec!["all", "--key-threshold", "0"], vec!["--key-threshold"]),
        (vec!["all", "--key-threshold", "2"], vec!["--key-threshold"]),
        (vec!["all", "--key-threshold=-1"], vec!["--key-threshold"]),
        (vec!["loss", "--every", "0"], vec!["--every"]),
        (
            vec!["excluded-loss", "--key-snapshot", "123"],
            vec!["--key-snapshot", "no snapshot at batch 123", "0 to 300"],
        ),
        // Far beyond any machine: refused with the estimate, nothing allocated.
        (
            vec!["all", "--contexts", "100000000000"],
            vec!["needs about", "GiB", "--contexts"],
        ),
    ];
    for (args, needles) in cases {
        let mut full = args.clone();
        full.extend(["-q", r]);
        if !args.contains(&"--contexts") {
            full.extend(["--contexts", "10"]);
        }
        let message = refused(&scratch, &run, &full, &needles);
        assert!(!message.contains("Some("), "{message}");
    }
    for (args, needle) in [
        (["--contexts", "0"], "--contexts"),
        (["--contexts", "100000000000"], "--contexts"),
        (["--window", "0"], "--window"),
        (["--threshold", "nan"], "--threshold"),
    ] {
        let message = refused(&scratch, &run, &["spikes", args[0], args[1], r], &[needle]);
        assert!(!message.contains("loss_digit"), "{message}");
    }
}

/// A damaged training log is found before `all` writes its snapshot tables (it used to write
/// four tables and then fail on the log).
#[test]
fn a_damaged_training_log_is_refused_before_any_table() {
    setup();
    let scratch = Scratch::new("defences-log");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let log = run.join("train_log.parquet");
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() / 2]).unwrap();
    for analysis in ["all", "phases"] {
        refused(
            &scratch,
            &run,
            &[analysis, "-q", "--contexts", "10", s(&run)],
            &["train_log.parquet", "damaged"],
        );
    }
}

/// A config `train` refuses (here with the manifest's hash updated to match, so only the
/// validation can catch it) gets `train`'s own message, and `summary` skips that run.
#[test]
fn a_config_train_would_refuse_is_refused_and_skipped_by_summary() {
    setup();
    let scratch = Scratch::new("defences-config");
    let good = HUNDREDS_32.copy_to(&scratch, "good");
    for field in ["n_heads", "n_layers"] {
        let bad = HUNDREDS_32.copy_to(&scratch, "bad");
        let config = edit_json(&bad.join("config.json"), |c| c["model"][field] = 0.into());
        edit_json(&bad.join("manifest.json"), |m| {
            m["config_hash"] = run_config_hash(&config).into()
        });
        let expected = serde_json::from_value::<TrainConfig>(config)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();

        let out = analyze(&["loss", "-q", "--contexts", "10", s(&bad)]);
        failed_with(&out, &[&expected, "config.json"]);
        assert_eq!(out.status.code(), Some(2));
        no_analysis_written(&bad);

        let out = analyze(&["summary", "-q", "--contexts", "10", s(scratch.path())]);
        let text = succeeded(&out);
        assert!(
            text.contains("skipped") && text.contains(&expected),
            "{field}: {text}"
        );
        let summary = read_parquet(&scratch.path().join("summary.parquet")).unwrap();
        let runs: Vec<String> = (0..summary.height())
            .map(|i| cell(&summary, "run", i))
            .collect();
        assert!(
            !runs.is_empty() && runs.iter().all(|r| *r == "good"),
            "{runs:?}"
        );
        no_analysis_written(&bad);
        std::fs::remove_dir_all(&bad).unwrap();
    }
    assert!(good.join("analysis").join("phases.parquet").exists());
}

/// While one process writes tables (holds the analysis lock) another `analyze` is refused
/// naming it; while `train` holds the run's own lock, `analyze` works.
#[test]
fn tables_are_written_under_the_analysis_lock_not_the_training_lock() {
    setup();
    let scratch = Scratch::new("defences-lock");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let args = ["loss", "-q", "--contexts", "10", s(&run)];
    let analysing = RunDir::open(&run).unwrap().lock_analysis().unwrap();
    let out = analyze(&args);
    failed_with(
        &out,
        &[&format!("is locked by process {}", std::process::id())],
    );
    assert_eq!(out.status.code(), Some(2));
    no_analysis_written(&run);
    drop(analysing);

    let training = RunDir::open_locked(&run).unwrap();
    succeeded(&analyze(&args));
    assert_eq!(
        batches(&table(&run, "loss")),
        (0..=300).step_by(50).collect::<Vec<i64>>()
    );
    drop(training);
}

/// A run extended after it was opened: every stage of the invocation uses the snapshots listed
/// when it was opened, and the report counts them.
#[test]
fn one_invocation_uses_the_snapshots_listed_when_it_started() {
    setup();
    let scratch = Scratch::new("defences-manifest");
    let dir = HUNDREDS_32.copy_to(&scratch, "run");
    let run = Run::open(&dir).unwrap();
    extend_run(&dir, 400);
    assert_eq!(*snapshot_batches(&dir).last().unwrap(), 400);

    let eval = EvalOptions {
        contexts: CONTEXTS,
        eval_seed: EVAL_SEED,
        digits: Vec::new(),
        selection: Selection {
            every: 1,
            from: None,
            to: None,
        },
        skip_damaged: false,
        key_threshold: 0.85,
        key_snapshot: None,
        progress: false,
    };
    let options = PhaseOptions::default();
    let train_log = phase_inputs(&run, &eval, &options).unwrap();
    let report = run_snapshot_analyses(&run, &SnapshotAnalysis::ALL, &eval).unwrap();
    for name in ["loss", "naive_lens", "excluded_loss"] {
        let line = report.iter().find(|l| l.starts_with(name)).unwrap();
        assert!(line.contains(": 7 snapshots computed"), "{line}");
    }
    run_phases(&run, train_log.as_ref(), &eval, &options).unwrap();
    let listed: Vec<i64> = (0..=300).step_by(50).collect();
    for name in ["loss", "naive_lens", "excluded_loss"] {
        assert_eq!(batches(&table(&dir, name)), listed, "{name}");
    }
    let key = table(&dir, "key_frequencies");
    assert_eq!(int(&key, "snapshot_batch", 0), Some(300));
}

/// A write that fails (here a file-size limit, as a full disk would) exits with status 1 and
/// leaves no table behind.
#[test]
fn a_failed_write_exits_with_status_1() {
    setup();
    let scratch = Scratch::new("defences-write");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_analyze"))
        .args(["loss", "-q", "--contexts", "10", s(&run)])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let message = failed_with(&out, &["cannot write", "loss.parquet"]);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(!run.join("analysis").join("loss.parquet").exists());
}

/// `spikes` on a run whose log or config was swapped or edited says which file does not
/// belong, instead of blaming the build's determinism after a replay.
#[test]
fn spikes_names_a_foreign_log_or_an_edited_config() {
    setup();
    let scratch = Scratch::new("defences-spikes");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    std::fs::copy(
        ANSWER_ALL_32.path().join("train_log.parquet"),
        run.join("train_log.parquet"),
    )
    .unwrap();
    let message = refused(
        &scratch,
        &run,
        &["spikes", s(&run)],
        &["train_log.parquet", "does not belong to this run"],
    );
    assert!(!message.contains("deterministically"), "{message}");

    let run_copy = HUNDREDS_32.copy_to(&scratch, "edited");
    std::fs::remove_dir_all(&run).unwrap();
    edit_json(&run_copy.join("config.json"), |c| c["seed"] = 7.into());
    let message = refused(
        &scratch,
        &run_copy,
        &["spikes", s(&run_copy)],
        &["config.json", "does not belong to this run"],
    );
    assert!(!message.contains("deterministically"), "{message}");
}

/// A snapshot that carries the run's hash but not its model's shapes (written by another
/// build) is named with what to do, not candle's "shape mismatch for blocks.0.attn.W_Q".
#[test]
fn a_snapshot_of_other_shapes_is_named() {
    setup();
    let scratch = Scratch::new("defences-shapes");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let mut dir = RunDir::open_locked(&run).unwrap();
    let entry = dir.manifest().snapshots[1].clone();
    let mut tensors = dir.read_snapshot(&entry).unwrap().tensors;
    let w_q = tensors
        .iter_mut()
        .find(|t| t.name == "blocks.0.attn.W_Q")
        .unwrap();
    w_q.shape[2] += 1;
    w_q.data = vec![0.0; w_q.shape.iter().product()];
    dir.write_snapshot(entry.batch, &tensors, &Default::default())
        .unwrap();
    drop(dir);
    let message = refused(
        &scratch,
        &run,
        &["loss", "-q", "--contexts", "10", s(&run)],
        &[&entry.file, "does not hold the model config.json describes"],
    );
    assert!(!message.starts_with("error: shape mismatch"), "{message}");
}
