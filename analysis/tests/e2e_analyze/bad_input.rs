//! Bad input: every mistake exits with status 2, a message that names the problem and what to
//! do, and no analysis file written (or, with `--skip-damaged`, the damaged snapshots listed).

use std::collections::BTreeSet;

use digitlab::task::{Layout, TaskConfig};
use digitlab_snapshots::RunDir;

use crate::common::*;

/// A path that is not a run: a missing path, an empty folder, a file.
#[test]
fn bad_input_not_a_run() {
    setup();
    let scratch = Scratch::new("not_a_run");
    let missing = scratch.path().join("nothing-here");
    let out = analyze(&["all", "-q", s(&missing)]);
    failed_with(&out, &["nothing-here"]);
    assert!(!missing.exists());

    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = analyze(&["loss", "-q", s(&empty)]);
    failed_with(&out, &["empty", "not a digitlab run"]);
    no_analysis_written(&empty);

    let file = scratch.path().join("a-file.txt");
    std::fs::write(&file, "hello").unwrap();
    let out = analyze(&["phases", "-q", s(&file)]);
    failed_with(&out, &["a-file.txt"]);
}

/// A run created but never trained.
#[test]
fn bad_input_run_without_snapshots() {
    setup();
    let scratch = Scratch::new("no_snapshots");
    let run = scratch.path().join("untrained");
    let task = TaskConfig {
        n_digits: 3,
        layout: Layout::Prompt,
        targets: vec![0],
        modp: None,
    };
    RunDir::create(
        &run,
        &serde_json::to_value(config(task, 16, 2, 100)).unwrap(),
    )
    .unwrap();
    for analysis in ["loss", "naive-lens", "excluded-loss", "phases", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "10", s(&run)]);
        failed_with(&out, &["untrained", "no snapshots"]);
        no_analysis_written(&run);
    }
}

/// A damaged snapshot is named; `--skip-damaged` analyses the rest and reports it.
#[test]
fn bad_input_damaged_snapshot() {
    setup();
    let scratch = Scratch::new("damaged");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let entry = RunDir::open(&run).unwrap().manifest().snapshots[2].clone();
    assert_eq!(entry.batch, 100);
    let path = run.join(&entry.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let file_name = path.file_name().unwrap().to_str().unwrap().to_string();

    for analysis in ["loss", "excluded-loss", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "10", s(&run)]);
        let message = failed_with(&out, &[&file_name, "damaged"]);
        assert!(message.contains("--skip-damaged"), "{message}");
        no_analysis_written(&run);
    }

    let out = succeeded(&analyze(&[
        "all",
        "-q",
        "--contexts",
        "10",
        "--skip-damaged",
        s(&run),
    ]));
    assert!(out.contains("skipped") && out.contains(&file_name), "{out}");
    let batches: Vec<u64> = snapshot_batches(&run)
        .into_iter()
        .filter(|&b| b != 100)
        .collect();
    for name in ["loss", "naive_lens", "excluded_loss"] {
        let df = table(&run, name);
        let got: BTreeSet<u64> = (0..df.height())
            .map(|r| int(&df, "batch", r).unwrap() as u64)
            .collect();
        assert_eq!(
            got,
            batches.iter().copied().collect::<BTreeSet<_>>(),
            "{name}"
        );
    }
    assert!(run.join("analysis/phases.parquet").exists());
}

/// A damaged last snapshot (where key frequencies are found by default): named, and with
/// `--skip-damaged` the key frequencies come from the newest snapshot that reads.
#[test]
fn bad_input_damaged_last_snapshot() {
    setup();
    let scratch = Scratch::new("damaged_last");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let entry = RunDir::open(&run)
        .unwrap()
        .manifest()
        .snapshots
        .last()
        .cloned()
        .unwrap();
    assert_eq!(entry.batch, 300);
    let path = run.join(&entry.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let file_name = path.file_name().unwrap().to_str().unwrap().to_string();

    for analysis in ["excluded-loss", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "10", s(&run)]);
        failed_with(&out, &[&file_name, "damaged", "--skip-damaged"]);
        no_analysis_written(&run);
    }
    let out = succeeded(&analyze(&[
        "all",
        "-q",
        "--contexts",
        "10",
        "--skip-damaged",
        s(&run),
    ]));
    assert!(out.contains("skipped") && out.contains(&file_name), "{out}");
    let keys = table(&run, "key_frequencies");
    let at: BTreeSet<i64> = (0..keys.height())
        .map(|r| int(&keys, "snapshot_batch", r).unwrap())
        .collect();
    assert_eq!(at, BTreeSet::from([250]));
    let excluded = table(&run, "excluded_loss");
    let batches: BTreeSet<i64> = (0..excluded.height())
        .map(|r| int(&excluded, "batch", r).unwrap())
        .collect();
    assert_eq!(batches, BTreeSet::from([0, 50, 100, 150, 200, 250]));
}

/// A digit the run did not train, and one that does not exist.
#[test]
fn bad_input_digit_not_trained() {
    setup();
    let scratch = Scratch::new("digit");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    for (analysis, digits) in [
        ("loss", "1"),
        ("all", "2,0"),
        ("phases", "7"),
        ("naive-lens", "3"),
    ] {
        let out = analyze(&[
            analysis,
            "-q",
            "--contexts",
            "10",
            "--digits",
            digits,
            s(&run),
        ]);
        let bad = digits.split(',').find(|d| *d != "2").unwrap();
        failed_with(&out, &["did not train", &format!("digit {bad}")]);
        no_analysis_written(&run);
    }
    // The digit it trained works.
    succeeded(&analyze(&[
        "loss",
        "-q",
        "--contexts",
        "10",
        "--digits",
        "2",
        s(&run),
    ]));
}

/// `--contexts 0` is refused before anything is computed.
#[test]
fn bad_input_zero_contexts() {
    setup();
    let scratch = Scratch::new("contexts");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    for analysis in ["loss", "naive-lens", "excluded-loss", "phases", "all"] {
        let out = analyze(&[analysis, "-q", "--contexts", "0", s(&run)]);
        failed_with(&out, &["--contexts"]);
        no_analysis_written(&run);
    }
}

/// An analysis name that does not exist.
#[test]
fn bad_input_unknown_analysis() {
    setup();
    let scratch = Scratch::new("unknown");
    let run = HUNDREDS_32.copy_to(&scratch, "run");
    let out = analyze(&["fourier-magic", s(&run)]);
    failed_with(&out, &["fourier-magic"]);
    no_analysis_written(&run);
    // A near miss gets a suggestion.
    let out = analyze(&["naive-len", s(&run)]);
    failed_with(&out, &["naive-len", "naive-lens"]);
    no_analysis_written(&run);
}
