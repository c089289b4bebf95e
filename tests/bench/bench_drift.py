"""Benchmark of input drift: ours (`mlops_nb.drift`, DuckDB over Parquet, the reference profile precomputed) against
Evidently's `DataDriftPreset` on the same rows (a script, not collected by pytest).

    python tests/bench/bench_drift.py                    # 1,000,000 reference vs 1,000,000 current rows, 18 columns
    python tests/bench/bench_drift.py --rows 200000      # smaller

The numeric columns are continuous (normal, gamma, a lognormal tail), integer counts (rounded normals, ~30 values)
and a 0/1 flag, so both of our paths run: the grid for continuous inputs, exact value counts for the few-valued ones
(Evidently compares the flag by Jensen-Shannon, and so do we). Drift is planted in a third of the columns, at strengths
from obvious to near the 0.1 threshold of both methods; each column's true distance between the two populations is
printed, and a verdict is right when it says what that truth says (>= 0.1). Each method runs in its own child process
— ours reads the current window's Parquet files only (the profile of the reference is taken before, as at training
time, and its time printed); Evidently loads both windows into pandas, as its API requires — and its wall time and
peak RSS (wait4) are printed with the ratio, both verdicts per column and who was right where they differ. The load
average is printed beside the figures: the machine may be shared.
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
# planted drift: column -> strength (numeric: a mean shift in standard deviations; categorical: how much share moves
# from the first category to the last)
PLANTED = {"num_00": 0.5, "num_01": 0.2, "num_02": 0.13, "num_03": 0.11, "num_04": 0.09,
           "cat_00": 0.3, "cat_01": 0.15}
KIND = {c: ("flag" if i == 11 else "lognormal" if i == 7 else ("normal", "gamma", "integer")[i % 3])
        for i, c in enumerate(NUMERIC)}
CATEGORIES, SHARES, FLAG_SHARE, INT_SD = ["a", "b", "c", "d"], np.array([0.4, 0.3, 0.2, 0.1]), 0.3, 3.0
DATA_VERSION = 2                                  # bump when make_window changes: the data on disk is rewritten


def category_shares(c: str, drifted: bool) -> np.ndarray:
    p = SHARES + (np.array([-PLANTED[c], 0, 0, PLANTED[c]]) if drifted and c in PLANTED else 0.0)
    return p / p.sum()


def make_window(n: int, seed: int, drifted: bool) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    cols = {}
    for c in NUMERIC:
        shift, kind = PLANTED.get(c, 0.0) if drifted else 0.0, KIND[c]
        if kind == "normal": x = r.normal(shift, 1.0, n)
        elif kind == "gamma": x = r.gamma(2.0, 1.0, n) / np.sqrt(2.0) + shift          # standard deviation 1
        elif kind == "lognormal": x = r.lognormal(0.0, 1.0, n)                        # a long right tail
        elif kind == "integer": x = np.round(r.normal(INT_SD * shift, INT_SD, n))     # a count-like input, ~30 values
        else: x = (r.random(n) < FLAG_SHARE).astype(float)                            # a 0/1 flag
        x[r.random(n) < 0.02] = np.nan
        cols[c] = x
    for c in CATEGORICAL: cols[c] = r.choice(CATEGORIES, n, p=category_shares(c, drifted))
    return pd.DataFrame(cols)


def true_distance(c: str) -> float:
    "The distance between the two populations the windows are drawn from (what a verdict should say), not a sample."
    from scipy.spatial import distance
    from scipy.stats import norm
    if c in CATEGORICAL: return float(distance.jensenshannon(category_shares(c, False), category_shares(c, True)))
    if KIND[c] == "flag": return 0.0
    if KIND[c] != "integer": return PLANTED.get(c, 0.0)                          # a shift of the whole distribution
    k = np.arange(-60, 61)                                                        # rounded normals: from their pmfs
    cdf = lambda mu: norm.cdf((k + 0.5 - mu) / INT_SD)
    pmf = np.diff(np.concatenate([[0.0], cdf(0.0)]))
    sd = np.sqrt(np.sum(pmf * k ** 2) - np.sum(pmf * k) ** 2)
    return float(np.sum(np.abs(cdf(0.0) - cdf(INT_SD * PLANTED.get(c, 0.0))))) / sd


def write_window(df: pd.DataFrame, folder: Path, parts: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(parts):
        df.iloc[k::parts].to_parquet(folder / f"part-{k}.parquet", index=False)


def child_ours(root: Path, exact: bool = True, threads: int = 2) -> dict:
    import duckdb
    from mlops_nb.drift import ReferenceProfile, drift_table
    profile = ReferenceProfile.from_json((root / "profile.json").read_text())
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    t = time.perf_counter()
    table = drift_table(con, f"read_parquet('{root / 'current'}/*.parquet')", profile, exact=exact)
    path = {c: "categorical" if p.kind == "categorical" else "values" if p.values else "grid"
            for c, p in profile.columns.items()}
    return {"seconds": time.perf_counter() - t, "verdict": dict(zip(table.column, table.drifted.astype(bool))),
            "distance": dict(zip(table.column, table.distance.astype(float))), "path": path,
            "method": dict(zip(table.column, table.method))}


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


def child_prepare(root: Path, rows: int) -> dict:
    "The two windows on disk (unless there from before) and the reference profile, timed."
    import duckdb

    from mlops_nb.drift import profile_relation
    stamp = root / f"rows-{rows}-v{DATA_VERSION}"
    if not stamp.exists():
        print(f"writing {rows:,} reference and {rows:,} current rows ({len(NUMERIC)} numeric, "
              f"{len(CATEGORICAL)} categorical columns) under {root}", flush=True)
        for old in root.glob("rows-*"): old.unlink()
        write_window(make_window(rows, 0, False), root / "reference")
        write_window(make_window(rows, 1, True), root / "current")
        stamp.touch()
    t = time.perf_counter()
    profile = profile_relation(duckdb.connect(), f"read_parquet('{root / 'reference'}/*.parquet')", NUMERIC,
                               CATEGORICAL)
    seconds = time.perf_counter() - t
    (root / "profile.json").write_text(profile.to_json())
    return {"seconds": seconds, "profile_seconds": seconds, "profile_kib": len(profile.to_json()) / 1024}


def run_child(which: str, root: Path, threads: int = 2, rows: int = 0) -> dict:
    out = root / f"{which}.json"
    p = subprocess.Popen([sys.executable, __file__, "--child", which, "--root", str(root), "--threads", str(threads),
                          "--rows", str(rows)])
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0: raise SystemExit(f"the {which} child failed (status {status})")
    res = json.loads(out.read_text())
    res["wall"] = res["seconds"]; res["peak_rss_gb"] = usage.ru_maxrss / 2**20
    return res


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--root", default="/tmp/mlops-nb-bench-drift")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads for ours")
    ap.add_argument("--child", choices=["prepare", "ours", "ours_tdigest", "evidently"])
    a = ap.parse_args()
    root = Path(a.root)
    if a.child:
        res = (child_prepare(root, a.rows) if a.child == "prepare" else child_evidently(root)
               if a.child == "evidently" else child_ours(root, a.child == "ours", a.threads))
        (root / f"{a.child}.json").write_text(json.dumps(res, default=float)); return
    # the data and the profile are made in a child too: a child started from a big parent inherits its peak RSS
    root.mkdir(parents=True, exist_ok=True)
    print(load(), flush=True)
    prep = run_child("prepare", root, rows=a.rows)
    print(f"reference profile (once, at training time): {prep['profile_seconds']:.1f} s, "
          f"{prep['profile_kib']:.0f} KiB of JSON", flush=True)
    ours, fast, ev = (run_child("ours", root, a.threads), run_child("ours_tdigest", root, a.threads),
                      run_child("evidently", root))
    print(f"\n{'column':8} {'path':11} {'truth':>7} {'ours':>8} {'evidently':>10} {'|diff|':>8}  verdicts: "
          f"ours / evidently / truth")
    agree, differ = 0, []
    for c in NUMERIC + CATEGORICAL:
        truth = true_distance(c); should = truth >= 0.1
        same = ours["verdict"][c] == ev["verdict"][c]; agree += same
        if not same: differ.append(f"{c}: {'ours' if ours['verdict'][c] == should else 'evidently'} was right")
        print(f"{c:8} {ours['path'][c] + ('/JS' if ours['method'][c] == 'jensen_shannon' and KIND.get(c) else ''):11} "
              f"{truth:7.4f} {ours['distance'][c]:8.4f} {ev['distance'][c]:10.4f} "
              f"{abs(ours['distance'][c] - ev['distance'][c]):8.1e}  {ours['verdict'][c]!s:5} / {ev['verdict'][c]!s:5}"
              f" / {should!s:5}{'' if same else '   <- differ'}")
    n = len(NUMERIC) + len(CATEGORICAL)
    print(f"\nsame verdict on {agree}/{n} columns ({agree / n:.0%}){': ' + '; '.join(differ) if differ else ''}")
    for path in ("grid", "values", "categorical"):
        cs = [c for c in ours["path"] if ours["path"][c] == path]
        if cs: print(f"largest |ours - evidently| on {path} columns: "
                     f"{max(abs(ours['distance'][c] - ev['distance'][c]) for c in cs):.2e}")
    print(f"ours:      {ours['wall']:7.2f} s, peak RSS {ours['peak_rss_gb']:.2f} GB (the default: one pass of counts)")
    worst = max(abs(fast["distance"][c] - ev["distance"][c]) for c in NUMERIC)
    same = sum(fast["verdict"][c] == ev["verdict"][c] for c in ev["verdict"])
    print(f"ours, t-digest: {fast['wall']:7.2f} s, peak RSS {fast['peak_rss_gb']:.2f} GB (exact=False; "
          f"largest distance error {worst:.4f}, {same}/{n} same verdicts)")
    print(f"evidently: {ev['wall']:7.2f} s, peak RSS {ev['peak_rss_gb']:.2f} GB")
    print(f"ratio: {ev['wall'] / ours['wall']:.1f}x faster, "
          f"{ev['peak_rss_gb'] / ours['peak_rss_gb']:.1f}x less memory"
          f" (t-digest: {ev['wall'] / fast['wall']:.1f}x faster)")
    print(load())


if __name__ == "__main__":
    main()
