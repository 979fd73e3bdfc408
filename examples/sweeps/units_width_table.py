"""Print the units-width sweep's summary as a Markdown table, beside the notebook's figures.

    python examples/sweeps/units_width_table.py runs/units-width/summary.parquet

Needs polars (`pip install polars`). One row per (d_model, n_heads): the batch at which the
units digit leaves ln 10 on the balanced eval set for each seed, their median, the notebook's
single run, and where each seed ends: `zero` or `ln10` when it ends on that plateau
(docs/metrics.md, 'Phases and plateaus'), else its final eval loss.
"""

import sys

import polars as pl

# The notebook's single runs (units digit, weight decay 0; batch size and learning rate not
# recorded): batch at which the loss leaves ln 10.
NOTEBOOK = {
    (128, 4): "120",
    (32, 32): "640",
    (16, 4): "1200",
    (16, 1): "600",
    (8, 4): "1700",
    (8, 8): "1600",
    (8, 1): "1800",
    (4, 4): "2400-2600",
    (4, 1): "2400-2600",
    (3, 3): "5400",
}


def median_batch(batches: list) -> str:
    """The median over seeds, a seed that never left counting as later than every other."""
    order = sorted(batches, key=lambda b: float("inf") if b is None else b)
    middle = order[(len(order) - 1) // 2 : len(order) // 2 + 1]
    if any(b is None for b in middle):
        return "never"
    return f"{sum(middle) / len(middle):.0f}"


def main(path: str) -> None:
    runs = (
        pl.read_parquet(path)
        .filter((pl.col("source") == "eval") & (pl.col("digit") == 0))
        .sort("seed")
        .group_by(["d_model", "n_heads"], maintain_order=True)
        .agg(
            pl.col("leaves_ln10_batch"),
            pl.col("final_level"),
            pl.col("final_loss"),
            pl.col("seed"),
        )
        .sort(["d_model", "n_heads"], descending=True)
    )
    print("| d_model / heads | leaves ln 10, per seed | median | notebook | loss at the end, per seed |")
    print("|---|---|---|---|---|")
    for row in runs.iter_rows(named=True):
        left = ", ".join("never" if b is None else str(b) for b in row["leaves_ln10_batch"])
        median = median_batch(row["leaves_ln10_batch"])
        notebook = NOTEBOOK.get((row["d_model"], row["n_heads"]), "")
        ends = ", ".join(
            level if level in ("zero", "ln10") else f"{loss:.2g}"
            for level, loss in zip(row["final_level"], row["final_loss"])
        )
        print(f"| {row['d_model']} / {row['n_heads']} | {left} | {median} | {notebook} | {ends} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/units-width/summary.parquet")
