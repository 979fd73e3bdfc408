//! The snapshot analyses (`loss`, `naive-lens`, `excluded-loss`): what each writes per
//! (snapshot, digit), as rows of its long-format table.
//!
//! Column meanings are defined in docs/metrics.md, 'Per-digit metrics' and 'Excluded and
//! restricted loss'; the README lists the tables.

use digitlab::task::CarryKind;

use crate::metrics::digit::DigitMetrics;
use digitlab::log_softmax::mean_cross_entropy;

use crate::eval_set::EvalSet;
use crate::metrics::fourier::{excluded_logits, restricted_logits, Grid};
use crate::table::{Key, KeyKind, MetricRows};

/// An analysis computed from the logits of every snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotAnalysis {
    Loss,
    NaiveLens,
    ExcludedLoss,
}

impl SnapshotAnalysis {
    pub const ALL: [SnapshotAnalysis; 3] = [
        SnapshotAnalysis::Loss,
        SnapshotAnalysis::NaiveLens,
        SnapshotAnalysis::ExcludedLoss,
    ];

    /// The file stem under `analysis/`.
    pub fn file_name(self) -> &'static str {
        match self {
            SnapshotAnalysis::Loss => "loss",
            SnapshotAnalysis::NaiveLens => "naive_lens",
            SnapshotAnalysis::ExcludedLoss => "excluded_loss",
        }
    }

    /// The key columns between `digit` and `metric`.
    pub fn keys(self) -> Vec<(&'static str, KeyKind)> {
        match self {
            SnapshotAnalysis::Loss => vec![("carry_kind", KeyKind::Text)],
            SnapshotAnalysis::NaiveLens => {
                vec![("carry_in", KeyKind::Text), ("offset", KeyKind::Int)]
            }
            SnapshotAnalysis::ExcludedLoss => {
                vec![("frequencies", KeyKind::Text), ("key_set", KeyKind::Text)]
            }
        }
    }
}

/// `loss` rows: loss, accuracy and the fraction of examples, over all examples
/// (`carry_kind = "all"`) and per carry kind.
pub fn loss_rows(rows: &mut MetricRows, run: &str, batch: u64, digit: usize, m: &DigitMetrics) {
    let all = Key::Text("all".into());
    rows.push(
        run,
        batch,
        digit,
        std::slice::from_ref(&all),
        "loss",
        m.loss,
    );
    rows.push(
        run,
        batch,
        digit,
        std::slice::from_ref(&all),
        "accuracy",
        m.accuracy,
    );
    for kind in CarryKind::ALL {
        let key = [Key::Text(kind.name().into())];
        let found = m.by_carry_kind.iter().find(|c| c.kind == kind);
        let (loss, accuracy, n) = found.map_or((f64::NAN, f64::NAN, 0), |c| {
            (c.loss, c.accuracy, c.n_examples)
        });
        rows.push(run, batch, digit, &key, "loss", loss);
        rows.push(run, batch, digit, &key, "accuracy", accuracy);
        rows.push(
            run,
            batch,
            digit,
            &key,
            "fraction",
            n as f64 / m.n_examples.max(1) as f64,
        );
    }
}

/// `naive_lens` rows: `p_delta` by offset from the naive digit, over all examples and by
/// carry-in, and the four losses of the naive-sum split.
pub fn naive_lens_rows(
    rows: &mut MetricRows,
    run: &str,
    batch: u64,
    digit: usize,
    m: &DigitMetrics,
) {
    for (carry_in, p) in [
        ("all", &m.p_delta),
        ("0", &m.p_delta_carry0),
        ("1", &m.p_delta_carry1),
    ] {
        for (offset, &value) in p.iter().enumerate() {
            let keys = [Key::Text(carry_in.into()), Key::Int(offset as i64)];
            rows.push(run, batch, digit, &keys, "p_delta", value);
        }
    }
    let keys = [Key::Text("all".into()), Key::Null];
    for (metric, value) in [
        ("loss_naive", m.loss_naive),
        ("loss_naive_plus1", m.loss_naive_plus1),
        ("pair_mass_loss", m.pair_mass_loss),
        ("pair_loss", m.pair_loss),
    ] {
        rows.push(run, batch, digit, &keys, metric, value);
    }
}

/// The key set as stored in the `key_set` column, e.g. `1,3,5`.
pub fn key_set_label(key: &[usize]) -> String {
    key.iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The frequency sets reported: each single frequency, all five, and the key set.
pub fn frequency_sets(key: &[usize]) -> Vec<(String, Vec<usize>)> {
    let frequencies = Grid::DIGITS.frequencies();
    let mut sets: Vec<(String, Vec<usize>)> = frequencies
        .iter()
        .map(|&f| (f.to_string(), vec![f]))
        .collect();
    sets.push(("all".into(), frequencies));
    sets.push(("key".into(), key.to_vec()));
    sets
}

/// `excluded_loss` rows: excluded and restricted loss for every frequency set, from the
/// logits of `set` (a context x pair grid) and the digit's key set.
pub fn excluded_loss_rows(
    rows: &mut MetricRows,
    run: &str,
    batch: u64,
    set: &EvalSet,
    logits: &[f32],
    n_out: usize,
    key: &[usize],
) {
    let targets = set.targets();
    for (name, freqs) in frequency_sets(key) {
        let keys = [Key::Text(name), Key::Text(key_set_label(key))];
        let loss = |logits: Vec<f32>| mean_cross_entropy(&logits, n_out, &targets);
        let grid = Grid::DIGITS;
        let excluded = loss(excluded_logits(grid, logits, n_out, set.n_contexts, &freqs));
        let restricted = loss(restricted_logits(
            grid,
            logits,
            n_out,
            set.n_contexts,
            &freqs,
        ));
        rows.push(run, batch, set.digit, &keys, "excluded_loss", excluded);
        rows.push(run, batch, set.digit, &keys, "restricted_loss", restricted);
    }
}
