"""The train phase: splits, the encoder, the torch estimator, reproducibility and the MLflow run layout it leaves for
evaluation."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from mlops_nb.contracts import FeatureSpec, load_feature_table
from mlops_nb.settings import SettingsError, sandbox_settings
from mlops_nb.encoder import TabularEncoder
from mlops_nb.candidates import TorchTabularClassifier, make_candidate
from mlops_nb.sandbox import demo_feature_table, ensure_demo_features
from mlops_nb.train import latest_train_run, load_candidates, run_train, score
from mlops_nb.split import split_frame


@pytest.fixture(scope="module")
def demo():
    return demo_feature_table(800, 5, seed=3)


def test_time_split_trains_on_the_past_and_tests_on_the_latest_labelled_month(demo):
    df, spec = demo
    s = split_frame(df, spec)
    assert s.kind == "time"
    assert (s.train.month.max(), s.valid.month.unique().tolist(), s.test.month.unique().tolist()) == ("2025-02",
                                                                                                      ["2025-03"],
                                                                                                      ["2025-04"])
    # unlabelled month left out
    assert s.train[spec.target].notna().all() and "2025-05" not in set(s.train.month) | set(s.test.month)
    with pytest.raises(SettingsError, match="needs at least 5 labelled months"):
        split_frame(df, FeatureSpec(**{**spec.__dict__, "horizon_months": 2}))


def test_random_split_is_stratified_seeded_and_complete(demo):
    df, spec = demo
    flat = FeatureSpec(spec.id_column, spec.target, spec.numeric, spec.categorical, spec.sensitive)
    a, b, c = split_frame(df, flat, seed=1), split_frame(df, flat, seed=1), split_frame(df, flat, seed=2)
    assert a.kind == "random" and a.test.index.equals(b.test.index) and not a.test.index.equals(c.test.index)
    labelled = df[df[spec.target].notna()]
    assert sorted([*a.train.index, *a.valid.index, *a.test.index]) == sorted(labelled.index)
    rates = [a.y(p).mean() for p in ("train", "valid", "test")]
    assert max(rates) - min(rates) < 0.01


def test_labels_must_be_binary(demo):
    df, spec = demo
    with pytest.raises(SettingsError, match="must hold 0/1"):
        split_frame(df.assign(churned_next=df.churned_next.astype("Float64") * 2), spec)


def test_encoder_takes_what_the_warehouse_and_clients_send():
    train = pd.DataFrame(
        {
            "n": pd.array([1, None, 3], dtype="Int64"),
            "f": [0.5, np.nan, 1.5],
            "c": pd.array(["a", None, "b"], dtype="string"),
        }
    )
    enc = TabularEncoder(("n", "f"), ("c",)).fit(train)
    ref = enc.transform(train)
    # other dtypes, other order
    same = pd.DataFrame({"f": ["0.5", None, 1.5], "c": ["a", np.nan, "b"], "n": [1.0, None, 3]}, dtype=object)
    assert np.array_equal(enc.transform(same), ref)
    # unseen category: no column set
    assert enc.transform(pd.DataFrame({"n": [2], "f": [1.0], "c": ["zzz"]}))[0, :3].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="column 'f' must hold numbers; got 'abc'"):
        enc.transform(same.assign(f="abc"))
    with pytest.raises(TypeError, match="needs a DataFrame"):
        enc.transform(ref)



def test_the_spline_basis_ranks_values_and_lets_a_linear_model_bend():
    from scipy.interpolate import BSpline
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from mlops_nb.encoder import quantile_ranks, spline_basis
    u = np.linspace(0, 1, 41)
    B = spline_basis(u[:, None], 5)[:, 0]
    assert B.shape == (41, 7) and np.allclose(B.sum(1), 1) and (B >= 0).all()
    # scipy's design matrix on the same knots
    t = np.r_[[-0.75, -0.5, -0.25], np.linspace(0, 1, 5), [1.25, 1.5, 1.75]]
    assert np.allclose(B[:-1], BSpline.design_matrix(u[:-1], t, 3).toarray())
    train = pd.DataFrame({"x": [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0, None]})
    enc = TabularEncoder(("x",), (), numeric_basis="spline").fit(train)
    r = quantile_ranks(np.array([[0.0], [-50.0], [1e9], [3.0]]), enc.quantiles_)[:, 0]
    # sorted training values (the missing one imputed with the median, 2): 0 0 0 1 2 2 3 4 5 100
    # 0 is tied thrice: its middle rank
    assert r[1] == 0 and r[2] == 1 and r[3] == pytest.approx(6 / 9, abs=0.01) and r[0] == pytest.approx(1 / 9, abs=0.01)
    assert enc.feature_source_ == ["x"] * 8 and enc.feature_names_out_[-1] == "x_missing"
    assert enc.transform(train).shape == (10, 8) and np.allclose(enc.transform(train)[:, :7].sum(1), 1)
    with pytest.raises(ValueError, match="needs numeric_imputation='median'"):
        TabularEncoder(("x",), (), numeric_imputation="none", numeric_basis="spline").fit(train)
    rng = np.random.default_rng(0)                                                      # a U-shaped risk
    X = pd.DataFrame({"x": rng.uniform(-3, 3, 20_000)})
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(X.x ** 2 - 3)))).astype(int)
    auc = {
        b: roc_auc_score(
            y,
            Pipeline(
                [
                    ("e", TabularEncoder(("x",), (), numeric_basis=b)),
                    ("s", StandardScaler()),
                    ("m", LogisticRegression()),
                ]
            )
            .fit(X, y)
            .predict_proba(X)[:, 1],
        )
        for b in ("linear", "spline")
    }
    assert auc["spline"] > 0.8 > 0.6 > auc["linear"]
    # a model pickled before the spline parameters existed still loads and scores (a registered champion must)
    old = pickle.loads(pickle.dumps(TabularEncoder(("x",), ()).fit(train)))
    del old.__dict__["numeric_basis"], old.__dict__["spline_knots"]
    assert np.array_equal(pickle.loads(pickle.dumps(old)).transform(train),
                          TabularEncoder(("x",), ()).fit(train).transform(train))
    # the shipped logistic regression uses it
    assert make_candidate("logreg", None, FeatureSpec("id", "y", ("x",), (), (), None))[0].numeric_basis == "spline"


def test_torch_classifier_is_a_proper_sklearn_classifier():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(0, 3, 600), rng.normal(size=(600, 3))])
    y = np.where(X[:, 1] + (X[:, 0] == 2) + rng.normal(0, .5, 600) > 0.8, "yes", "no")
    m = TorchTabularClassifier(categorical_features=(0,), hidden_sizes=(16,), max_epochs=15, patience=3, random_state=5)
    p = m.fit(X, y).predict_proba(X)
    assert list(m.classes_) == ["no", "yes"] and np.allclose(p.sum(1), 1) and set(m.predict(X)) <= {"no", "yes"}
    assert np.array_equal(clone(m).fit(X, y).predict_proba(X), p), "same random_state must give the same model"
    assert np.array_equal(pickle.loads(pickle.dumps(m)).predict_proba(X), p)
    assert clone(m).get_params() == m.get_params() and m.n_epochs_ <= 15
    assert not np.array_equal(clone(m).set_params(random_state=6).fit(X, y).predict_proba(X), p)
    X2 = X.copy(); X2[0, 0] = 7; X2[1, 0] = np.nan                                   # unseen and missing codes
    assert np.isfinite(m.predict_proba(X2)).all()


def test_candidates_take_raw_columns_of_every_family(demo):
    df, spec = demo
    s = split_frame(df, spec)
    for family in ("logreg", "hgb", "torch_mlp"):
        params = {"max_epochs": 60, "hidden_sizes": (16,), "batch_size": 128} if family == "torch_mlp" else {}
        pipe = make_candidate(family, params, spec, seed=1).fit(s.train, s.y("train"))
        assert 0.55 < score(s.y("valid"), pipe.predict_proba(s.valid)[:, 1])["auc"] < 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # every family joins the blend
    cfg = sandbox_settings(tmp_path_factory.mktemp("train"), train_trials=2, train_blend_within=1.0)
    assert ensure_demo_features(cfg, n_customers=700, n_months=5, seed=1)
    first, second = run_train(cfg), run_train(cfg)
    return cfg, first, second


def test_same_inputs_and_seed_give_the_same_metrics(trained):
    cfg, first, second = trained
    cols = ["valid_auc", "valid_log_loss", "test_auc", "test_log_loss", "params"]
    pd.testing.assert_frame_equal(first.candidates[cols], second.candidates[cols])
    assert first.run_id != second.run_id and first.oracle_test_auc == second.oracle_test_auc


def test_the_run_records_data_params_and_a_candidate_per_family(trained):
    from mlflow.tracking import MlflowClient
    cfg, first, second = trained
    client = MlflowClient()
    phase = client.get_run(second.run_id)
    assert phase.data.tags["mlops_nb.phase"] == "train" and "mlflow.source.git.commit" in phase.data.tags
    def digests(run):
        return {
            t.value: i.dataset.digest
            for i in run.inputs.dataset_inputs
            for t in i.tags
            if t.key == "mlflow.data.context"
        }
    assert set(digests(phase)) == {"training", "validation", "test"}
    assert digests(phase) == digests(client.get_run(first.run_id)), "same table, same split: same digests"
    assert phase.data.params["split_kind"] == "time" and phase.data.params["seed"] == "7"
    assert "test_oracle_auc" in phase.data.metrics
    exp = phase.info.experiment_id
    families = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{second.run_id}'")
    assert sorted(r.data.tags["mlops_nb.family"] for r in families) == ["blend", "hgb", "logreg", "torch_mlp"]
    blend = next(r for r in families if r.data.tags["mlops_nb.family"] == "blend")
    assert json.loads(blend.data.tags["mlops_nb.params"])["members"] == list(
        second.candidates.drop(index="blend").sort_values("valid_auc", ascending=False).index
    )
    assert blend.data.tags["mlops_nb.model_uri"].startswith("models:/") and {"valid_auc",
                                                                             "test_auc"} <= set(blend.data.metrics)
    assert not client.search_runs([exp],
                                  "tags.`mlflow.parentRunId` = "
                                  f"'{blend.info.run_id}'"), "a blend fits nothing: no trials"
    for fam in families:
        if fam is blend: continue
        assert fam.data.tags["mlops_nb.candidate"] == "true" and fam.data.tags["mlops_nb.model_uri"].startswith(
            "models:/"
        )
        assert {"valid_auc", "test_auc",
                "fit_seconds"} <= set(fam.data.metrics) and "model__random_state" in fam.data.params
        assert len(fam.inputs.dataset_inputs) == 3
        trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{fam.info.run_id}'")
        assert sorted(t.data.tags["mlops_nb.trial"] for t in trials) == ["0", "1"]
        assert all(
            t.data.tags["mlops_nb.kind"] == "trial" and "valid_auc" in t.data.metrics and t.data.params["seed"] == "7"
            for t in trials
        )
        best = max(trials, key=lambda t: t.data.metrics["valid_auc"])
        assert fam.data.metrics["valid_auc"] == best.data.metrics["valid_auc"]


def test_the_network_fits_its_own_smaller_sample_and_logs_it(tmp_path):
    from mlflow.tracking import MlflowClient
    # a held-out split (cv off): a cross-validated table is small, and fits every family on all its folds' rows
    cfg = sandbox_settings(tmp_path, train_candidates="hgb, torch_mlp", train_trials=1, train_network_max_rows=300,
                           train_blend_within=0.0, train_cv_max_rows=0)
    assert ensure_demo_features(cfg, n_customers=700, n_months=5, seed=1)
    res = run_train(cfg)
    client = MlflowClient()
    phase = client.get_run(res.run_id)
    full = int(phase.data.params["train_rows"])
    assert full > 1000 and phase.data.params["network_max_rows"] == "300"
    def training_digest(run):
        return next(
            i.dataset.digest
            for i in run.inputs.dataset_inputs
            for t in i.tags
            if t.key == "mlflow.data.context" and t.value == "training"
        )
    fams = client.search_runs([phase.info.experiment_id], f"tags.`mlflow.parentRunId` = '{res.run_id}'")
    assert sorted(f.data.tags["mlops_nb.family"] for f in fams) == ["hgb", "torch_mlp"], "blend_within = 0: no blend"
    for fam in fams:
        rows, family = int(fam.data.params["train_rows"]), fam.data.tags["mlops_nb.family"]
        if family == "hgb": assert rows == full and training_digest(fam) == training_digest(phase)
        # a stratified sample: about the cap
        else: assert 250 <= rows <= 300 and training_digest(fam) != training_digest(phase)


def test_load_candidates_gives_the_fitted_pipelines_of_the_latest_run(trained):
    cfg, first, second = trained
    assert latest_train_run(cfg) == second.run_id
    cands = load_candidates(cfg)
    assert [c.train_run_id for c in cands] == [second.run_id] * 4
    assert [c.metrics["valid_auc"] for c in cands] == sorted((c.metrics["valid_auc"] for c in cands), reverse=True)
    df, spec = load_feature_table(cfg)
    test = split_frame(df, spec, seed=cfg.train.seed).test
    for c in cands:
        auc = score(test[spec.target].astype(int), c.pipeline.predict_proba(test)[:, 1])["auc"]
        assert abs(auc - c.metrics["test_auc"]) < 1e-12, c.family
        if c.family != "blend":
            assert make_candidate(c.family, c.params, spec).get_params()["model"].__class__ is c.pipeline[-1].__class__
    # the blend, loaded on its own, scores the mean of the loaded members' log-odds
    blend, single = (
        next(c for c in cands if c.family == "blend"),
        {c.family: c.pipeline for c in cands if c.family != "blend"},
    )
    assert blend.pipeline.names == blend.params["members"] and set(blend.pipeline.names) == set(single)
    z = np.mean([single[n].decision_function(test) for n in blend.pipeline.names], axis=0)
    assert np.allclose(blend.pipeline.predict_proba(test)[:, 1], 1 / (1 + np.exp(-z)), rtol=0, atol=1e-12)
    assert {c.family for c in load_candidates(cfg, first.run_id)} == {"logreg", "hgb", "torch_mlp", "blend"}


def test_load_candidates_without_a_train_run_says_so(tmp_path):
    with pytest.raises(SettingsError, match="no finished train run"):
        load_candidates(sandbox_settings(tmp_path))


def test_the_rows_a_model_learns_from_come_in_one_order_and_a_sample_is_seeded(tmp_path):
    """Without an ORDER BY, DuckDB hands a join's rows back as its threads finish them: the default world's table, read
    through the join that leaves out contacted customers, came back in another order on each read, and a fit, a split,
    a sample or a digest taken by position changed with it (two `mlops-nb run train` gave validation AUCs 0.678 and
    0.673). The rows come sorted by (month, customer) whatever the order stored; a sample is the same rows for the
    same seed."""
    from mlops_nb.contracts import connect_warehouse, frame_digest, load_feature_table
    from mlops_nb.sandbox import ensure_demo_features
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(tmp_path / "p")
    ensure_demo_features(cfg, n_customers=50_000, n_months=6)          # 300,000 rows: several row groups
    with connect_warehouse(cfg, read_only=False) as con:              # stored in no order at all
        con.execute("CREATE OR REPLACE TABLE features.customer_month AS SELECT * FROM features.customer_month "
                    "ORDER BY hash(customer_key, month, 7)")
    a, spec = load_feature_table(cfg, untreated=False)
    b, _ = load_feature_table(cfg, untreated=False)
    keys = list(zip(a[spec.time_column].astype(str), a[spec.id_column].astype(str)))
    assert len(keys) == 300_000 and keys == sorted(keys)
    assert frame_digest(a) == frame_digest(b)
    s1, s2, s3 = (load_feature_table(cfg, untreated=False, sample_rows=1000, seed=s)[0] for s in (1, 1, 2))
    assert len(s1) == 1000 and frame_digest(s1) == frame_digest(s2) != frame_digest(s3)
    rows = lambda df: set(zip(df[spec.time_column].astype(str), df[spec.id_column].astype(str)))  # noqa: E731
    assert rows(s1) <= set(keys) and len(rows(s1) & rows(s3)) < 100
