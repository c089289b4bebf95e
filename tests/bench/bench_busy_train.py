"""Benchmark the train phase alone and beside one busy process (not a test; prints figures).

    python tests/bench/bench_busy_train.py --customers 2500 --months 5

Builds a demo feature table (customers x months; the last month unlabelled: 2,500 x 5 = 10,000 labelled rows, a
cross-validated table), then times `run_train` three ways, each in a fresh process:
  alone            [compute] threads = 0 (the CPUs free, measured)
  beside, ours     the same, while another process keeps one CPU busy
  beside, default  [compute] threads = every usable CPU — what each library does when nobody sizes its pools
and prints the ratios to the time alone (the goal: beside, ours <= 2.5x alone; alone <= 60 s for 10,000 rows).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time
from mlops_nb.settings import sandbox_settings
from mlops_nb.sandbox import ensure_demo_features
from mlops_nb.train import run_train
root, (customers, months, threads, trials) = sys.argv[1], map(int, sys.argv[2:6])
cfg = sandbox_settings(root, compute_threads=threads, train_trials=trials)
ensure_demo_features(cfg, customers, months)
t0 = time.perf_counter()
r = run_train(cfg)
print("SECONDS", time.perf_counter() - t0, "SPLIT", r.split.get("cv_folds"), r.split.get("train_rows"))
"""


def timed_train(root: Path, customers: int, months: int, threads: int, trials: int) -> tuple[float, str]:
    "Seconds of one run_train in a fresh process (the table is built before the clock starts), and its split."
    pools = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in pools}     # the libraries' own defaults
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(customers), str(months), str(threads),
                          str(trials)], capture_output=True, text=True, env=env, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("SECONDS")][-1].split()
    return float(line[1]), f"{line[3]} folds, {line[4]} training rows"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=2500)
    ap.add_argument("--months", type=int, default=5)
    ap.add_argument("--trials", type=int, default=2)
    a = ap.parse_args()
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-busy-") as d:
        runs = {}
        runs["alone"] = timed_train(Path(d) / "alone", a.customers, a.months, 0, a.trials)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)
            runs["beside, ours (threads = free CPUs)"] = timed_train(Path(d) / "ours", a.customers, a.months, 0,
                                                                      a.trials)
            runs[f"beside, default (threads = {cpus})"] = timed_train(Path(d) / "default", a.customers, a.months,
                                                                       cpus, a.trials)
        finally:
            busy.kill(); busy.wait()
    base = runs["alone"][0]
    print(f"train phase, {a.customers:,} customers x {a.months} months, {a.trials} trials, {cpus} usable CPUs "
          f"({runs['alone'][1]})")
    for name, (sec, _) in runs.items():
        print(f"  {name:38s} {sec:7.1f} s   {sec / base:5.2f}x alone")


if __name__ == "__main__":
    main()
