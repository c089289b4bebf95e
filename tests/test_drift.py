"""Input drift: our streaming distances on Parquet files in a real DuckDB database, against Evidently's DataDriftPreset
on the same rows (same statistic, same verdict)."""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlops_nb.drift import DRIFT_THRESHOLD, ReferenceProfile, calibrated_thresholds, drift_table, profile_relation

NUMERIC = ["fee", "tenure", "gb", "calls"]
CATEGORICAL = ["product", "region"]
DRIFTED = {"fee": True, "tenure": False, "gb": True, "calls": False, "product": True, "region": False}


def window(n: int, seed: int, drifted: bool) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    df = pd.DataFrame({
        "fee": r.normal(100 + (8 if drifted else 0), 20, n),               # a shift of 0.4 standard deviations
        "tenure": r.exponential(24, n),
        "gb": r.lognormal(2, 0.5 * (1.6 if drifted else 1.0), n),          # a change of spread, same median
        "calls": r.poisson(3, n).astype(float),
        "product": r.choice(["fibre", "dsl", "mobile"], n, p=[0.6, 0.3, 0.1] if drifted else [0.4, 0.5, 0.1]),
        "region": r.choice(["Sudeste", "Nordeste", "Sul", "Norte"], n, p=[0.45, 0.25, 0.2, 0.1]),
    })
    df.loc[r.random(n) < 0.05, "tenure"] = np.nan                           # missing values are left out
    df.loc[r.random(n) < 0.001, "calls"] = np.inf                           # and so are infinities
    df.loc[r.random(n) < 0.03, "region"] = None
    return df


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    frames = {"reference": window(30_000, 0, False), "stable": window(20_000, 1, False),
              "drifted": window(20_000, 2, True)}
    for name, df in frames.items():                     # day-partitioned, as the prediction log is
        for k, part in enumerate(df.iloc[i::3] for i in range(3)):
            (root / name / f"date=2026-01-0{k + 1}").mkdir(parents=True)
            part.to_parquet(root / name / f"date=2026-01-0{k + 1}" / "part-0.parquet")
    con = duckdb.connect(str(root / "monitor.duckdb"))
    rel = {name: f"read_parquet('{root / name}/*/*.parquet', hive_partitioning = true)" for name in frames}
    yield con, rel, frames
    con.close()


def evidently_drift(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, float]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    dd = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=dd),
                                           Dataset.from_pandas(reference, data_definition=dd))
    return {m["config"]["column"]: float(m["value"]) for m in snap.dict()["metrics"]
            if m["metric_name"].startswith("ValueDrift")}


def test_profile_survives_json_and_has_the_reference_shape(windows):
    con, rel, _ = windows
    p = profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL)
    assert ReferenceProfile.from_json(p.to_json()) == p
    assert abs(p.columns["tenure"].null_share - 0.05) < 0.01
    assert set(p.columns["region"].shares) == {"Sudeste", "Nordeste", "Sul", "Norte"}
    assert abs(sum(p.columns["product"].shares.values()) - 1) < 1e-12


@pytest.mark.parametrize("current", ["stable", "drifted"])
def test_same_distances_and_verdicts_as_evidently(windows, current):
    con, rel, frames = windows
    ours = drift_table(con, rel[current], profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL))
    ours = ours.set_index("column")
    theirs = evidently_drift(frames["reference"], frames[current])
    for c in NUMERIC + CATEGORICAL:
        tol = 0.005 if c in NUMERIC else 1e-9           # a 1,000-quantile grid vs the exact samples; counts exactly
        assert abs(ours.distance[c] - theirs[c]) < tol, (c, ours.distance[c], theirs[c])
        assert ours.drifted[c] == (theirs[c] >= DRIFT_THRESHOLD), c
        assert ours.drifted[c] == (DRIFTED[c] and current == "drifted"), c


def test_missing_shares_are_reported_beside_the_distance(windows):
    con, rel, _ = windows
    t = drift_table(con, rel["stable"], profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL))
    t = t.set_index("column")
    assert abs(t.null_share_current["tenure"] - 0.05) < 0.01 and abs(t.null_share_current["region"] - 0.03) < 0.01


def test_calibration_widens_only_a_wandering_input(windows):
    con, _, _ = windows
    months = pd.concat([window(6_000, 10 + k, False).assign(month=f"2025-{k + 1:02d}") for k in range(6)])
    months.loc[months.month == "2025-03", "fee"] += 5.0            # one reference month wanders by 0.25 sd
    con.register("months", months)
    p = profile_relation(con, "months", NUMERIC, CATEGORICAL)
    t = calibrated_thresholds(con, "months", p, "month")
    assert t["fee"] > DRIFT_THRESHOLD
    assert all(t[c] == DRIFT_THRESHOLD for c in NUMERIC + CATEGORICAL if c != "fee"), t


def test_a_bad_relation_names_the_problem(windows):
    con, _, _ = windows
    with pytest.raises(duckdb.Error, match="no_such_table"):
        profile_relation(con, "no_such_table", NUMERIC, CATEGORICAL)
