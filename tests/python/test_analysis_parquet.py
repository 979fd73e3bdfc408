"""The analysis tables as a Python user reads them: `analyze all` on two tiny runs, then every
Parquet file under analysis/ (and train_log.parquet) read with pyarrow AND with polars; both
readers must agree, the column names and types are the documented ones, and values recomputed
here from the tables (docs/metrics.md, "Per-digit metrics" and "Key frequencies") agree with
what the Rust side wrote:

- loss = pair_mass_loss + pair_loss per (batch, digit);
- p_delta over the ten offsets sums to at most 1, and to more than 0.9 late in training;
- p_delta over all examples is the carry-in-weighted mix of the carry-in 0 and 1 rows, with
  the weights from the carry-kind fractions of loss.parquet;
- loss and accuracy over all examples are the fraction-weighted means of the carry-kind rows;
- Jensen bounds: loss_naive >= -ln p_delta[0], loss_naive_plus1 >= -ln p_delta[1],
  pair_mass_loss >= -ln(p_delta[0] + p_delta[1]);
- key_frequencies: fractions in [0, 1], above_threshold = fraction >= threshold, and the key
  set recorded with the excluded-loss rows is the set of frequencies above the threshold;
- phases: one row per (digit, source), final_loss within the range of the curve's last window.

Needs the `train` and `analyze` binaries built in the debug profile
(`cargo build -p digitlab --bin train -p digitlab-analysis --bin analyze`); their folder is
$DIGITLAB_TARGET_DIR/debug, by default target/debug of the repository.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("DIGITLAB_TARGET_DIR", ROOT / "target"))
TRAIN = TARGET / "debug" / "train"
ANALYZE = TARGET / "debug" / "analyze"
CONTEXTS = 10
EVAL_SEED = 1234

# (name, train options): the units digit of 3-digit addition, which a d_model 64 model learns in
# a few hundred batches (key frequencies appear, p_delta concentrates), and every digit of the
# answer layout on a tiny model (carries, the final carry digit n without a grid).
RUNS = [
    ("units", ["--n-digits", "3", "--digit", "0", "--d-model", "64", "--n-heads", "4",
               "--steps", "800", "--snapshot-every", "50"]),
    ("answer", ["--n-digits", "3", "--layout", "answer", "--digits", "all", "--d-model", "16",
                "--n-heads", "2", "--steps", "150", "--snapshot-every", "50"]),
]

STR, I64, F64, BOOL = pl.String, pl.Int64, pl.Float64, pl.Boolean
HEAD = [("run", STR), ("batch", I64), ("digit", I64)]
TAIL = [("metric", STR), ("value", F64), ("contexts", I64), ("eval_seed", I64)]
SCHEMAS = {
    "loss": HEAD + [("carry_kind", STR)] + TAIL,
    "naive_lens": HEAD + [("carry_in", STR), ("offset", I64)] + TAIL,
    "excluded_loss": HEAD + [("frequencies", STR), ("key_set", STR)] + TAIL,
    "key_frequencies": [("run", STR), ("digit", I64), ("snapshot_batch", I64), ("neuron", I64),
                        ("frequency", I64), ("fraction", F64), ("above_threshold", BOOL),
                        ("threshold", F64)],
    "phases": [("run", STR), ("digit", I64), ("source", STR), ("leaves_ln10_batch", I64),
               ("reaches_carry_entropy_batch", I64), ("reaches_zero_batch", I64),
               ("carry_entropy", F64), ("final_loss", F64), ("final_level", STR),
               ("still_descending", BOOL), ("n_plateaus", I64)],
    "plateaus": [("run", STR), ("digit", I64), ("source", STR), ("start_batch", I64),
                 ("end_batch", I64), ("level", STR), ("median_loss", F64)],
}
LEVELS = {"ln10", "carry_entropy", "zero", "other"}


def binary(path):
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build -p digitlab --bin train "
                    f"-p digitlab-analysis --bin analyze` first")
    return str(path)


@pytest.fixture(scope="module", params=RUNS, ids=[name for name, _ in RUNS])
def run_dir(request, tmp_path_factory):
    name, options = request.param
    out = tmp_path_factory.mktemp("runs") / name
    subprocess.run([binary(TRAIN), *options, "-q", str(out)], check=True, capture_output=True,
                   timeout=600)
    done = subprocess.run([binary(ANALYZE), "all", "-q", "--contexts", str(CONTEXTS), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


def config(run):
    return json.loads((run / "config.json").read_text())


def snapshot_batches(run):
    manifest = json.loads((run / "manifest.json").read_text())
    return sorted(e["batch"] for e in manifest["snapshots"])


def read(run, name):
    return pl.read_parquet(run / "analysis" / f"{name}.parquet")


def pivot(df, index, on="metric"):
    """One column per metric (or per `on` value), one row per `index`."""
    return df.pivot(on=on, index=index, values="value", aggregate_function=None).sort(index)


# ---------------------------------------------------------------------------------------------
# Every file, both readers, the schema
# ---------------------------------------------------------------------------------------------

def test_every_parquet_file_reads_alike_with_pyarrow_and_polars(run_dir):
    files = sorted((run_dir / "analysis").glob("*.parquet")) + [run_dir / "train_log.parquet"]
    names = {f.stem for f in files}
    assert set(SCHEMAS) | {"train_log"} <= names, f"missing tables: {set(SCHEMAS) - names}"
    assert not list((run_dir / "analysis").glob("*.tmp*")), "temporary files left behind"
    for path in files:
        table = pq.read_table(path)
        df = pl.read_parquet(path)
        assert table.num_rows == df.height, path.name
        # Only plateaus may be empty (a run shorter than the shortest plateau has none).
        assert df.height > 0 or path.stem == "plateaus", path.name
        assert table.column_names == df.columns, path.name
        assert pl.from_arrow(table).equals(df), f"{path.name}: pyarrow and polars disagree"
        # Text columns are UTF-8 strings at the Parquet level, whatever Arrow flavour, so
        # any reader (DuckDB, Spark, pandas) sees text.
        parquet_schema = pq.ParquetFile(path).schema
        for i, field in enumerate(table.schema):
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type) \
                    or pa.types.is_string_view(field.type):
                column = parquet_schema.column(i)
                assert column.physical_type == "BYTE_ARRAY", (path.name, field.name)
                assert column.logical_type.type == "STRING", (path.name, field.name)


def test_schemas_are_the_documented_ones(run_dir):
    arrow_types = {STR: ("string", "large_string", "string_view"), I64: ("int64",),
                   F64: ("double",), BOOL: ("bool",)}
    for name, schema in SCHEMAS.items():
        df = read(run_dir, name)
        assert list(df.schema.items()) == schema, name
        arrow = pq.read_schema(run_dir / "analysis" / f"{name}.parquet")
        for column, dtype in schema:
            assert str(arrow.field(column).type) in arrow_types[dtype], (name, column)
        # Every row carries the run id; keys that are never null.
        assert df["run"].unique().to_list() == ([run_dir.name] if df.height else []), name
        for column in ("run", "digit", "batch", "metric", "value"):
            if column in df.columns:
                assert df[column].null_count() == 0, (name, column)
    log = pl.read_parquet(run_dir / "train_log.parquet")
    cfg = config(run_dir)
    assert log.schema["batch"] == I64
    assert log.schema["loss"] == pl.Float32
    for k in cfg["task"]["targets"]:
        assert log.schema[f"loss_digit_{k}"] == pl.Float32
    assert log["batch"].to_list() == list(range(cfg["steps"]))
    digit_losses = np.column_stack([log[f"loss_digit_{k}"].to_numpy()
                                    for k in cfg["task"]["targets"]]).astype(np.float64)
    # f32 losses from two reductions: close, not bit-equal.
    np.testing.assert_allclose(log["loss"].to_numpy(), digit_losses.mean(axis=1), rtol=1e-4,
                               atol=1e-6)


def test_rows_cover_every_snapshot_and_digit(run_dir):
    cfg = config(run_dir)
    n = cfg["task"]["n_digits"]
    digits = cfg["task"]["targets"]
    batches = snapshot_batches(run_dir)
    per_snapshot = {"loss": 2 + 3 * 3, "naive_lens": 3 * 10 + 4, "excluded_loss": 7 * 2}
    for name, rows in per_snapshot.items():
        df = read(run_dir, name)
        wanted = [k for k in digits if name != "excluded_loss" or k < n]
        assert sorted(df["digit"].unique().to_list()) == wanted, name
        assert sorted(df["batch"].unique().to_list()) == batches, name
        assert df.height == len(batches) * len(wanted) * rows, name
        assert df["contexts"].unique().to_list() == [CONTEXTS], name
        assert df["eval_seed"].unique().to_list() == [EVAL_SEED], name
        key_columns = [c for c in df.columns if c not in ("value",)]
        assert df.select(key_columns).is_duplicated().sum() == 0, f"{name}: duplicate rows"


# ---------------------------------------------------------------------------------------------
# Values recomputed from the tables
# ---------------------------------------------------------------------------------------------

def test_loss_is_pair_mass_loss_plus_pair_loss(run_dir):
    loss = read(run_dir, "loss").filter((pl.col("carry_kind") == "all") & (pl.col("metric") == "loss"))
    lens = pivot(read(run_dir, "naive_lens").filter(pl.col("metric") != "p_delta"), ["batch", "digit"])
    joined = loss.join(lens, on=["batch", "digit"], how="inner")
    assert joined.height == loss.height == lens.height
    total = joined["pair_mass_loss"].to_numpy() + joined["pair_loss"].to_numpy()
    np.testing.assert_allclose(joined["value"].to_numpy(), total, rtol=0, atol=1e-6)
    # The split moves: the loss outside the two candidates falls during training.
    first, last = lens.filter(pl.col("batch") == 0), lens.filter(pl.col("batch") == lens["batch"].max())
    assert (first["pair_mass_loss"].to_numpy() > last["pair_mass_loss"].to_numpy()).all()


def test_p_delta_sums_and_carry_in_mixture(run_dir):
    lens = read(run_dir, "naive_lens")
    p = lens.filter(pl.col("metric") == "p_delta")
    sums = p.group_by("batch", "digit", "carry_in").agg(pl.col("value").sum().alias("total"))
    finite = sums.filter(pl.col("total").is_not_nan())
    assert finite.height > 0
    assert (finite["total"] <= 1.0 + 1e-9).all(), "probabilities on ten digits exceed 1"
    assert (finite["total"] > 0.0).all()
    last = finite.filter((pl.col("batch") == sums["batch"].max()) & (pl.col("carry_in") == "all"))
    assert (last["total"] > 0.9).all(), f"late in training p_delta should hold the mass: {last}"
    assert (p["offset"].drop_nulls().unique().sort().to_list() == list(range(10)))
    assert lens.filter(pl.col("metric") != "p_delta")["offset"].null_count() == \
        lens.filter(pl.col("metric") != "p_delta").height

    # Carry-in 1 fraction = direct + cascade fraction of loss.parquet.
    loss = read(run_dir, "loss").filter(pl.col("metric") == "fraction")
    f1 = loss.filter(pl.col("carry_kind") != "none").group_by("batch", "digit").agg(
        pl.col("value").sum().alias("f1"))
    wide = pivot(p, ["batch", "digit", "offset"], on="carry_in").join(f1, on=["batch", "digit"])
    assert wide.height == p.height // 3
    f1 = wide["f1"].to_numpy()
    mix = (1 - f1) * np.nan_to_num(wide["0"].to_numpy()) + f1 * np.nan_to_num(wide["1"].to_numpy())
    np.testing.assert_allclose(wide["all"].to_numpy(), mix, rtol=0, atol=1e-9)
    # A carry-in with no examples is NaN, not 0.
    assert np.isnan(wide.filter(pl.col("f1") == 0)["1"].to_numpy()).all()
    assert np.isnan(wide.filter(pl.col("f1") == 1)["0"].to_numpy()).all()


def test_naive_losses_respect_jensen(run_dir):
    lens = read(run_dir, "naive_lens")
    p = pivot(lens.filter((pl.col("metric") == "p_delta") & (pl.col("carry_in") == "all")),
              ["batch", "digit"], on="offset")
    losses = pivot(lens.filter(pl.col("metric") != "p_delta"), ["batch", "digit"])
    both = p.join(losses, on=["batch", "digit"])
    p0, p1 = both["0"].to_numpy(), both["1"].to_numpy()
    slack = 1e-9
    assert (both["loss_naive"].to_numpy() >= -np.log(p0) - slack).all()
    assert (both["loss_naive_plus1"].to_numpy() >= -np.log(p1) - slack).all()
    assert (both["pair_mass_loss"].to_numpy() >= -np.log(p0 + p1) - slack).all()
    assert (both["pair_loss"].to_numpy() >= -slack).all()
    assert (both["pair_mass_loss"].to_numpy() >= -slack).all()


def test_loss_and_accuracy_are_fraction_weighted_means_of_carry_kinds(run_dir):
    loss = read(run_dir, "loss")
    kinds = pivot(loss.filter(pl.col("carry_kind") != "all"), ["batch", "digit", "carry_kind"])
    overall = pivot(loss.filter(pl.col("carry_kind") == "all"), ["batch", "digit"])
    assert (kinds.group_by("batch", "digit").agg(pl.col("fraction").sum())["fraction"]
            - 1.0).abs().max() < 1e-12
    for metric in ("loss", "accuracy"):
        weighted = kinds.filter(pl.col("fraction") > 0).group_by("batch", "digit").agg(
            (pl.col("fraction") * pl.col(metric)).sum().alias("mix")).sort("batch", "digit")
        both = overall.join(weighted, on=["batch", "digit"])
        assert both.height == overall.height
        np.testing.assert_allclose(both[metric].to_numpy(), both["mix"].to_numpy(), rtol=1e-9,
                                   atol=1e-12)
    # Absent kinds are NaN; accuracies are in [0, 1]; accuracy is a multiple of 1/examples.
    absent = kinds.filter(pl.col("fraction") == 0)
    assert absent["loss"].is_nan().all() and absent["accuracy"].is_nan().all()
    acc = overall["accuracy"].to_numpy()
    assert ((0 <= acc) & (acc <= 1)).all()
    examples = 100 * CONTEXTS
    np.testing.assert_allclose(acc * examples, np.round(acc * examples), atol=1e-6)
    # At initialisation the loss is near ln(12) (12 outputs); it falls.
    first = overall.filter(pl.col("batch") == 0)["loss"].to_numpy()
    assert (abs(first - math.log(12)) < 0.7).all(), first
    assert (overall.filter(pl.col("batch") == overall["batch"].max())["loss"].to_numpy()
            < first).all()


def test_key_frequencies(run_dir):
    cfg = config(run_dir)
    n = cfg["task"]["n_digits"]
    keys = read(run_dir, "key_frequencies")
    grid_digits = [k for k in cfg["task"]["targets"] if k < n]
    assert sorted(keys["digit"].unique().to_list()) == grid_digits
    assert keys.height == len(grid_digits) * cfg["model"]["d_mlp"]
    for k in grid_digits:
        assert sorted(keys.filter(pl.col("digit") == k)["neuron"].to_list()) == \
            list(range(cfg["model"]["d_mlp"]))
    assert keys["snapshot_batch"].unique().to_list() == [snapshot_batches(run_dir)[-1]]
    fraction = keys["fraction"].to_numpy()
    assert ((0 <= fraction) & (fraction <= 1 + 1e-12)).all()
    assert keys["frequency"].is_between(1, 5).all()
    assert (keys["above_threshold"] == (keys["fraction"] >= keys["threshold"])).all()
    # The key set recorded with each digit's excluded-loss rows, e.g. "1,3".
    ex = read(run_dir, "excluded_loss")
    recorded = {}
    for digit in grid_digits:
        labels = ex.filter(pl.col("digit") == digit)["key_set"].unique().to_list()
        assert len(labels) == 1
        recorded[digit] = sorted(int(f) for f in labels[0].split(",") if f)
    found = {k: sorted(keys.filter((pl.col("digit") == k) & pl.col("above_threshold"))["frequency"]
                       .unique().to_list()) for k in grid_digits}
    assert recorded == found
    if run_dir.name == "units":
        assert found[0], "the trained units digit has key frequencies"


def test_excluded_loss_rows(run_dir):
    ex = read(run_dir, "excluded_loss")
    assert sorted(ex["frequencies"].unique().to_list()) == ["1", "2", "3", "4", "5", "all", "key"]
    assert sorted(ex["metric"].unique().to_list()) == ["excluded_loss", "restricted_loss"]
    values = ex["value"].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    wide = pivot(ex.drop("key_set"), ["batch", "digit", "metric"], on="frequencies")
    loss = read(run_dir, "loss").filter((pl.col("carry_kind") == "all") & (pl.col("metric") == "loss"))
    labels = ex.select("digit", "key_set").unique().iter_rows()
    for digit, freqs in labels:
        rows = wide.filter(pl.col("digit") == int(digit))
        freqs = [f for f in freqs.split(",") if f]
        if len(freqs) == 1:
            # The key set of one frequency is that frequency's row.
            np.testing.assert_allclose(rows["key"].to_numpy(), rows[freqs[0]].to_numpy(), rtol=1e-12)
        if sorted(freqs) == ["1", "2", "3", "4", "5"]:
            np.testing.assert_allclose(rows["key"].to_numpy(), rows["all"].to_numpy(), rtol=1e-12)
        if not freqs:
            # Excluding nothing leaves the loss as it is.
            excl = rows.filter(pl.col("metric") == "excluded_loss").join(
                loss, on=["batch", "digit"])
            np.testing.assert_allclose(excl["key"].to_numpy(), excl["value"].to_numpy(), atol=1e-5)
    if run_dir.name == "units":
        # A trained units digit is a function of a_0 + b_0 mod 10, i.e. of the sum's Fourier
        # directions: keeping only them (restricted, all frequencies) gives a far lower loss
        # than removing them (excluded) at the end. (Which frequencies pass the key threshold
        # depends on the trajectory, so the key set alone is not asserted on.)
        last = wide.filter(pl.col("batch") == wide["batch"].max())
        restricted = last.filter(pl.col("metric") == "restricted_loss")["all"][0]
        excluded = last.filter(pl.col("metric") == "excluded_loss")["all"][0]
        assert restricted < 0.1 and excluded > 1.0, (restricted, excluded)


def test_phases_and_plateaus(run_dir):
    cfg = config(run_dir)
    phases = read(run_dir, "phases")
    expected = {(k, s) for k in cfg["task"]["targets"] for s in ("eval", "train_log")}
    assert set(zip(phases["digit"].to_list(), phases["source"].to_list())) == expected
    assert phases.height == len(expected)
    assert set(phases["final_level"].to_list()) <= LEVELS
    steps = cfg["steps"]
    for column in ("leaves_ln10_batch", "reaches_carry_entropy_batch", "reaches_zero_batch"):
        assert phases[column].drop_nulls().is_between(0, steps).all(), column
    loss = read(run_dir, "loss").filter((pl.col("carry_kind") == "all") & (pl.col("metric") == "loss"))
    log = pl.read_parquet(run_dir / "train_log.parquet")
    for row in phases.iter_rows(named=True):
        k = row["digit"]
        if row["source"] == "eval":
            curve = loss.filter(pl.col("digit") == k).sort("batch")
            batches, values = curve["batch"].to_numpy(), curve["value"].to_numpy()
        else:
            batches, values = log["batch"].to_numpy(), log[f"loss_digit_{k}"].to_numpy()
        window = values[batches >= batches[-1] - 200]
        assert window.min() * (1 - 1e-6) <= row["final_loss"] <= window.max() * (1 + 1e-6), row
        if row["final_level"] == "zero":
            assert row["final_loss"] < 1e-3
    plateaus = read(run_dir, "plateaus")
    assert (plateaus["start_batch"] <= plateaus["end_batch"]).all()
    assert set(plateaus["level"].to_list()) <= LEVELS
    counts = plateaus.group_by("digit", "source").len()
    joined = phases.join(counts, on=["digit", "source"], how="left").with_columns(
        pl.col("len").fill_null(0))
    assert (joined["n_plateaus"] == joined["len"]).all()
