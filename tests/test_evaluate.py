"""Evaluation against the charter: profit policy by hand, calibration, bootstrap coverage, fairness vs Fairlearn,
mitigation, model card, determinism."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mlops_nb.report import CARD_SECTIONS, model_card
from mlops_nb.fairness import FAIRNESS_METRICS, fairness_frame, fairness_report, mitigate_gap
from mlops_nb.value import (
    ThresholdChoice,
    best_threshold,
    budget_contacts,
    contact_policy,
    expected_profit,
    profit_curve,
)
from mlops_nb.stats import auc_ci, paired_auc_difference
from mlops_nb.scorecard import evaluate_scores
from mlops_nb.calibration import expected_calibration_error, fit_calibrator
from mlops_nb.settings import CharterSettings, GateSettings


def GATE_NONE(**kw) -> GateSettings:
    "The gate without a shipped mitigation: these tests judge the plain rule (the default ships one when needed)."
    return GateSettings(mitigation="none", **kw)


CHARTER = CharterSettings(contact_cost=5.0, offer_cost=50.0, offer_acceptance=0.2, save_rate=0.5, customer_value=400.0,
                          monthly_budget=30.0)


def calibrated(n: int, seed: int, shift: float = -2.5) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-r.normal(shift, 1.2, n)))
    return (r.random(n) < p).astype(int), p


def test_profit_maximising_threshold_by_hand():
    # cost per contact = 5 + 0.2·50 = 15; gain per would-be churner contacted = 0.5·400 = 200
    p = np.array([0.05, 0.40, 0.08, 0.10, 0.90])
    # expected profits: 0.9→165, 0.4→65, 0.1→5, 0.08→1, 0.05→−5; cumulative 165, 230, 235, 236, 231
    assert list(expected_profit(p, CHARTER)) == pytest.approx([-5, 65, 1, 5, 165])
    assert best_threshold(p, CHARTER) == ThresholdChoice(threshold=0.08, contacts=4, profit=pytest.approx(236.0))
    # with observed outcomes: contacting a churner earns 200 − 15 = 185, anyone else costs 15
    y = np.array([1, 0, 0, 1, 1])   # riskiest first: 0.9 (1), 0.4 (0), 0.1 (1), 0.08 (0), 0.05 (1)
    # cumulative realised: 185, 170, 355, 340, 525 → contact everyone
    assert best_threshold(p, CHARTER, y) == ThresholdChoice(0.05, 5, pytest.approx(525.0))
    curve = profit_curve(p, CHARTER, y)
    assert list(curve.contacts) == [0, 1, 2, 3, 4,
                                    5] and list(curve.realised_profit) == pytest.approx([0, 185, 170, 355, 340, 525])
    # the budget (R$ 30 at R$ 15 a contact) caps the campaign at 2 per month, highest risk first
    assert budget_contacts(CHARTER) == 2
    assert list(contact_policy(p, 0.08, budget_contacts(CHARTER))) == [False, True, False, False, True]
    # ties are contacted together; if no contact pays, nobody is contacted
    assert best_threshold([0.2, 0.2, 0.01], CHARTER).contacts == 2
    assert best_threshold([0.01, 0.02], CHARTER) == ThresholdChoice(float("inf"), 0, 0.0)



def test_the_pipeline_threshold_is_the_expected_profit_one_not_the_noisy_realised_one():
    # a small validation month: realised profit is noisy enough that its argmax can fall below break-even,
    # where each contact loses money in expectation; the pipeline's choice never does
    from mlops_nb.value import break_even_probability
    charter = CharterSettings(contact_cost=3.0, offer_cost=40.0, offer_acceptance=0.4, save_rate=0.3,
                              customer_value=600.0,
                              monthly_budget=1e9)
    be = break_even_probability(charter)
    below = 0
    for seed in range(20):
        yv, pv = calibrated(3_000, seed, shift=-3.0)
        yt, pt = calibrated(3_000, 100 + seed, shift=-3.0)
        below += best_threshold(pv, charter, yv).threshold < be
        ev = evaluate_scores("c", yv, pv, yt, pt, charter, GATE_NONE(n_boot=20))
        assert be <= ev.business["threshold"] == best_threshold(pv, charter).threshold
        assert ev.business["threshold_valid_realised_profit"] == pytest.approx(
            expected_profit(yv[pv >= ev.business["threshold"]], charter).sum()
        )
    assert below > 0, "the realised-profit argmax never went below break-even: this test would not tell the two apart"

def test_ece_near_zero_when_calibrated_large_when_distorted_and_the_fix_reduces_it():
    y, p = calibrated(60_000, 0)
    assert expected_calibration_error(y, p) < 0.01
    distorted = p ** 0.5
    assert expected_calibration_error(y, distorted) > 0.15
    yv, pv = calibrated(30_000, 1)
    for method in ("isotonic", "platt", "auto"):
        cal = fit_calibrator(yv, pv ** 0.5, method)
        assert expected_calibration_error(y, cal(distorted)) < 0.01, method
    # and evaluate_scores applies the fix only when ECE is over the limit
    gate = GATE_NONE(n_boot=50)
    ev = evaluate_scores("d", yv, pv ** 0.5, y, distorted, CHARTER, gate)
    assert ev.calibration["method"] != "none" and ev.calibration["ece"] < gate.max_ece < ev.calibration["ece_raw"]
    assert ev.calibrator is not None
    assert evaluate_scores("c", yv, pv, y, p, CHARTER, gate).calibration["method"] == "none"
    # the test rows decide nothing: calibrated validation, distorted test -> no calibrator (and the report shows the
    # test's poor ECE); distorted validation, calibrated test -> calibrated all the same
    ev = evaluate_scores("t", yv, pv, y, distorted, CHARTER, gate)
    assert ev.calibration["method"] == "none" and ev.calibration["ece_raw"] > 0.15 > ev.calibration["ece_valid_raw"]
    assert evaluate_scores("v", yv, pv ** 0.5, y, p, CHARTER, gate).calibration["method"] != "none"


def test_bootstrap_intervals_cover_the_true_value():
    # AUC: binormal scores, true AUC = Φ(d/√2)
    d, true_auc, hits = 1.0, norm.cdf(1.0 / np.sqrt(2)), 0
    for rep in range(60):
        r = np.random.default_rng(100 + rep)
        y = (r.random(1500) < 0.2).astype(int)
        _, lo, hi = auc_ci(y, r.normal(d * y, 1.0), n_boot=200, seed=rep, confidence=0.9)
        hits += lo <= true_auc <= hi
    assert 0.78 <= hits / 60 <= 0.98, hits
    # a TPR gap of 0.15 between two groups (contact probability of churners 0.60 vs 0.45)
    hits = 0
    for rep in range(50):
        r = np.random.default_rng(500 + rep)
        n = 4000
        a = r.choice(["A", "B"], n)
        y = (r.random(n) < 0.25).astype(int)
        dec = np.where(y == 1, r.random(n) < np.where(a == "A", 0.60, 0.45), r.random(n) < 0.1)
        g = \
            fairness_report(y, r.random(n), dec, pd.DataFrame({"a": a}), n_boot=200, seed=rep, confidence=0.9)["gaps"]
        t = g[g.metric == "tpr"].iloc[0]
        hits += t.difference_lo <= 0.15 <= t.difference_hi
    assert 0.75 <= hits / 50 <= 0.99, hits
    # the paired difference of a model with itself is exactly zero
    y, p = calibrated(3000, 3)
    assert paired_auc_difference(y, p, p, n_boot=100) == (0.0, 0.0, 0.0)


def test_fairness_metrics_match_fairlearn():
    r = np.random.default_rng(7)
    n = 6000
    y, p = calibrated(n, 7, shift=-1.5)
    sens = pd.DataFrame(
        {
            "gender": r.choice(["F", "M"], n),
            "age_band": r.choice(["18-24", "25-34", "35-44", "65+"], n, p=[0.2, 0.3, 0.4, 0.1]),
        }
    )
    dec = contact_policy(p, 0.25)
    rep = fairness_report(y, p, dec, sens, n_boot=100, seed=0, min_group_rows=1)
    for col in sens.columns:
        mf = fairness_frame(y, p, dec, sens[col])
        ours = rep["by_group"][rep["by_group"].attribute == col]
        for m in FAIRNESS_METRICS:
            got = ours[ours.metric == m].set_index("group").value
            assert got.to_dict() == pytest.approx(mf.by_group[m].to_dict(), abs=1e-12), (col, m)
            gap = rep["gaps"].query("attribute == @col and metric == @m").iloc[0]
            assert gap.difference == pytest.approx(mf.difference()[m], abs=1e-12)
            assert gap.ratio == pytest.approx(mf.ratio()[m], abs=1e-12)
            assert gap.difference_lo <= gap.difference <= gap.difference_hi
    # an AUC by group equals scikit-learn's on that group's rows
    f = (sens.gender == "F").to_numpy()
    auc_f = rep["by_group"].query("attribute == 'gender' and group == 'F' and metric == 'auc'").value.iloc[0]
    assert auc_f == pytest.approx(roc_auc_score(y[f], p[f]))


def planted(n: int, seed: int):
    r = np.random.default_rng(seed)
    a = r.choice(["A", "B"], n)
    y, p = calibrated(n, seed, shift=-2.0)
    return y, np.where(a == "B", p * 0.4, p), a      # group B's risk is under-estimated


def test_threshold_optimizer_reduces_a_planted_gap_and_reports_its_profit_cost():
    charter = CharterSettings()
    yv, pv, av = planted(20_000, 1)
    yt, pt, at = planted(20_000, 2)
    contact = contact_policy(pt, best_threshold(pv, charter, yv).threshold)
    rep = fairness_report(yt, pt, contact, pd.DataFrame({"group": at}), n_boot=100)
    before = rep["gaps"].set_index("metric").loc["tpr", "difference"]
    assert before > charter.max_fairness_gap
    m = mitigate_gap(yv, pv, av, yt, pt, at, contact, charter, metric="tpr", seed=0)
    assert m["constraint"] == "true_positive_rate_parity"
    assert m["before"]["tpr_gap"] == pytest.approx(before)
    assert m["after"]["tpr_gap"] < before / 3
    assert m["profit_cost_per_month"] == pytest.approx(m["before"]["profit_per_month"] - m["after"]["profit_per_month"])
    # evaluate_scores proposes it by itself when the gap breaches the limit
    ev = evaluate_scores("unfair", yv, pv, yt, pt, charter, GATE_NONE(n_boot=100),
                         sensitive=pd.DataFrame({"group": at}),
                         sensitive_valid=pd.DataFrame({"group": av}))
    assert [b["metric"] for b in ev.fairness_breaches(charter)][0] in ("tpr", "selection_rate")
    assert ev.mitigation and ev.mitigation["attribute"] == "group" and "profit_cost_per_month" in ev.mitigation
    # demographic parity closes the selection-rate gap
    m2 = mitigate_gap(yv, pv, av, yt, pt, at, contact, charter, metric="selection_rate", seed=0)
    assert m2["after"]["selection_rate_gap"] < m2["before"]["selection_rate_gap"] / 3



def test_a_group_without_both_classes_in_validation_keeps_its_decisions_and_is_named():
    """Regression: a small '(missing)' group with no churner in the validation month stopped the evaluate phase
    (Fairlearn's 'Degenerate labels')."""
    charter = CharterSettings()
    yv, pv, av = planted(20_000, 1)
    yt, pt, at = planted(20_000, 2)
    av, at = av.astype(object), at.astype(object)
    av[np.flatnonzero(yv == 0)[:50]], at[:50] = "(missing)", "(missing)"
    contact = contact_policy(pt, best_threshold(pv, charter, yv).threshold)
    m = mitigate_gap(yv, pv, av, yt, pt, at, contact, charter, metric="tpr", seed=0)
    assert m["possible"] and m["fitted_groups"] == ["A", "B"]
    assert list(m["unmitigated_groups"]) == ["(missing)"] and "no churner" in m["unmitigated_groups"]["(missing)"]
    assert m["after"]["tpr_gap"] < m["before"]["tpr_gap"] / 3
    # through evaluate_scores (what the phase calls), and in the model card's words
    ev = evaluate_scores("unfair", yv, pv, yt, pt, charter, GATE_NONE(n_boot=50, min_group_rows=30),
                         sensitive=pd.DataFrame({"group": at}),
                         sensitive_valid=pd.DataFrame({"group": av}))
    assert ev.mitigation and ev.mitigation["unmitigated_groups"] == m["unmitigated_groups"]
    card = model_card(ev, charter, dict(name="t", digest="d", features=["a"], sensitive=["group"]))
    assert "(missing): no churner among its 50 validation rows" in card.markdown
    # no group fittable: no option, the decisions unchanged, and the reason recorded
    one = np.where(av == "(missing)", "(missing)", "A")
    m0 = mitigate_gap(yv, pv, one, yt, pt, np.where(at == "(missing)", "(missing)", "A"), contact, charter,
                      metric="tpr", seed=0)
    assert not m0["possible"] and m0["profit_cost_per_month"] == 0 and m0["fitted_groups"] == ["A"]


def _evaluation(seed: int = 0):
    yv, pv, av = planted(8000, 3)
    yt, pt, at = planted(8000, 4)
    months = np.repeat(["2025-11", "2025-12"], 4000)
    truth = pd.DataFrame({"p_churn": calibrated(8000, 4, shift=-2.0)[1], "uplift": np.linspace(-0.02, 0.1, 8000)})
    return evaluate_scores("m", yv, pv, yt, pt, CharterSettings(), GATE_NONE(n_boot=100), months=months,
                           sensitive=pd.DataFrame({"group": at}), sensitive_valid=pd.DataFrame({"group": av}),
                           truth=truth, seed=seed)


def test_model_card_has_every_section_in_both_formats():
    ev = _evaluation()
    ev.info.update(run_id="r1", model_uri="models:/m-1", family="hgb")
    card = model_card(ev, CharterSettings(),
                      dict(name="features.customer_month", digest="d1g3st", features=["a", "b"], sensitive=["group"]),
                      pd.Series({"a": 0.3, "b": 0.1}))
    for s in CARD_SECTIONS:
        assert f"\n## {s}\n" in card.markdown and f"<h2>{s}</h2>" in card.html
    assert "d1g3st" in card.markdown and "ROC AUC of the true probabilities" in card.markdown
    assert ev.business["verdict"]["text"] in card.markdown
    assert "Mitigation option" in card.markdown
    assert card.html.startswith("<!doctype html>") and "<table>" in card.html



def test_the_truths_own_fairness_gaps_are_reported_beside_the_models():
    """A gap that comes from real risk differences: the true probabilities' policy has it too, and the card and the gate
    say so."""
    from mlops_nb.fairness import policy_gaps
    from mlops_nb.gate import Evidence, check_fairness
    r = np.random.default_rng(8)
    n = 30_000
    g = r.choice(["young", "old"], n)
    tp = np.clip(np.where(g == "young", 0.09, 0.02) * r.lognormal(0, 0.8, n), 0, 0.9)   # the young really churn more
    y = (r.random(n) < tp).astype(int)
    sens = pd.DataFrame({"age": g})
    decision = tp >= 0.08
    # point gaps of a decision vector: the same numbers as fairness_report's
    rep = fairness_report(y, tp, decision, sens, n_boot=20, min_group_rows=30)["gaps"].set_index("metric")
    got = {d["metric"]: d["difference"] for d in policy_gaps(y, decision, sens, 30)}
    assert got == pytest.approx({m: rep.loc[m, "difference"] for m in ("selection_rate", "tpr")})
    # the oracle as the model: its gaps are the truth's, over the limit, and named as such
    yv = (r.random(n) < tp).astype(int)
    ev = evaluate_scores("oracle-like", yv, tp, y, tp, CharterSettings(), GATE_NONE(n_boot=50, min_group_rows=30),
                         sensitive=sens, sensitive_valid=sens, truth=pd.DataFrame({"p_churn": tp}))
    tpr = next(x for x in ev.fairness["gaps"] if x["metric"] == "tpr")
    assert (
        tpr["difference"] > CharterSettings().max_fairness_gap
        and tpr["oracle_difference"] > CharterSettings().max_fairness_gap
    )
    card = model_card(ev, CharterSettings(), dict(name="t", digest="d", features=["a"], sensitive=["age"]))
    assert "refuses even perfect knowledge" in card.markdown
    reason = check_fairness(Evidence("c", fairness_gaps=[x for x in ev.fairness["gaps"] if x["gated"]]), GATE_NONE(),
                            CharterSettings())
    assert not reason.passed and "the true probabilities' own policy" in reason.message


def test_same_seed_same_numbers():
    a, b, c = _evaluation(1).to_dict(), _evaluation(1).to_dict(), _evaluation(2).to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["metrics"]["roc_auc"] == c["metrics"]["roc_auc"]              # point estimates do not depend on the seed
    assert a["metrics"]["roc_auc_lo"] != c["metrics"]["roc_auc_lo"]        # intervals do
    assert a["oracle"]["rows_matched"] == 8000 and set(a["oracle"]["policies"]) == {"model", "oracle_p",
                                                                                    "oracle_uplift"}


def test_the_oracle_is_joined_by_keyed_pseudonym_and_month(tmp_path):
    from mlops_nb.contracts import FeatureSpec
    from mlops_nb.oracle import oracle_truth
    from mlops_nb.privacy import load_key, pseudonymise
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(tmp_path / "p")
    for month, ids, p in (("2025-05", ["C1", "C2", "C3"], [0.1, 0.2, 0.3]), ("2025-06", ["C1", "C2"], [0.4, 0.5])):
        d = cfg.paths.oracle / "truth" / f"month={month}"
        d.mkdir(parents=True)
        pd.DataFrame({"customer_id": ids, "month": month, "p_churn": p, "p_churn_offered": np.array(p) / 2,
                      "uplift": np.array(p) / 2}).to_parquet(d / "truth.parquet")
    key = pseudonymise(["C2", "C1", "C9", "C2"], load_key(cfg), "customer")
    frame = pd.DataFrame({"customer_key": key, "month": ["2025-05", "2025-06", "2025-06", "2025-06"]})
    spec = FeatureSpec("customer_key", "churned_next", (), (), (), "month", source="synthetic")
    t = oracle_truth(cfg, frame, spec)
    # C9 is unknown
    assert t.p_churn.tolist()[:2] == [0.2, 0.4] and np.isnan(t.p_churn.iloc[2]) and t.p_churn.iloc[3] == 0.5
    assert t.uplift.tolist()[:2] == [0.1, 0.2]
    assert oracle_truth(cfg, frame,
                        FeatureSpec("customer_key", "churned_next", (), (), (), "month", source="byod")) is None


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    "A sandbox with the demo table, a one-family training run and the evaluate phase run on it."
    from mlops_nb.evaluate import run_evaluate
    from mlops_nb.settings import sandbox_settings
    from mlops_nb.sandbox import ensure_demo_features
    from mlops_nb.train import run_train
    cfg = sandbox_settings(tmp_path_factory.mktemp("eval") / "p", train_candidates="logreg, hgb", train_trials=1,
                           gate_n_boot=100,
                           train_blend_within=1.0)   # and their blend
    ensure_demo_features(cfg, n_customers=800, n_months=5)
    run_train(cfg)
    return cfg, run_evaluate(cfg)


def test_run_evaluate_logs_the_comparison_cards_plots_and_packages_every_candidate(evaluated):
    from mlops_nb.contracts import load_feature_table
    from mlops_nb.tracking import MlflowClient, mlflow
    from mlops_nb.encoder import model_input
    from mlops_nb.split import split_frame
    cfg, res = evaluated
    client = MlflowClient()
    assert {ev.name for ev in res.evaluations} == {"logreg", "hgb", "blend"}
    doc = mlflow.artifacts.load_dict(f"runs:/{res.run_id}/evaluation/evaluation.json")
    assert doc["selected"]["run_id"] == res.evaluations[res.selected].info["run_id"] and doc["champion"] is None
    assert doc["baseline"]["name"].startswith("baseline: ") and len(doc["candidates"]) == 3
    # the selection names its rule; a single model displaces the blend only beyond the validation noise
    assert doc["selected"]["name"] == "blend" or "beyond the noise" in doc["selected"]["rule"], doc["selected"]
    tags = client.get_run(res.run_id).data.tags
    assert (
        tags["mlops_nb.evaluation.selected_model_uri"] == doc["selected"]["model_uri"]
        and tags["mlops_nb.evaluation.champion"] == "none"
    )
    metrics = client.get_run(res.run_id).data.metrics
    assert {"roc_auc", "roc_auc_lo", "oracle_roc_auc", "profit_per_month", "ece"} <= set(metrics)
    # the oracle gap is split into what the inputs cannot carry and what the learner left, and the parts add up
    assert metrics["oracle_gap_inputs"] + metrics["oracle_gap_learner"] == pytest.approx(metrics["oracle_auc_gap"],
                                                                                         abs=1e-9)
    assert 0.5 < metrics["oracle_feature_ceiling_auc"] <= metrics["oracle_roc_auc"] + 0.01
    # each gap comes with its paired bootstrap interval (one test month measures it only roughly), which brackets it
    assert metrics["oracle_auc_gap_lo"] < metrics["oracle_auc_gap"] < metrics["oracle_auc_gap_hi"]
    assert metrics["oracle_gap_learner_lo"] < metrics["oracle_gap_learner"] < metrics["oracle_gap_learner_hi"]
    df, spec = load_feature_table(cfg)
    test = split_frame(df, spec, seed=cfg.train.seed).test
    for ev in res.evaluations:
        arts = {a.path for a in client.list_artifacts(ev.info["run_id"], "evaluation")}
        assert {
            f"evaluation/{f}"
            for f in (
                "model_card.md",
                "model_card.html",
                "evaluation.json",
                "calibration.png",
                "profit_curve.png",
                "gains.png",
                "fairness.png",
                "importance.png",
            )
        } <= arts, arts
        card = mlflow.artifacts.load_text(f"runs:/{ev.info['run_id']}/evaluation/model_card.md")
        assert all(f"## {s}" in card for s in CARD_SECTIONS) and ev.info["model_uri"] in card
        if ev.name == "blend":
            assert (
                "family blend (the mean log-odds of hgb, logreg)" in card
                or "family blend (the mean log-odds of logreg, hgb)" in card
            )
        assert (
            f"a gap of {ev.oracle['auc_gap']:.3f}, 95% interval {ev.oracle['auc_gap_lo']:.3f} to "
            f"{ev.oracle['auc_gap_hi']:.3f}"
            in card
        )
        # the card names the dataset by the digest the train run recorded for it (and the features phase logs)
        assert f"(digest {client.get_run(ev.info['train_run_id']).data.tags['mlops_nb.feature_table_digest']}," in card
        assert client.get_run(ev.info["run_id"]).data.metrics["eval_roc_auc"] == pytest.approx(ev.metrics["roc_auc"])
        # the packaged model serves exactly the probabilities that were evaluated, and the chosen threshold
        out = mlflow.pyfunc.load_model(ev.info["model_uri"]).predict(model_input(test, spec))
        assert out.churn_probability.to_numpy() == pytest.approx(res.scores[ev.info["scores_column"]].to_numpy(),
                                                                 abs=1e-9)
        assert out.threshold.iloc[0] == pytest.approx(min(ev.business["threshold"], 1.0))
    assert list(res.scores.columns[:1]) == ["y"] and res.scores.y.tolist() == test[spec.target].astype(int).tolist()
    assert res.evaluations[0].oracle["auc_true_p"] == pytest.approx(
        roc_auc_score(test[spec.target].astype(int), test["_true_p"])
    )
