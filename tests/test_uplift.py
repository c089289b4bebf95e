"""Uplift (36_uplift, 72_uplift_study): a planted effect recovered, inverse-propensity values that agree with the
truth — planted, and the simulator's on a small world —, treated rows kept out of the risk model's labels, and the
study as a tracked command."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import exploration_world, run_cli
from mlops_nb.contracts import FeatureSpec
from mlops_nb.settings import CharterSettings
from mlops_nb.uplift import fit_uplift, policy_value, qini_coefficient

SPEC = FeatureSpec(id_column="customer_key", time_column="month", target="churned_next", numeric=("x", "z"),
                   categorical=("plan",))


def planted(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Randomised rows whose offer avoids churn where x > 0 and provokes it where x < 0 (the true effect returned)."""
    r = np.random.default_rng(seed)
    x, z = r.normal(size=n), r.normal(size=n)
    t = (r.random(n) < 0.5).astype(int)
    base = 1 / (1 + np.exp(-(-2.0 + 0.8 * z)))
    offered = np.clip(base - 0.15 * np.tanh(2 * x), 0, 1)    # a probability cannot go below 0
    y = (r.random(n) < np.where(t == 1, offered, base)).astype(int)
    return pd.DataFrame({"customer_key": [f"k{i}" for i in range(n)], "month": "2025-01", "x": x, "z": z,
                         "plan": r.choice(["a", "b"], n), "churned_next": y, "t": t, "e": 0.5,
                         "accepted": t * (r.random(n) < 0.3)}), base - offered


@pytest.mark.parametrize("family", ["logreg", "hgb"])
def test_the_learner_recovers_a_planted_effect(family):
    train, _ = planted(20_000, 1)
    test, true = planted(20_000, 2)
    u = fit_uplift(train, SPEC, family).uplift(test)
    assert np.corrcoef(u, true)[0, 1] > 0.6
    assert qini_coefficient(u, test.churned_next, test.t) > 0.5 * qini_coefficient(true, test.churned_next, test.t)


def test_ipw_intervals_cover_the_planted_value_of_a_policy_at_their_nominal_rate():
    """40 fresh test sets: the learnt policy's, contacting everyone's and the truth's own IPW intervals cover the value
    the planted truth gives them about 95 % of the time; valued with the arms swapped, almost never."""
    charter = CharterSettings()
    cost = charter.contact_cost + 0.3 * charter.offer_cost
    model = fit_uplift(planted(20_000, 1)[0], SPEC, "logreg")
    hits, swapped = np.zeros(3), 0
    for i in range(40):
        test, true = planted(4000, 100 + i)
        u = model.uplift(test)
        policies = (u * charter.customer_value > cost, np.ones(len(u), bool), true > 0)
        for j, contact in enumerate(policies):
            v = policy_value(contact, test.churned_next, test.t, test.e, test.accepted, charter, n_boot=200, seed=i)
            hits[j] += v["lower"] <= float(np.mean(contact * (true * charter.customer_value - cost))) <= v["upper"]
        w = policy_value(policies[2], test.churned_next, 1 - test.t, test.e, test.accepted, charter, n_boot=200)
        swapped += w["lower"] <= float(np.mean(policies[2] * (true * charter.customer_value - cost))) <= w["upper"]
    assert (hits / 40 >= 0.85).all(), hits / 40
    assert swapped / 40 <= 0.1


def test_a_learner_without_churners_in_an_arm_says_what_to_do():
    rows, _ = planted(400, 3)
    rows.loc[rows.t == 1, "churned_next"] = 0
    with pytest.raises(ValueError, match="offered rows need both churners and stayers"):
        fit_uplift(rows, SPEC)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """2,000 customers x 7 months, 40 % of them in each month's exploration campaign: history only."""
    return exploration_world(tmp_path_factory.mktemp("uplift") / "p")


def test_on_a_small_world_ipw_values_both_policies_as_the_simulator_does(world):
    from mlops_nb.uplift_study import uplift_study
    _, cfg = world
    study, _ = uplift_study(cfg)
    assert study.rows["test"] > 1000 and set(study.qini_by_family) == {"logreg", "hgb"}
    for name in ("uplift_policy", "risk_policy"):    # the project's key is new each run, so is the customers' split:
        v = getattr(study, name)                     # within twice the 95 % half-width (a miss = a bias, not luck)
        assert abs(v["value_per_customer"] - study.oracle[name]) <= v["upper"] - v["lower"], (name, v, study.oracle)
    d = study.uplift_minus_risk
    assert d["lower"] <= d["value_per_customer"] <= d["upper"]
    assert study.oracle["oracle_policy"] > max(study.oracle["uplift_policy"], study.oracle["risk_policy"])


def test_treated_rows_never_enter_the_risk_models_labels(world):
    from mlops_nb.contracts import connect_warehouse, load_feature_table
    from mlops_nb.uplift import randomised_rows
    _, cfg = world
    df, spec = load_feature_table(cfg)
    with connect_warehouse(cfg) as con:
        contacted = con.execute("SELECT customer_key, month FROM staging.campaigns WHERE contacted").df()
    assert len(contacted) > 1000
    used = set(zip(df[spec.id_column].astype(str), df[spec.time_column].astype(str).str[:7]))
    assert not used & set(zip(contacted.customer_key.astype(str), contacted.month.astype(str)))
    # while the uplift learner reads both arms of the exploration campaign
    rows, _ = randomised_rows(cfg)
    assert set(rows.t) == {0, 1} and rows.e.between(0.45, 0.55).all()


def test_the_study_is_a_command_and_a_tracked_run(world):
    from mlops_nb.catalog import ART_UPLIFT_STUDY
    from mlops_nb.tracking import configure_mlflow, mlflow
    settings, cfg = world
    r = run_cli("--settings", str(settings), "uplift", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    study = json.loads(r.stdout.strip().splitlines()[-1])
    configure_mlflow(cfg)
    run = mlflow.get_run(study["run_id"])
    assert run.data.metrics["uplift.qini"] == pytest.approx(study["qini"])
    assert "uplift.oracle.oracle_share_captured" in run.data.metrics
    ceiling = run.data.metrics["uplift.oracle.feature_ceiling_share"]            # the yardstick beside the share
    assert ceiling <= 1 and ceiling == pytest.approx(study["oracle"]["feature_ceiling_share"])
    # it learns from every customer-month the simulator knows, not only the randomised rows the learner sees
    rows = study["rows"]
    assert rows["ceiling"] > 2 * (rows["fit"] + rows["valid"]) and run.data.params["uplift_rows_ceiling"] == str(
        rows["ceiling"])
    logged = mlflow.artifacts.load_dict(f"runs:/{study['run_id']}/{ART_UPLIFT_STUDY}")
    assert logged["family"] == study["family"]
    human = run_cli("--settings", str(settings), "uplift")
    assert human.returncode == 0 and "uplift − risk R$" in human.stdout, human.stderr[-2000:]
    assert "no policy can be expected to capture much more than" in human.stdout
