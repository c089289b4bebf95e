"""Input drift: our streaming distances on Parquet files in a real DuckDB database, against Evidently's DataDriftPreset
on the same rows (same statistic, same verdict) — and against SciPy's exact Wasserstein distance on the raw samples
where the grid could go wrong (long tails, windows that moved far away, atoms, values the reference never had)."""
from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlops_nb.drift import (DRIFT_THRESHOLD, ReferenceProfile, _cell_edges, calibrated_thresholds, drift_table,
                            grid_cell, profile_relation)

NUMERIC = ["fee", "tenure", "gb", "calls", "promo"]
CATEGORICAL = ["product", "region"]
DRIFTED = {"fee": True, "tenure": False, "gb": True, "calls": False, "promo": True, "product": True, "region": False}
CONTINUOUS = ["fee", "tenure", "gb"]              # counted on the grid; calls (a count) and promo (a flag) by value


def window(n: int, seed: int, drifted: bool) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    df = pd.DataFrame({
        "fee": r.normal(100 + (8 if drifted else 0), 20, n),               # a shift of 0.4 standard deviations
        "tenure": r.exponential(24, n),
        "gb": r.lognormal(2, 0.5 * (1.6 if drifted else 1.0), n),          # a change of spread, same median
        "calls": r.poisson(3, n).astype(float),
        "promo": (r.random(n) < (0.35 if drifted else 0.2)).astype(int),  # a flag: Evidently compares its shares
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
        tol = 0.0005 if c in CONTINUOUS else 1e-9       # the grid vs the exact samples; counted values exactly
        assert abs(ours.distance[c] - theirs[c]) < tol, (c, ours.distance[c], theirs[c])
        assert ours.drifted[c] == (theirs[c] >= DRIFT_THRESHOLD), c
        assert ours.drifted[c] == (DRIFTED[c] and current == "drifted"), c


def test_a_flag_is_compared_by_its_shares_and_a_count_by_its_values(windows):
    con, rel, _ = windows
    p = profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL)
    assert p.columns["calls"].values and not p.columns["calls"].grid          # a count: every value kept
    assert p.columns["fee"].grid and not p.columns["fee"].values              # continuous: the grid
    assert sum(p.columns["fee"].grid.values()) == p.columns["fee"].rows       # every non-missing row in a cell
    t = drift_table(con, rel["drifted"], p).set_index("column")
    assert t.method["promo"] == "jensen_shannon" and t.method["calls"] == "wasserstein_normed"


def test_missing_shares_are_reported_beside_the_distance(windows):
    con, rel, _ = windows
    t = drift_table(con, rel["stable"], profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL))
    t = t.set_index("column")
    assert abs(t.null_share_current["tenure"] - 0.05) < 0.01 and abs(t.null_share_current["region"] - 0.03) < 0.01


def test_a_category_the_reference_never_saw_is_reported_even_when_the_distance_is_quiet(windows):
    """A new payment method in 0.8 % of a month's rows is under any Jensen-Shannon threshold, yet the model scores those
    rows as missing: the share of unseen categories is reported per categorical input and becomes an alert metric."""
    from mlops_nb.monitor import drift_metrics
    con, rel, frames = windows
    now = frames["stable"].copy()
    now.loc[now.sample(frac=0.008, random_state=3).index, "product"] = "pix-fibre"
    con.register("with_new", now)
    t = drift_table(con, "with_new", profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL)).set_index("column")
    assert not t.drifted["product"] and t.new_share["product"] == pytest.approx(0.008, abs=1e-3)
    assert t.new_share["region"] == 0.0 and np.isnan(t.new_share["fee"])
    m = drift_metrics(t.reset_index())
    assert m["drift.new_category.product"] == pytest.approx(0.008, abs=1e-3) and m["drift.new_category.region"] == 0
    assert "drift.new_category.fee" not in m


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


class CountingConnection:
    "A DuckDB connection that counts the queries sent through it."
    def __init__(self, con): self.con, self.queries = con, 0
    def execute(self, *a):
        self.queries += 1
        return self.con.execute(*a)


def test_a_window_is_read_once_whatever_the_number_of_inputs(windows):
    con, rel, _ = windows
    p = profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL)
    counting = CountingConnection(con)
    drift_table(counting, rel["drifted"], p)
    assert counting.queries == 1


def one_column(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float, ReferenceProfile]:
    "Our distance for one numeric column (through DuckDB) and SciPy's exact one on the same samples."
    con = duckdb.connect()
    con.register("r", pd.DataFrame({"x": ref})); con.register("c", pd.DataFrame({"x": cur}))
    p = profile_relation(con, "r", ["x"], [])
    ours = float(drift_table(con, "c", p).distance.iloc[0])
    return ours, stats.wasserstein_distance(ref, cur) / np.std(ref), p


