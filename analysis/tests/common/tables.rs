//! Reading the analysis tables back: cells as text, values by key, schemas, and a tolerance
//! check that treats two NaNs as equal.

use std::collections::BTreeMap;
use std::path::Path;

use digitlab::config::TrainConfig;
use digitlab_snapshots::{read_parquet, RunDir};
use polars::prelude::{DataFrame, DataType};

pub fn table(run: &Path, name: &str) -> DataFrame {
    read_parquet(&run.join("analysis").join(format!("{name}.parquet"))).unwrap()
}

/// A cell as text: strings as they are, integers in decimal, null as "null".
pub fn cell(df: &DataFrame, column: &str, row: usize) -> String {
    let c = df.column(column).unwrap();
    match c.dtype() {
        DataType::String => c.str().unwrap().get(row).unwrap_or("null").to_string(),
        DataType::Int64 => c
            .i64()
            .unwrap()
            .get(row)
            .map_or("null".to_string(), |v| v.to_string()),
        DataType::Boolean => c
            .bool()
            .unwrap()
            .get(row)
            .map_or("null".to_string(), |v| v.to_string()),
        other => panic!("column {column} has unexpected type {other}"),
    }
}

pub fn float(df: &DataFrame, column: &str, row: usize) -> Option<f64> {
    df.column(column).unwrap().f64().unwrap().get(row)
}

pub fn int(df: &DataFrame, column: &str, row: usize) -> Option<i64> {
    df.column(column).unwrap().i64().unwrap().get(row)
}

/// `value` by the key columns given (joined with `|`); asserts every key is unique.
pub fn values_by(df: &DataFrame, keys: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for row in 0..df.height() {
        let key: Vec<String> = keys.iter().map(|k| cell(df, k, row)).collect();
        let key = key.join("|");
        let value = float(df, "value", row).expect("value is never null");
        assert!(
            out.insert(key.clone(), value).is_none(),
            "duplicate row {key}"
        );
    }
    out
}

/// `loss.parquet` values by batch, digit, carry kind and metric.
pub fn loss_values(run: &Path) -> BTreeMap<String, f64> {
    values_by(
        &table(run, "loss"),
        &["batch", "digit", "carry_kind", "metric"],
    )
}

/// `naive_lens.parquet` values by batch, digit, carry-in, offset and metric.
pub fn naive_lens_values(run: &Path) -> BTreeMap<String, f64> {
    values_by(
        &table(run, "naive_lens"),
        &["batch", "digit", "carry_in", "offset", "metric"],
    )
}

pub fn assert_schema(df: &DataFrame, expected: &[(&str, DataType)]) {
    let got: Vec<(String, DataType)> = df
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.dtype().clone()))
        .collect();
    let want: Vec<(String, DataType)> = expected
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    assert_eq!(got, want);
}

pub fn snapshot_batches(run: &Path) -> Vec<u64> {
    RunDir::open(run)
        .unwrap()
        .manifest()
        .snapshots
        .iter()
        .map(|e| e.batch)
        .collect()
}

pub fn run_config(run: &Path) -> TrainConfig {
    serde_json::from_value(RunDir::open(run).unwrap().config().clone()).unwrap()
}

/// Equal, or both NaN, or within `tol` relative to max(1, |expected|).
pub fn close(actual: f64, expected: f64, tol: f64) -> bool {
    if expected.is_nan() || actual.is_nan() {
        return expected.is_nan() && actual.is_nan();
    }
    (actual - expected).abs() <= tol * expected.abs().max(1.0)
}
