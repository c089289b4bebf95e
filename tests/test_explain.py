"""Explanations: additive on the log-odds scale for every family, zero for what a model cannot use, cheap per
decision."""
from __future__ import annotations

import time

import numpy as np
import pytest

from mlops_nb.explain import (IntegratedGradientsExplainer, LinearExplainer, TreeExplainer, explain, global_importance,
                              log_odds,
                              make_explainer)
from mlops_nb.sandbox import demo_feature_table
from mlops_nb.candidates import make_candidate
from mlops_nb.split import split_frame

FAMILIES = ("logreg", "hgb", "torch_mlp")
SMALL = {"logreg": {}, "hgb": {"max_iter": 200},
         "torch_mlp": {"hidden_sizes": (32, 32), "max_epochs": 40, "batch_size": 256}}
TOLERANCE = {"logreg": 1e-9, "hgb": 1e-9, "torch_mlp": 1e-4}   # the network: float32 and quadrature


@pytest.fixture(scope="module")
def data():
    df, spec = demo_feature_table(1200, 5, seed=11)
    return split_frame(df, spec), spec


@pytest.fixture(scope="module")
def models(data):
    split, spec = data
    return {f: make_candidate(f, SMALL[f], spec, 3).fit(split.train, split.y("train")) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_add_up_to_the_log_odds(family, data, models):
    split, spec = data
    X = split.test
    e = explain(models[family], X)
    assert list(e.columns) == [*spec.numeric, *spec.categorical, "base_value"] and e.index.equals(X.index)
    assert np.abs(e.sum(axis=1).to_numpy() - log_odds(models[family], X)).max() < TOLERANCE[family]
    p = models[family].predict_proba(X)[:, 1]
    assert np.allclose(1 / (1 + np.exp(-e.sum(axis=1))), p, atol=1e-5), "log-odds are the logit of predict_proba"


def test_each_family_gets_its_method(models):
    assert [type(make_explainer(models[f])) for f in FAMILIES] == [LinearExplainer, TreeExplainer,
                                                                   IntegratedGradientsExplainer]


def test_linear_contributions_are_coefficient_times_standardised_value(data, models):
    split, spec = data
    pipe, row = models["logreg"], split.test.iloc[[0]]
    z = pipe[:-1].transform(row)[0]
    src = np.array(pipe[0].feature_source_)
    e = explain(pipe, row).iloc[0]
    coef = pipe[-1].coef_[0]
    for f in ("tenure_months", "contract_type", "satisfaction"):
        assert abs(e[f] - (coef * z)[src == f].sum()) < 1e-12
    assert e["base_value"] == pytest.approx(pipe[-1].intercept_[0])


def test_tree_contributions_are_shaps_tree_shap(data, models):
    import shap
    split, _ = data
    pipe = models["hgb"]
    Z = pipe[:-1].transform(split.test.head(50))
    ref = shap.TreeExplainer(pipe[-1]).shap_values(Z)
    got = make_explainer(pipe).contributions(Z)[1]
    assert np.abs(ref - got).max() < 1e-12


def test_native_categorical_trees_are_refused_not_silently_misexplained(data, models):
    split, spec = data
    pipe = models["hgb"]
    from sklearn.base import clone
    native = clone(pipe).set_params(model__categorical_features=[0, 1, 2, 3], model__max_iter=40).fit(split.train,
                                                                                                      split.y("train"))
    with pytest.raises(TypeError, match="native categorical"):
        make_explainer(native)


def test_integrated_gradients_converge_and_are_complete_with_few_steps(data, models):
    split, _ = data
    pipe = models["torch_mlp"]
    Z = pipe[:-1].transform(split.test.head(200))
    base, few = IntegratedGradientsExplainer(pipe, steps=8).contributions(Z)
    _, many = IntegratedGradientsExplainer(pipe, steps=64).contributions(Z)
    assert np.abs(few - many).max() < 1e-3
    assert np.abs(few.sum(1) + base - pipe[-1].decision_function(Z)).max() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_a_feature_the_model_cannot_use_gets_nothing(family, data):
    split, spec = data
    const = split.train.assign(lines=2)
    params = {"hidden_sizes": (16,), "max_epochs": 8} if family == "torch_mlp" else SMALL[family]
    pipe = make_candidate(family, params, spec, 3).fit(const, split.y("train"))
    assert explain(pipe, split.test.assign(lines=2))["lines"].abs().max() < 1e-12


def test_global_importance_ranks_real_drivers_above_an_irrelevant_feature(data, models):
    split, _ = data
    for f in FAMILIES:
        gi = global_importance(models[f], split.test)
        assert (gi >= 0).all() and gi.is_monotonic_decreasing and gi.name == "mean_abs_contribution"
        # a small network on little data overfits a little
        assert gi.index.get_loc("lines") >= (8 if f != "torch_mlp" else 3), f


def test_one_row_explanation_is_cheap(data, models):
    split, _ = data
    row = split.test.iloc[[3]]
    for f in FAMILIES:
        ex, ts = make_explainer(models[f]), []
        for _ in range(60):
            t0 = time.perf_counter()
            ex(row)
            ts.append(time.perf_counter() - t0)
        p50, p99 = np.median(ts) * 1e3, np.percentile(ts, 99) * 1e3
        print(f"{f}: one-row explanation p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        assert p50 < 25, f"{f}: one-row explanation took {p50:.1f} ms (target ≲ 5 ms)"


def test_unsupported_models_get_a_clear_error(data):
    split, spec = data
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    pipe = make_candidate("hgb", {}, spec)
    rf = Pipeline([("encode", pipe[0]), ("model", RandomForestClassifier(n_estimators=3))])
    with pytest.raises(TypeError, match="no explainer for RandomForestClassifier"):
        make_explainer(rf)
