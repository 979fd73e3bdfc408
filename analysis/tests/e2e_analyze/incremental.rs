//! Re-running an analysis: only new snapshots are computed, rows of other digits and options
//! are kept, and the snapshot selection options pick what they say.

use std::collections::BTreeSet;

use digitlab::task::{Layout, TaskConfig};

use crate::common::*;

/// Re-running an analysis after training was extended computes only the new snapshots, says
/// so, and keeps the old rows unchanged.
#[test]
fn extended_run_is_analysed_incrementally() {
    setup();
    let scratch = Scratch::new("incremental");
    let run = scratch.path().join("run");
    let task = TaskConfig {
        n_digits: 3,
        layout: Layout::Prompt,
        targets: vec![1],
        modp: None,
    };
    train_run(&run, &config(task, 16, 2, 200));
    assert_eq!(snapshot_batches(&run), vec![0, 50, 100, 150, 200]);

    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "10", s(&run)]));
    assert!(out.contains("5 snapshots computed, 0 kept"), "{out}");
    let before = table(&run, "loss");
    let before_values = values_by(&before, &["batch", "digit", "carry_kind", "metric"]);

    extend_run(&run, 300);
    assert_eq!(snapshot_batches(&run), vec![0, 50, 100, 150, 200, 250, 300]);
    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "10", s(&run)]));
    assert!(out.contains("2 snapshots computed, 5 kept"), "{out}");
    let after = table(&run, "loss");
    let after_values = values_by(&after, &["batch", "digit", "carry_kind", "metric"]);
    let per_snapshot = before.height() / 5;
    assert_eq!(after.height(), before.height() + 2 * per_snapshot);
    for (key, value) in &before_values {
        let new = after_values[key];
        assert!(
            new.to_bits() == value.to_bits() || (new.is_nan() && value.is_nan()),
            "{key}: {value} became {new}"
        );
    }
    let new_batches: BTreeSet<String> = after_values
        .keys()
        .filter(|k| !before_values.contains_key(*k))
        .map(|k| k.split('|').next().unwrap().to_string())
        .collect();
    assert_eq!(
        new_batches,
        BTreeSet::from(["250".to_string(), "300".to_string()])
    );

    // A third run with nothing new keeps everything; other eval options recompute everything.
    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "10", s(&run)]));
    assert!(out.contains("0 snapshots computed, 7 kept"), "{out}");
    assert_eq!(table(&run, "loss").height(), after.height());
    let out = succeeded(&analyze(&["loss", "-q", "--contexts", "12", s(&run)]));
    assert!(out.contains("7 snapshots computed, 0 kept"), "{out}");
}

/// Digits analysed in separate calls (`--digits 1`, then `--digits 0`) all stay in the table,
/// and a later call over both computes nothing.
#[test]
fn digits_analysed_separately_are_all_kept() {
    setup();
    let scratch = Scratch::new("separate_digits");
    let run = ANSWER_ALL_32.copy_to(&scratch, "run");
    let n_snapshots = snapshot_batches(&run).len();
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "1",
        s(&run),
    ]));
    let first = values_by(
        &table(&run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "0",
        s(&run),
    ]));
    let df = table(&run, "loss");
    let digits: BTreeSet<i64> = (0..df.height())
        .map(|r| int(&df, "digit", r).unwrap())
        .collect();
    assert_eq!(
        digits,
        BTreeSet::from([0, 1]),
        "the rows of digit 1 were dropped"
    );
    let both = values_by(&df, &["batch", "digit", "carry_kind", "metric"]);
    for (key, value) in &first {
        assert!(both[key].to_bits() == value.to_bits() || both[key].is_nan() && value.is_nan());
    }
    let out = succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "0,1",
        s(&run),
    ]));
    assert!(
        out.contains(&format!("0 snapshots computed, {n_snapshots} kept")),
        "{out}"
    );
    assert_eq!(table(&run, "loss").height(), df.height());

    // The same for excluded-loss, whose rows also depend on each digit's key set.
    for digit in ["1", "0"] {
        let args = [
            "excluded-loss",
            "-q",
            "--contexts",
            "10",
            "--digits",
            digit,
            s(&run),
        ];
        succeeded(&analyze(&args));
    }
    for name in ["excluded_loss", "key_frequencies"] {
        let df = table(&run, name);
        let digits: BTreeSet<i64> = (0..df.height())
            .map(|r| int(&df, "digit", r).unwrap())
            .collect();
        assert_eq!(
            digits,
            BTreeSet::from([0, 1]),
            "{name} lost the rows of digit 1"
        );
    }
}

/// `--from`, `--to` and `--every` pick the snapshots replayed.
#[test]
fn snapshot_selection_options() {
    setup();
    let scratch = Scratch::new("selection");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--from",
        "100",
        "--to",
        "300",
        "--every",
        "2",
        s(&run),
    ]));
    let df = table(&run, "loss");
    let batches: BTreeSet<i64> = (0..df.height())
        .map(|r| int(&df, "batch", r).unwrap())
        .collect();
    assert_eq!(batches, BTreeSet::from([100, 200, 300]));
}
