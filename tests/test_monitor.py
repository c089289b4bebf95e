"""The monitor's pieces on synthetic data with a known answer: the untreated stand for the whole month (inverse-
probability weights), the group gap's interval covers the truth, the reconstruction model sees a broken correlation,
and the reference bundle survives its JSON."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_nb.monitor import group_rate_gap, performance_rows
from mlops_nb.reference import ReferenceBundle, fit_reconstruction


def campaign_month(n: int = 60_000, control_share: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, float]:
    """A month where the policy selects the riskiest 15 %, holds `control_share` of them out, and the offer halves the
    churn of those contacted; returns the frame and the AUC the model has on everyone without any treatment."""
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-(rng.normal(-3.6, 1.1, n))))
    y0 = (rng.random(n) < p).astype(float)                      # outcome without treatment
    selected = p >= np.quantile(p, 0.85)
    control = selected & (rng.random(n) < control_share)
    contact = selected & ~control
    y = np.where(contact, (rng.random(n) < p / 2).astype(float), y0)
    action = np.where(contact, "contact", np.where(control, "control", "not_selected"))
    w = np.where(action == "not_selected", 1.0, np.where(action == "control", 1 / control_share, 0.0))
    frame = pd.DataFrame(dict(p=p, y=y, decision=selected.astype(float), action=action, weight=w))
    return frame, roc_auc_score(y0, p)


def test_the_weighted_untreated_stand_for_the_month_as_if_nobody_was_contacted():
    from sklearn.metrics import roc_auc_score
    frame, truth = campaign_month()
    real = next(r for r in performance_rows(frame, "2025-07", "1", True, n_boot=100) if r["kind"] == "realised")
    naive = roc_auc_score(frame.y, frame.p)                     # treated rows included: the offer hides churners
    # unbiased but noisy (the control group is 10 % of the selected): within 0.03 over seeds, where counting the
    # contacted customers' outcomes is off by 0.05 or more
    assert abs(real["auc"] - truth) < 0.03 and abs(naive - truth) > 0.04
    assert real["auc_lower"] - 0.01 < truth < real["auc_upper"] + 0.01


def test_the_estimates_interval_holds_the_realised_auc_at_its_nominal_rate():
    """The estimate is made on the rows the realised AUC will be measured on, with their weights: the control group's
    customers each stand for ten selected ones, so its interval is wider than an unweighted one, and holds the realised
    figure about 95 % of the time (40 months of 20,000 customers; P(≤ 33 of 40) < 1 % for a true 95 % interval)."""
    held = 0
    for seed in range(40):
        frame, _ = campaign_month(n=20_000, seed=100 + seed)
        est, real = performance_rows(frame, "2025-07", "1", True, n_boot=20, seed=seed)
        held += est["auc_lower"] <= real["auc"] <= est["auc_upper"]
    assert held >= 34, held


def test_without_labels_only_the_estimate_is_reported():
    frame, _ = campaign_month(n=5000)
    rows = performance_rows(frame.assign(y=np.nan), "2025-07", "1", False, n_boot=50)
    assert [r["kind"] for r in rows] == ["estimated"] and 0.5 < rows[0]["auc"] < 1


@pytest.mark.parametrize("seed", range(3))
def test_the_group_gap_interval_covers_the_true_gap(seed):
    rng = np.random.default_rng(seed)
    g = pd.Series(rng.choice(["F", "M", "N"], 30_000, p=[0.49, 0.49, 0.02]))
    rate = g.map({"F": 0.10, "M": 0.14, "N": 0.5}).to_numpy()
    out = group_rate_gap(rng.random(len(g)) < rate, g, n_boot=400, seed=seed, min_rows=1000)
    assert out["left_out"] == "N" and out["groups"] == 2          # too small a group is left out, and said
    assert out["lower"] < 0.04 < out["upper"] and out["upper"] - out["lower"] < 0.03


def test_the_reconstruction_model_sees_a_broken_correlation_and_survives_its_json():
    from mlops_nb.drift import ColumnProfile, ReferenceProfile
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20_000, 2))
    ref = pd.DataFrame({"a": z[:, 0], "b": z[:, 0] + 0.1 * z[:, 1], "m": np.repeat(["2025-01", "2025-02"], 10_000)})
    rec = fit_reconstruction(ref, ["a", "b"], ref.m)
    bundle = ReferenceBundle("3", ["2025-01", "2025-02"], len(ref),
                             ReferenceProfile({"a": ColumnProfile("a", "numeric", len(ref), 0.0, [0.0], 1.0)}),
                             {"a": 0.1}, rec)
    back = ReferenceBundle.from_json(bundle.to_json())
    assert back.to_json() == bundle.to_json()
    same = ref.sample(4000, random_state=0)
    broken = pd.DataFrame({"a": rng.normal(size=4000), "b": rng.normal(size=4000)})   # same margins, no correlation
    limit = back.multivariate_threshold(4000)
    assert back.reconstruction.errors(same).mean() < limit < back.reconstruction.errors(broken).mean()


def test_an_input_the_campaign_moves_is_reported_apart_from_the_worlds_drift():
    from mlops_nb.monitor import drift_metrics
    drift = pd.DataFrame(dict(column=["tenure_months", "months_since_contact", "churn_probability"],
                              kind=["numeric", "numeric", "score"], distance=[0.05, 0.4, 0.01],
                              threshold=[0.1, 0.1, 0.1], drifted=[False, True, False]))
    m = drift_metrics(drift)
    assert m["policy.feature.months_since_contact"] == pytest.approx(4.0)
    assert "drift.feature.months_since_contact" not in m
    assert (m["drift.share_drifted"], m["drift.inputs_drifted"], m["drift.feature.tenure_months"]) == (0.0, 0.0, 0.5)
    assert drift_metrics(drift, policy_moved=frozenset())["drift.inputs_drifted"] == 1.0


def test_the_concept_drift_alert_metric_agrees_with_the_holm_test():
    """A month whose smallest p-value is under 1% but which Holm does not reject (0.0079 × 3 > 0.01) must not raise
    the concept_drift alert: the metric is the smallest Holm-adjusted p."""
    from mlops_nb.monitor import holm_min_p
    from mlops_nb.performance import holm
    for ps in ((0.0079, 0.3, 0.01), (0.0022, 0.0035, 0.0076), (0.5, float("nan"), 0.2)):
        assert (holm_min_p(ps) < 0.01) == bool(holm({str(i): p for i, p in enumerate(ps) if p == p}, 0.01)), ps
    assert holm_min_p((0.0079, 0.3, 0.01)) == pytest.approx(0.0237)
