//! Tidy long-format tables: one row per (run, batch, digit, keys…, metric) with a value,
//! typed columns, built row by row and turned into a polars DataFrame.

use anyhow::Result;
use polars::prelude::{Column, DataFrame};

/// A key column's value: text (a carry kind, a frequency set) or an integer (an offset).
#[derive(Clone, Debug, PartialEq)]
pub enum Key {
    Text(String),
    Int(i64),
    Null,
}

#[derive(Clone)]
enum KeyValues {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
}

/// Rows of one analysis: `run`, `batch`, `digit`, the analysis's own key columns, `metric`,
/// `value`, and the eval-set options (`contexts`, `eval_seed`, …) the values depend on.
#[derive(Clone)]
pub struct MetricRows {
    run: Vec<String>,
    batch: Vec<i64>,
    digit: Vec<i64>,
    keys: Vec<(String, KeyValues)>,
    metric: Vec<String>,
    value: Vec<f64>,
    contexts: i64,
    eval_seed: i64,
}

/// The kind of a key column, given when the table is made.
pub enum KeyKind {
    Text,
    Int,
}

impl MetricRows {
    pub fn new(keys: &[(&str, KeyKind)], contexts: usize, eval_seed: u64) -> MetricRows {
        MetricRows {
            run: Vec::new(),
            batch: Vec::new(),
            digit: Vec::new(),
            keys: keys
                .iter()
                .map(|(name, kind)| {
                    let values = match kind {
                        KeyKind::Text => KeyValues::Text(Vec::new()),
                        KeyKind::Int => KeyValues::Int(Vec::new()),
                    };
                    (name.to_string(), values)
                })
                .collect(),
            metric: Vec::new(),
            value: Vec::new(),
            contexts: contexts as i64,
            eval_seed: eval_seed as i64,
        }
    }

    /// Appends one row; `keys` in the order the table was made with.
    pub fn push(
        &mut self,
        run: &str,
        batch: u64,
        digit: usize,
        keys: &[Key],
        metric: &str,
        value: f64,
    ) {
        self.run.push(run.to_string());
        self.batch.push(batch as i64);
        self.digit.push(digit as i64);
        for ((_, column), key) in self.keys.iter_mut().zip(keys) {
            match (column, key) {
                (KeyValues::Text(v), Key::Text(s)) => v.push(Some(s.clone())),
                (KeyValues::Int(v), Key::Int(i)) => v.push(Some(*i)),
                (KeyValues::Text(v), _) => v.push(None),
                (KeyValues::Int(v), _) => v.push(None),
            }
        }
        self.metric.push(metric.to_string());
        self.value.push(value);
    }

    /// Adds the rows of `other` (same columns).
    pub fn append(&mut self, other: MetricRows) {
        self.run.extend(other.run);
        self.batch.extend(other.batch);
        self.digit.extend(other.digit);
        for ((_, mine), (_, theirs)) in self.keys.iter_mut().zip(other.keys) {
            match (mine, theirs) {
                (KeyValues::Text(a), KeyValues::Text(b)) => a.extend(b),
                (KeyValues::Int(a), KeyValues::Int(b)) => a.extend(b),
                _ => unreachable!("tables of one analysis share their key columns"),
            }
        }
        self.metric.extend(other.metric);
        self.value.extend(other.value);
    }

    pub fn into_dataframe(self) -> Result<DataFrame> {
        let height = self.run.len();
        let mut columns = vec![
            Column::new("run".into(), self.run),
            Column::new("batch".into(), self.batch),
            Column::new("digit".into(), self.digit),
        ];
        for (name, values) in self.keys {
            columns.push(match values {
                KeyValues::Text(v) => Column::new(name.into(), v),
                KeyValues::Int(v) => Column::new(name.into(), v),
            });
        }
        columns.push(Column::new("metric".into(), self.metric));
        columns.push(Column::new("value".into(), self.value));
        columns.push(Column::new("contexts".into(), vec![self.contexts; height]));
        columns.push(Column::new(
            "eval_seed".into(),
            vec![self.eval_seed; height],
        ));
        Ok(DataFrame::new(height, columns)?)
    }
}
