//! The column names and types of every analysis table (the contract with Python readers).

use polars::prelude::DataType;

use crate::common::*;

/// Column names and types of every analysis table.
#[test]
fn analysis_tables_have_typed_tidy_columns() {
    setup();
    use DataType::{Boolean, Float64, Int64, String as Str};
    let run = HUNDREDS_32_ANALYSED.path();
    let common_head = [("run", Str), ("batch", Int64), ("digit", Int64)];
    let common_tail = [
        ("metric", Str),
        ("value", Float64),
        ("contexts", Int64),
        ("eval_seed", Int64),
    ];
    let with = |keys: &[(&'static str, DataType)], extra: &[(&'static str, DataType)]| {
        let mut v: Vec<(&str, DataType)> = common_head.to_vec();
        v.extend_from_slice(keys);
        v.extend_from_slice(&common_tail);
        v.extend_from_slice(extra);
        v
    };
    assert_schema(&table(run, "loss"), &with(&[("carry_kind", Str)], &[]));
    assert_schema(
        &table(run, "naive_lens"),
        &with(&[("carry_in", Str), ("offset", Int64)], &[]),
    );
    assert_schema(
        &table(run, "excluded_loss"),
        &with(&[("frequencies", Str), ("key_set", Str)], &[]),
    );
    assert_schema(
        &table(run, "key_frequencies"),
        &[
            ("run", Str),
            ("digit", Int64),
            ("snapshot_batch", Int64),
            ("neuron", Int64),
            ("frequency", Int64),
            ("fraction", Float64),
            ("above_threshold", Boolean),
            ("threshold", Float64),
        ],
    );
    let phases = table(run, "phases");
    for (column, dtype) in [
        ("run", Str),
        ("digit", Int64),
        ("source", Str),
        ("leaves_ln10_batch", Int64),
        ("final_loss", Float64),
        ("final_level", Str),
        ("still_descending", Boolean),
    ] {
        assert_eq!(
            phases.column(column).unwrap().dtype(),
            &dtype,
            "phases.{column}"
        );
    }
    for name in [
        "loss",
        "naive_lens",
        "excluded_loss",
        "key_frequencies",
        "phases",
        "plateaus",
    ] {
        let df = table(run, name);
        assert!(df.height() > 0, "{name} is empty");
        for r in 0..df.height() {
            assert_eq!(
                cell(&df, "run", r),
                format!("{}-analysed", HUNDREDS_32.name),
                "{name}"
            );
        }
    }
}
