"""Benchmark of input drift: ours (`mlops_nb.drift`, DuckDB over Parquet, the reference profile precomputed) against
Evidently's `DataDriftPreset` on the same rows (a script, not collected by pytest).

    python tests/bench/bench_drift.py                    # 1,000,000 reference vs 1,000,000 current rows, 18 columns
    python tests/bench/bench_drift.py --rows 200000      # smaller

Drift is planted in a third of the columns, at strengths from obvious to near the 0.1 threshold of both methods (each
column's planted distance is printed: the truth). Each method runs in its own child process — ours reads the current
window's Parquet files only (the profile of the reference was taken before, as at training time); Evidently loads both
windows into pandas, as its API requires — and its wall time and peak RSS (wait4) are printed with the ratio and both
verdicts per column.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC = [f"num_{i:02d}" for i in range(12)]
CATEGORICAL = [f"cat_{i:02d}" for i in range(6)]
# planted drift: column -> strength (numeric: a mean shift in standard deviations, about the normed Wasserstein
# distance;
# categorical: how much share moves from the first category to the last)
PLANTED = {"num_00": 0.5, "num_01": 0.2, "num_02": 0.13, "num_03": 0.11, "num_04": 0.09,
           "cat_00": 0.3, "cat_01": 0.15}


def make_window(n: int, seed: int, drifted: bool) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    cols = {}
    for i, c in enumerate(NUMERIC):
        shift = PLANTED.get(c, 0.0) if drifted else 0.0
        x = r.normal(shift, 1.0, n) if i % 2 == 0 else r.gamma(2.0, 1.0, n) / np.sqrt(2.0) + shift
        x[r.random(n) < 0.02] = np.nan
        cols[c] = x
    for c in CATEGORICAL:
        p = np.array([0.4, 0.3, 0.2, 0.1])
        if drifted and c in PLANTED: p = p + np.array([-PLANTED[c], 0, 0, PLANTED[c]])
        cols[c] = r.choice(["a", "b", "c", "d"], n, p=p / p.sum())
    return pd.DataFrame(cols)


def write_window(df: pd.DataFrame, folder: Path, parts: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(parts):
        df.iloc[k::parts].to_parquet(folder / f"part-{k}.parquet", index=False)


def child_ours(root: Path, exact: bool = True) -> dict:
    import duckdb
    from mlops_nb.drift import ReferenceProfile, drift_table
    profile = ReferenceProfile.from_json((root / "profile.json").read_text())
    con = duckdb.connect()
    con.execute("SET threads = 2")
    t = time.perf_counter()
    table = drift_table(con, f"read_parquet('{root / 'current'}/*.parquet')", profile, exact=exact)
    return {"seconds": time.perf_counter() - t, "verdict": dict(zip(table.column, table.drifted.astype(bool))),
            "distance": dict(zip(table.column, table.distance.astype(float)))}


def child_evidently(root: Path) -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    t = time.perf_counter()
    ref = pd.read_parquet(root / "reference"); cur = pd.read_parquet(root / "current")
    dd = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd),
                                           Dataset.from_pandas(ref, data_definition=dd))
    values = {m["config"]["column"]: float(m["value"]) for m in snap.dict()["metrics"]
              if m["metric_name"].startswith("ValueDrift")}
    return {"seconds": time.perf_counter() - t, "verdict": {c: v >= 0.1 for c, v in values.items()},
            "distance": values}


def run_child(which: str, root: Path) -> dict:
    out = root / f"{which}.json"
    p = subprocess.Popen([sys.executable, __file__, "--child", which, "--root", str(root)])
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0: raise SystemExit(f"the {which} child failed (status {status})")
    res = json.loads(out.read_text())
    res["wall"] = res["seconds"]; res["peak_rss_gb"] = usage.ru_maxrss / 2**20
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--root", default="/tmp/mlops-nb-bench-drift")
    ap.add_argument("--child", choices=["ours", "ours_tdigest", "evidently"])
    a = ap.parse_args()
    root = Path(a.root)
    if a.child:
        res = child_evidently(root) if a.child == "evidently" else child_ours(root, exact=a.child == "ours")
        (root / f"{a.child}.json").write_text(json.dumps(res, default=float)); return
    stamp = root / f"rows-{a.rows}"
    if not stamp.exists():
        print(f"writing {a.rows:,} reference and {a.rows:,} current rows ({len(NUMERIC)} numeric, "
              f"{len(CATEGORICAL)} categorical columns) under {root}", flush=True)
        write_window(make_window(a.rows, 0, False), root / "reference")
        write_window(make_window(a.rows, 1, True), root / "current")
        import duckdb
        from mlops_nb.drift import profile_relation
        t = time.perf_counter()
        profile = profile_relation(duckdb.connect(), f"read_parquet('{root / 'reference'}/*.parquet')",
                                   NUMERIC, CATEGORICAL)
        print(f"reference profile (once, at training time): {time.perf_counter() - t:.1f} s, "
              f"{len(profile.to_json()) / 1024:.0f} KiB of JSON", flush=True)
        (root / "profile.json").write_text(profile.to_json()); stamp.touch()
    ours, fast, ev = run_child("ours", root), run_child("ours_tdigest", root), run_child("evidently", root)
    print(f"\n{'column':8} {'planted':>8} {'ours':>8} {'evidently':>10}  verdicts (ours / evidently)")
    agree = 0
    for c in NUMERIC + CATEGORICAL:
        same = ours["verdict"][c] == ev["verdict"][c]; agree += same
        print(f"{c:8} {PLANTED.get(c, 0.0):8.3f} {ours['distance'][c]:8.4f} {ev['distance'][c]:10.4f}  "
              f"{ours['verdict'][c]!s:5} / {ev['verdict'][c]!s:5}{'' if same else '   <- differ'}")
    n = len(NUMERIC) + len(CATEGORICAL)
    print(f"\nsame verdict on {agree}/{n} columns ({agree / n:.0%})")
    print(f"ours:      {ours['wall']:7.2f} s, peak RSS {ours['peak_rss_gb']:.2f} GB (exact quantiles, the default)")
    worst = max(abs(fast["distance"][c] - ev["distance"][c]) for c in NUMERIC)
    same = sum(fast["verdict"][c] == ev["verdict"][c] for c in ev["verdict"])
    print(f"ours, t-digest: {fast['wall']:7.2f} s, peak RSS {fast['peak_rss_gb']:.2f} GB (exact=False; "
          f"largest distance error {worst:.4f}, {same}/{n} same verdicts)")
    print(f"evidently: {ev['wall']:7.2f} s, peak RSS {ev['peak_rss_gb']:.2f} GB")
    print(f"ratio: {ev['wall'] / ours['wall']:.1f}x faster, "
          f"{ev['peak_rss_gb'] / ours['peak_rss_gb']:.1f}x less memory"
          f" (t-digest: {ev['wall'] / fast['wall']:.1f}x faster)")


if __name__ == "__main__":
    main()
