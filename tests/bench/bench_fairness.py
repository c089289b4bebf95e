"""Benchmark of the evaluation's bootstrap and fairness analysis (a script, not collected by pytest).

    python tests/bench/bench_fairness.py                  # 100,000 test rows, 400 resamples (the [gate] n_boot default)
    python tests/bench/bench_fairness.py --rows 20000 --n-boot 1000

Times, on one synthetic test set with two sensitive attributes (gender: 4 groups, age band: 6 groups):

1. `auc_ci` — the AUC and its bootstrap interval;
2. `paired_auc_difference` — the gate's paired bootstrap of an AUC difference;
3. `fairness_report` — MetricFrame point estimates plus bootstrap intervals of 4 rates × 10 groups and their gaps;
4. the same intervals the naive way, re-running Fairlearn's `MetricFrame` on each resample (a few resamples,
extrapolated);
5. `mitigate_gap` — a profit-weighted ThresholdOptimizer fit on validation and applied to test;
6. `evaluate_scores` — one candidate's whole evaluation.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from mlops_nb.stats import auc_ci, paired_auc_difference
from mlops_nb.value import contact_policy
from mlops_nb.scorecard import evaluate_scores
from mlops_nb.fairness import fairness_frame, fairness_report, mitigate_gap
from mlops_nb.settings import CharterSettings, GateSettings


def data(n: int, seed: int):
    r = np.random.default_rng(seed)
    age = r.choice(["18-24", "25-34", "35-44", "45-54", "55-64", "65+"], n, p=[.14, .26, .22, .17, .12, .09])
    gender = r.choice(["F", "M", "O", "N"], n, p=[.505, .475, .008, .012])
    z = r.normal(-2.6, 1.1, n) + np.where(age == "18-24", 0.4, 0.0)
    p_true = 1 / (1 + np.exp(-z))
    y = (r.random(n) < p_true).astype(int)
    p = 1 / (1 + np.exp(-(z + r.normal(0, 0.6, n))))
    return y, p, pd.DataFrame({"gender": gender, "age_band": age}), p_true


def timed(label: str, f, reps: int = 1):
    "Wall and CPU seconds of f() (CPU time is the steadier number on a shared machine)."
    t, c = time.perf_counter(), time.process_time()
    for _ in range(reps): out = f()
    dt, dc = (time.perf_counter() - t) / reps, (time.process_time() - c) / reps
    print(f"{label:<62} {dt:8.2f} s wall {dc:8.2f} s CPU")
    return out, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--n-boot", type=int, default=400)
    a = ap.parse_args()
    n, B = a.rows, a.n_boot
    y, p, sens, p_true = data(n, 0)
    yv, pv, sv, _ = data(n, 1)
    charter, gate = CharterSettings(), GateSettings(n_boot=B)
    contact = contact_policy(p, 0.1056, None)
    print(f"{n:,} test rows, {y.sum():,} churners, {B} resamples, attributes gender (4 groups) and age_band (6 groups)")
    timed("auc_ci", lambda: auc_ci(y, p, B))
    timed("paired_auc_difference", lambda: paired_auc_difference(y, p, p_true, B))
    rep, t_ours = timed("fairness_report (MetricFrame + vectorised bootstrap)",
                        lambda: fairness_report(y, p, contact, sens, B))
    k = 5
    rng = np.random.default_rng(0)
    def naive():
        for _ in range(k):
            i = rng.integers(0, n, n)
            for c in sens.columns: fairness_frame(y[i], p[i], contact[i], sens[c].to_numpy()[i]).by_group
    _, t_naive = timed(f"naive: MetricFrame per resample ({k} resamples)", naive)
    print(f"{'  … extrapolated to ' + str(B) + ' resamples':<62} {t_naive / k * B:8.1f} s  "
          f"({t_naive / k * B / t_ours:.0f}× slower)")
    timed("mitigate_gap (ThresholdOptimizer, TPR parity)",
          lambda: mitigate_gap(yv, pv, sv.age_band.to_numpy(), y, p, sens.age_band.to_numpy(), contact, charter, "tpr"))
    months = np.repeat(["2025-11"], n)
    timed("evaluate_scores (one candidate, everything)",
          lambda: evaluate_scores("bench", yv, pv, y, p, charter, gate, months=months, sensitive=sens,
                                  sensitive_valid=sv,
                                  truth=pd.DataFrame({"p_churn": p_true})))
    print(
        rep["gaps"][rep["gaps"].gated][
            ["attribute", "metric", "groups", "difference", "difference_lo", "difference_hi"]
        ]
        .round(4)
        .to_string(index=False)
    )


if __name__ == "__main__":
    main()
