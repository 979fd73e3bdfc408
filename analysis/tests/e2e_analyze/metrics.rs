//! The numbers of the snapshot analyses, phases and summary on real runs, against the
//! independent computation of `common::reference` and the identities the metrics obey.

use std::collections::{BTreeMap, BTreeSet};

use digitlab_snapshots::{read_parquet, RunDir};
use polars::prelude::DataType;

use crate::common::*;

/// `loss = pair_mass_loss + pair_loss` for every (snapshot, digit) of real runs, to 1e-6.
#[test]
fn loss_is_pair_mass_loss_plus_pair_loss_on_real_snapshots() {
    setup();
    for run in [
        UNITS_128_ANALYSED.path(),
        HUNDREDS_32_ANALYSED.path(),
        ANSWER_ALL_32_ANALYSED.path(),
    ] {
        let (loss, lens) = (loss_values(run), naive_lens_values(run));
        let cfg = run_config(run);
        let batches = snapshot_batches(run);
        for &b in &batches {
            for &k in &cfg.task.targets {
                let l = loss[&format!("{b}|{k}|all|loss")];
                let mass = lens[&format!("{b}|{k}|all|null|pair_mass_loss")];
                let pair = lens[&format!("{b}|{k}|all|null|pair_loss")];
                assert!(l.is_finite() && mass.is_finite() && pair.is_finite());
                assert!(
                    (l - (mass + pair)).abs() <= 1e-6,
                    "{}: batch {b} digit {k}: loss {l} != {mass} + {pair}",
                    run.display()
                );
            }
        }
        // The identity is not vacuous: the split moves during training.
        let k = cfg.task.targets[0];
        let first = lens[&format!("{}|{k}|all|null|pair_mass_loss", batches[0])];
        let last = lens[&format!("{}|{k}|all|null|pair_mass_loss", batches[batches.len() - 1])];
        assert!(
            first > last,
            "pair_mass_loss should fall: {first} -> {last}"
        );
    }
}

/// Every value of the units-digit run (prompt layout, fast last-position path in `analyze`).
#[test]
fn units_run_metrics_match_independent_f64_computation() {
    setup();
    check_against_independent_computation(UNITS_128_ANALYSED.path());
}

/// Every value of a run on the hundreds digit, where all three carry kinds occur.
#[test]
fn hundreds_run_metrics_match_independent_f64_computation() {
    setup();
    let run = HUNDREDS_32_ANALYSED.path();
    check_against_independent_computation(run);
    // In the grid the carry into digit 2 is fixed by the context (a_1, b_1 do not vary), so
    // with 10 contexts only some kinds occur; those that do have real numbers, the others NaN.
    let loss = values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    let mut present = 0;
    for kind in ["none", "direct", "cascade"] {
        let fraction = loss[&format!("0|2|{kind}|fraction")];
        assert_eq!(
            fraction > 0.0,
            loss[&format!("0|2|{kind}|loss")].is_finite(),
            "{kind}"
        );
        present += usize::from(fraction > 0.0);
    }
    assert!(present >= 2, "carry kinds present: {present}");
}

