"""Study: the risk policy against the uplift policy, paired — the same world operated once per policy (not a test).

    .venv/bin/python tests/bench/study_policies.py --seeds 42 7 --operated 6

For each seed it makes a project, runs the lifecycle on the history months (its `policy` phase registers the risk
policy and learns and judges an uplift policy), copies the project, and operates the same months twice: once under the
risk policy, once with the uplift policy promoted (by a person's override if the gate refused it). Then, per month and
to date, from each branch's `roi.months`: the measured net value of the campaign against its control group (95 %
interval), the simulator's truth of the same list (`oracle_net`: the true churn avoided × value − cost) and the best
list the budget could buy (`oracle_best_net`). The goal of issue #19: uplift − risk realised net value positive, with
an interval excluding 0, and the uplift policy capturing ≥ 50 % of the best list's value.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_operate import project, run  # noqa: E402

COLUMNS = ["month", "scope", "policy", "contacted", "net_value", "net_lower", "net_upper", "oracle_net",
           "oracle_best_net"]


def roi(settings: Path) -> pd.DataFrame:
    from mlops_nb.settings import load_settings
    cfg = load_settings(settings)
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        return con.execute("SELECT * FROM roi.months ORDER BY month, scope").df().reindex(columns=COLUMNS)


def promote_uplift(settings: Path) -> str:
    "Put the phase's uplift policy in production (a person's override when the gate refused it); its version."
    from mlops_nb.policies import policy_table
    from mlops_nb.settings import load_settings
    t = policy_table(load_settings(settings))
    v = t[t.kind == "uplift"].version.iloc[0]
    args = ["policy", "promote", v, "--reason", "paired study", "--actor", "study"]
    if not bool(t.set_index("version").loc[v, "approved"]):
        args += ["--override-reason", "the paired study operates the uplift policy whatever the gate said"]
    run(args, settings)
    return v


def study(seed: int, operated: int, history: int, customers: int, reuse: Path | None = None,
          **settings: object) -> dict:
    """One seed; `reuse`: the root of an earlier study of it whose lifecycle ran (its operated months are redone);
    `settings`: more keys for both branches (e.g. lake_segment_signal, operate_control_share)."""
    root = reuse or Path(tempfile.mkdtemp(prefix=f"study-policies-{seed}-"))
    risk = project(root / "risk", "stable", seed, operated, history, customers, **settings)
    t0 = time.time()
    if reuse is None: run(["run", "--no-progress"], risk)
    t1 = time.time()
    shutil.rmtree(root / "uplift", ignore_errors=True)
    shutil.copytree(root / "risk", root / "uplift")          # the same world, model and policies, twice
    uplift = root / "uplift" / "settings.ini"
    uplift.write_text(risk.read_text())
    from mlops_nb.policies import policy_table
    from mlops_nb.settings import load_settings
    table = policy_table(load_settings(risk))
    version = promote_uplift(uplift)
    run(["operate", "--no-progress"], risk)
    t2 = time.time()
    run(["operate", "--no-progress"], uplift)
    t3 = time.time()
    a, b = roi(risk), roi(uplift)
    both = a.merge(b, on=["month", "scope"], suffixes=("_risk", "_uplift"))
    return dict(seed=seed, root=str(root), lifecycle_s=round(t1 - t0), risk_s=round(t2 - t1), uplift_s=round(t3 - t2),
                table=table, version=version, both=both)


def difference(row: pd.Series) -> tuple[float, float, float]:
    "uplift − risk measured net value, with a 95 % interval from the two branches' own (independent control groups)."
    d = row.net_value_uplift - row.net_value_risk
    se = math.hypot((row.net_upper_uplift - row.net_lower_uplift) / 3.92, (row.net_upper_risk - row.net_lower_risk)
                    / 3.92)
    return d, d - 1.96 * se, d + 1.96 * se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--operated", type=int, default=6, help="operated months (after the history months)")
    ap.add_argument("--history", type=int, default=6)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--reuse", type=Path, default=None, help="the root of an earlier study whose lifecycle ran")
    ap.add_argument("--segment-signal", type=float, default=0.0,
                    help="[lake] segment_signal: 1 = a world whose persuadability follows observable traits")
    ap.add_argument("--control-share", type=float, default=None, help="[operate] control_share of both branches")
    a = ap.parse_args()
    extra = dict(lake_segment_signal=a.segment_signal)
    if a.control_share is not None: extra["operate_control_share"] = a.control_share
    pd.set_option("display.width", 220); pd.set_option("display.max_columns", 30)
    for seed in a.seeds:
        r = study(seed, a.operated, a.history, a.customers, a.reuse, **extra)
        print(f"\n=== seed {seed}: lifecycle {r['lifecycle_s']} s; operated {a.operated} months under risk in "
              f"{r['risk_s']} s, under uplift (version {r['version']}) in {r['uplift_s']} s ({r['root']})")
        print(r["table"][["version", "kind", "status", "approved"]].to_string(index=False))
        print("  the phase's judgement:", r["table"].set_index("version").loc[r["version"], "reason"])
        both = r["both"]
        months = both[both.scope == "month"]
        cols = ["month", "policy_risk", "policy_uplift", "contacted_risk", "contacted_uplift", "net_value_risk",
                "net_value_uplift", "oracle_net_risk", "oracle_net_uplift", "oracle_best_net_risk"]
        print(months[cols].round(0).to_string(index=False))
        last = both[both.scope == "to_date"].iloc[-1] if (both.scope == "to_date").any() else None
        if last is None: print("no month measured yet (labels arrive a month later)"); continue
        d, lo, hi = difference(last)
        best = last.oracle_best_net_uplift
        print(f"to date ({last.month}): measured net value uplift R$ {last.net_value_uplift:,.0f} "
              f"({last.net_lower_uplift:,.0f} to {last.net_upper_uplift:,.0f}), risk R$ {last.net_value_risk:,.0f} "
              f"({last.net_lower_risk:,.0f} to {last.net_upper_risk:,.0f}); uplift − risk R$ {d:,.0f} "
              f"({lo:,.0f} to {hi:,.0f})")
        print(f"  the simulator's truth of the same lists: uplift R$ {last.oracle_net_uplift:,.0f}, risk R$ "
              f"{last.oracle_net_risk:,.0f}; the best list the budget could buy R$ {best:,.0f} — the uplift policy "
              f"captures {last.oracle_net_uplift / best:.0%} of it, the risk policy {last.oracle_net_risk / best:.0%}"
              if best and math.isfinite(best) else "  (no oracle figures)")


if __name__ == "__main__":
    main()
