"""Benchmark logging a feature table as an MLflow dataset (a script, not collected by pytest; prints figures).

    python tests/bench/bench_dataset.py                      # 20,000 customers x 12 months: the default feature
    table's size
    python tests/bench/bench_dataset.py --customers 100000

What a user would write, `mlflow.data.from_pandas(df, ...)`, infers the dataset's schema by looking at every value of
every text column; ours (`contracts.pandas_dataset`) infers it from a sample that keeps each column's first missing
value, after checking the text columns hold one kind of value throughout. Both run here on the same frame (the demo
feature table: ids, months and categories as text, numbers with missing values); the script checks the two schemas
are equal and prints each one's time and the ratio.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--months", type=int, default=12)
    a = ap.parse_args()
    import mlflow
    from mlops_nb.contracts import frame_digest, pandas_dataset
    from mlops_nb.tracking import quiet_dataset_warnings
    from mlops_nb.sandbox import demo_feature_table
    df, spec = demo_feature_table(a.customers, a.months, seed=0)
    df = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    text = [c for c in df.columns if df[c].dtype == object]
    print(f"frame: {len(df):,} rows, {df.shape[1]} columns ({len(text)} text: {', '.join(text)})")

    t0 = time.perf_counter()
    with quiet_dataset_warnings():
        theirs = mlflow.data.from_pandas(df, source="/tmp/warehouse.duckdb", name="features", targets=spec.target,
                                         digest=frame_digest(df))
        their_schema = theirs.schema
    t_theirs = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = pandas_dataset(df, source="/tmp/warehouse.duckdb", name="features", targets=spec.target)
    t_ours = time.perf_counter() - t0

    if ours.schema != their_schema:
        raise SystemExit(f"the schemas differ:\n ours   {ours.schema}\n theirs {their_schema}")
    print(f"schemas equal ({len(their_schema.inputs)} columns, {sum(not c.required for c in their_schema.inputs)} "
          "optional)")
    print(f"mlflow.data.from_pandas + schema   {t_theirs:7.2f} s")
    print(f"contracts.pandas_dataset           {t_ours:7.2f} s   ({t_theirs / t_ours:.0f}x faster)")


if __name__ == "__main__":
    main()