/// The answer layout with every digit trained: each digit read at its own position, the final
/// carry digit `n` included (no grid there, so no excluded-loss rows).
#[test]
fn answer_layout_analyses_every_digit() {
    setup();
    let run = ANSWER_ALL_32_ANALYSED.path();
    let batches: BTreeSet<i64> = snapshot_batches(run)
        .into_iter()
        .map(|b| b as i64)
        .collect();
    let digits_of = |name: &str| -> BTreeMap<i64, BTreeSet<i64>> {
        let df = table(run, name);
        let mut out: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        for row in 0..df.height() {
            let d = int(&df, "digit", row).unwrap();
            let b = if df.column("batch").is_ok() {
                int(&df, "batch", row).unwrap()
            } else {
                -1
            };
            out.entry(d).or_default().insert(b);
        }
        out
    };
    for name in ["loss", "naive_lens"] {
        let digits = digits_of(name);
        assert_eq!(
            digits.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "{name}"
        );
        for (d, b) in digits {
            assert_eq!(b, batches, "{name}: digit {d} lacks snapshots");
        }
    }
    let excluded = digits_of("excluded_loss");
    assert_eq!(excluded.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let key = digits_of("key_frequencies");
    assert_eq!(key.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let phases = table(run, "phases");
    let mut phase_rows = BTreeSet::new();
    for row in 0..phases.height() {
        phase_rows.insert((
            int(&phases, "digit", row).unwrap(),
            cell(&phases, "source", row),
        ));
    }
    for d in 0..=3 {
        for source in ["eval", "train_log"] {
            assert!(
                phase_rows.contains(&(d, source.to_string())),
                "phases: digit {d} {source}"
            );
        }
    }
    // The digits differ (each is read at its own position): the final-carry digit is a coin
    // flip, far easier than the units digit at the start.
    let loss = values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    let last = batches.iter().next_back().unwrap();
    assert!(loss[&format!("{last}|3|all|loss")] < 1.0);
    // The final carry digit's eval set is random examples, where every carry kind occurs.
    for kind in ["none", "direct", "cascade"] {
        assert!(
            loss[&format!("0|3|{kind}|fraction")] > 0.0,
            "digit 3: no {kind} carry"
        );
    }
    check_against_independent_computation(run);
}

/// The phase detector on a real short run: leaves ln 10 where the eval loss first falls below
/// about 2.0, and ends at (or very near) zero.
#[test]
fn phases_of_a_real_units_run() {
    setup();
    let run = UNITS_128_ANALYSED.path();
    let loss = values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    );
    let mut curve: Vec<(u64, f64)> = snapshot_batches(run)
        .into_iter()
        .map(|b| (b, loss[&format!("{b}|0|all|loss")]))
        .collect();
    curve.sort_by_key(|c| c.0);
    let eval_crossing = curve
        .iter()
        .find(|c| c.1 < 2.0)
        .expect("the loss falls below 2")
        .0;
    let log = RunDir::open(run)
        .unwrap()
        .read_train_log()
        .unwrap()
        .unwrap();
    let train_crossing = log
        .rows
        .iter()
        .find(|r| r.digit_loss[0] < 2.0)
        .expect("the training loss falls below 2")
        .batch;

    let phases = table(run, "phases");
    assert_eq!(phases.height(), 2);
    for row in 0..phases.height() {
        let source = cell(&phases, "source", row);
        assert_eq!(int(&phases, "digit", row), Some(0));
        let crossing = if source == "eval" {
            eval_crossing
        } else {
            train_crossing
        };
        let leaves = int(&phases, "leaves_ln10_batch", row)
            .unwrap_or_else(|| panic!("{source}: leaves_ln10_batch is null"));
        assert!(
            (leaves - crossing as i64).abs() <= 150,
            "{source}: leaves ln 10 at {leaves}, the loss first falls below 2 at {crossing}"
        );
        let final_loss = float(&phases, "final_loss", row).unwrap();
        let final_level = cell(&phases, "final_level", row);
        assert!(
            final_level == "zero" || final_loss < 0.01,
            "{source}: final level {final_level}, final loss {final_loss}"
        );
        // final_loss is the smoothed loss at the last sample: it lies within the range of the
        // curve over the last smoothing window (200 batches by default).
        let window: Vec<f64> = if source == "eval" {
            let end = curve.last().unwrap().0;
            curve
                .iter()
                .filter(|c| c.0 + 200 >= end)
                .map(|c| c.1)
                .collect()
        } else {
            let end = log.rows.last().unwrap().batch;
            log.rows
                .iter()
                .filter(|r| r.batch + 200 >= end)
                .map(|r| f64::from(r.digit_loss[0]))
                .collect()
        };
        let lo = window.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = window.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            lo * (1.0 - 1e-6) <= final_loss && final_loss <= hi * (1.0 + 1e-6),
            "{source}: final_loss {final_loss} outside the last window's [{lo}, {hi}]"
        );
    }
    let sources: BTreeSet<String> = (0..2).map(|r| cell(&phases, "source", r)).collect();
    assert_eq!(
        sources,
        BTreeSet::from(["eval".to_string(), "train_log".to_string()])
    );
    // The first plateau is ln 10 and ends where the digit leaves it.
    let plateaus = table(run, "plateaus");
    let first_eval = (0..plateaus.height())
        .filter(|&r| cell(&plateaus, "source", r) == "eval")
        .min_by_key(|&r| int(&plateaus, "start_batch", r))
        .expect("an eval plateau");
    assert_eq!(cell(&plateaus, "level", first_eval), "ln10");
    assert!(
        (float(&plateaus, "median_loss", first_eval).unwrap() - 10f64.ln()).abs() < 0.35,
        "the ln 10 plateau's median loss"
    );
}

