"""Benchmark: operated months at 1,000,000 customers, step by step (a script, not collected by pytest).

    python tests/bench/bench_operate_month.py                        # 1,000,000 customers, 6 history + 2 operated
    python tests/bench/bench_operate_month.py --customers 20000      # the pipeline's default size

The goal (issue #18): one operated month at a million customers in at most 60 s. Set-up, not timed as part of the
month: the history's lake, its ETL load, the feature table, and a sandbox champion trained on it (a gradient-boosted
model, as the lifecycle's usual winner, trained on every history row), its monitoring reference, which the
lifecycle's `reference` phase builds once per version, and the offer policies (the `policy` phase: the risk policy in
force and an uplift policy judged — each labelled month values both on its exploration campaign). Then `operate`
runs each operated month — observe, load, quality, features (one month, incremental), scoring of every active
customer, the campaign, resolve, monitor (reading the reference), alerts — and the script prints each step's wall
time, with the machine's load average. For comparison it then times what the month's features step would cost without
the incremental build: the whole table rebuilt (`write_features(cfg, full=True)`).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--history", type=int, default=6)
    ap.add_argument("--operated", type=int, default=2)
    ap.add_argument("--root", type=Path, default=None, help="default /tmp/bench-operate-<customers> (reused)")
    args = ap.parse_args(argv)
    from mlops_nb.features import write_features
    from mlops_nb.lake import generate_lake
    from mlops_nb.operate import operate, operated_months
    from mlops_nb.catalog import STATUS_PRODUCTION
    from mlops_nb.policies import run_policy
    from mlops_nb.reference import run_reference
    from mlops_nb.registry import version_with_status
    from mlops_nb.sandbox import sandbox_champion
    from mlops_nb.settings import sandbox_settings
    from mlops_nb.warehouse import load_warehouse

    root = args.root or Path(f"/tmp/bench-operate-{args.customers}")
    cfg = sandbox_settings(root, lake_customers=args.customers, lake_months=args.history + args.operated,
                           lake_history_months=args.history, lake_scenario="stable")
    def timed(label: str, fn):
        t = time.perf_counter(); out = fn(); print(f"    {label:34s}{time.perf_counter() - t:8.1f} s", flush=True)
        return out
    print(f"[1] set-up in {root} ({args.customers:,} customers, {args.history} history months)")
    if version_with_status(cfg, STATUS_PRODUCTION) is None:
        timed("lake (history)", lambda: generate_lake(cfg))
        timed("ETL load", lambda: load_warehouse(cfg))
        timed("features (every month)", lambda: write_features(cfg))
        timed("sandbox champion (hgb)", lambda: sandbox_champion(cfg, params={"max_iter": 50}, threshold=0.1))
        timed("its reference (the reference phase)", lambda: run_reference(cfg))
        timed("the offer policies (the policy phase)", lambda: run_policy(cfg))
    else: print("    reusing the operated project (delete the root to start again)")
    months = operated_months(cfg)
    print(f"[2] operating {', '.join(months)} (load average {os.getloadavg()[0]:.1f})")
    for month in months:
        (res,) = operate(cfg, month=month, say=lambda s: None)
        print(f"    {month}: {res.status}, {res.seconds:.1f} s in all, {res.campaign.get('scored', 0):,} scored, "
              f"features from {res.features_from or '-'}  (goal: ≤ 60 s)")
        for step, s in res.steps.items(): print(f"      {step:14s}{s:7.1f} s")
    print(f"[3] the features step without the incremental build (load average {os.getloadavg()[0]:.1f})")
    timed("features (every month again)", lambda: write_features(cfg, full=True))


if __name__ == "__main__":
    main()