R = np.random.default_rng(11)
HARD = {                                          # where a grid could go wrong, 40,000 rows a window
    "long tail, scaled": (R.lognormal(0, 1.5, 40_000), 1.1 * R.lognormal(0, 1.5, 40_000)),
    "heavier tail": (R.pareto(1.5, 40_000), R.pareto(1.3, 40_000)),
    "moved far outside": (R.normal(0, 1, 40_000), R.normal(6, 2, 40_000)),
    "an atom appears": (R.normal(0, 1, 40_000), np.where(R.random(40_000) < 0.2, 0.123, R.normal(0, 1, 40_000))),
    "zero-inflated": (np.where(R.random(40_000) < 0.3, 0, R.exponential(5, 40_000)),
                      np.where(R.random(40_000) < 0.36, 0, R.exponential(5, 40_000))),
    "many ties": (np.round(R.normal(0, 1, 40_000), 3), np.round(R.normal(0.1, 1, 40_000), 3)),
}


@pytest.mark.parametrize("case", HARD)
def test_the_grid_stays_within_half_a_thousandth_of_the_exact_distance(case):
    ref, cur = HARD[case]
    ours, exact, p = one_column(ref, cur)
    assert p.columns["x"].grid, "a continuous input is counted on the grid"
    assert abs(ours - exact) < 0.0005, (case, ours, exact)


def test_counted_values_stay_exact_when_the_window_has_values_the_reference_never_had():
    ref = R.poisson(4, 30_000).astype(float)
    cur = np.concatenate([R.poisson(5, 20_000), [2.5, 3.25, -7.0, 40.0] * 50]).astype(float)
    ours, exact, p = one_column(ref, cur)
    assert p.columns["x"].values and abs(ours - exact) < 1e-9, (ours, exact)


def test_grid_cells_hold_their_values():
    lo, span = -1.7, 3.4
    x = np.concatenate([R.normal(0, 1, 2000), R.normal(0, 1e6, 200), [-1e300, -3.0, 0.0, 5e-324, lo + span, 1e300]])
    got = duckdb.connect().execute(f"SELECT x, {grid_cell('x', lo, span)} FROM (SELECT unnest(?::DOUBLE[]) AS x)",
                                   [x.tolist()]).fetchall()
    v, c = np.array([g[0] for g in got]), np.array([g[1] for g in got])
    start, end = _cell_edges(c, lo, span), _cell_edges(c + 1, lo, span)
    near = np.abs(v - lo) < 2.0 ** 60 * span                                   # farther out: the last cell
    assert np.all((start <= v) & (v < end) | ~near), v[~((start <= v) & (v < end)) & near]
    assert c[v == lo + span].tolist() == [2048] and c[v == 0.0].tolist() == [1024]


def test_a_profile_stored_before_the_grid_still_loads_and_measures(windows):
    con, rel, _ = windows
    new = profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL)
    stored = {c: {k: v for k, v in d.items() if k not in ("values", "grid")}
              for c, d in json.loads(new.to_json()).items()}
    old = ReferenceProfile.from_json(json.dumps(stored))                      # what the room wrote before
    assert not any(p.values or p.grid for p in old.columns.values())
    a = drift_table(con, rel["drifted"], new).set_index("column")
    b = drift_table(con, rel["drifted"], old).set_index("column")
    for c in CONTINUOUS + ["calls"]:                                          # drawn through its quantiles instead
        assert abs(a.distance[c] - b.distance[c]) < 0.003, (c, a.distance[c], b.distance[c])
    assert a.drifted.drop("promo").to_dict() == b.drifted.drop("promo").to_dict()   # the flag: by W1, as before


def test_the_t_digest_is_still_there_for_whoever_asked_for_it(windows):
    con, rel, _ = windows
    p = profile_relation(con, rel["reference"], NUMERIC, CATEGORICAL)
    a = drift_table(con, rel["drifted"], p).set_index("column")
    b = drift_table(con, rel["drifted"], p, exact=False).set_index("column")
    assert all(abs(a.distance[c] - b.distance[c]) < 0.01 for c in CONTINUOUS)
    assert a.drifted.equals(b.drifted)


def test_an_input_with_no_values_has_no_distance():
    con = duckdb.connect()
    con.register("r", pd.DataFrame({"x": [np.nan, np.inf] * 50, "y": np.arange(100.0)}))
    con.register("c", pd.DataFrame({"x": np.arange(100.0), "y": [np.nan] * 100}))
    p = profile_relation(con, "r", ["x", "y"], [])
    t = drift_table(con, "c", p).set_index("column")
    assert np.isnan(t.distance["x"]) and np.isnan(t.distance["y"]) and not t.drifted.any()
    assert t.null_share_current["y"] == 1.0 and p.columns["x"].null_share == 1.0