/// `analyze summary` over a folder of two runs of different widths: one row per (run, digit,
/// source) with the config and the phase figures.
#[test]
fn summary_over_two_runs() {
    setup();
    let scratch = Scratch::new("summary");
    let folder = scratch.path().join("runs");
    UNITS_128.copy_to(&scratch, "runs/wide");
    HUNDREDS_32.copy_to(&scratch, "runs/narrow");
    std::fs::create_dir_all(folder.join("notes")).unwrap();
    std::fs::write(folder.join("README.txt"), "not a run").unwrap();

    let out = succeeded(&analyze(&["summary", "-q", "--contexts", "10", s(&folder)]));
    assert!(out.contains("summary.parquet"), "{out}");
    let summary = read_parquet(&folder.join("summary.parquet")).unwrap();
    for (column, dtype) in [
        ("run", DataType::String),
        ("digit", DataType::Int64),
        ("source", DataType::String),
        ("leaves_ln10_batch", DataType::Int64),
        ("d_model", DataType::Int64),
        ("n_heads", DataType::Int64),
        ("weight_decay", DataType::Float64),
        ("seed", DataType::Int64),
    ] {
        let c = summary
            .column(column)
            .unwrap_or_else(|_| panic!("summary has no column {column}"));
        assert_eq!(c.dtype(), &dtype, "{column}");
    }
    let mut rows = BTreeMap::new();
    for r in 0..summary.height() {
        let key = (
            cell(&summary, "run", r),
            int(&summary, "digit", r).unwrap(),
            cell(&summary, "source", r),
        );
        assert!(
            rows.insert(key.clone(), r).is_none(),
            "duplicate row {key:?}"
        );
    }
    let expected: BTreeSet<(String, i64, String)> = [("wide", 0), ("narrow", 2)]
        .iter()
        .flat_map(|(run, digit)| {
            ["eval", "train_log"].map(|src| (run.to_string(), *digit, src.to_string()))
        })
        .collect();
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for ((run, digit, source), r) in &rows {
        let d_model = if run == "wide" { 128 } else { 32 };
        assert_eq!(int(&summary, "d_model", *r), Some(d_model));
        // The phase figures are those of the run's own phases table.
        let phases = table(&folder.join(run), "phases");
        let pr = (0..phases.height())
            .find(|&p| {
                int(&phases, "digit", p) == Some(*digit) && &cell(&phases, "source", p) == source
            })
            .unwrap();
        assert_eq!(
            int(&summary, "leaves_ln10_batch", *r),
            int(&phases, "leaves_ln10_batch", pr),
            "{run} {digit} {source}"
        );
    }
    let wide_eval = rows[&("wide".to_string(), 0, "eval".to_string())];
    assert!(int(&summary, "leaves_ln10_batch", wide_eval).is_some());
}
