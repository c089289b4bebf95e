"""The shipped model: loads in a fresh process with plain MLflow, same probabilities, any integer/missing input,
explanations, servability."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression

from mlops_nb.package import log_packaged_model, servability_check
from mlops_nb.settings import sandbox_settings
from mlops_nb.tracking import mlflow, phase_run
from mlops_nb.sandbox import demo_feature_table
from mlops_nb.package import log_pipeline
from mlops_nb.candidates import make_candidate
from mlops_nb.split import split_frame


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    df, spec = demo_feature_table(1000, 5, seed=5)
    split = split_frame(df, spec)
    hgb = make_candidate("hgb", {"max_iter": 150}, spec, 1).fit(split.train, split.y("train"))
    net = make_candidate("torch_mlp", {"hidden_sizes": (16,), "max_epochs": 15}, spec, 1).fit(split.train,
                                                                                              split.y("train"))
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(hgb.predict_proba(split.valid)[:, 1],
                                                                         split.y("valid"))
    cfg = sandbox_settings(tmp_path_factory.mktemp("package"))
    with phase_run(cfg, "package-test"):
        uris = {"hgb": log_packaged_model(hgb, spec, 0.15, calibrator=iso, input_example=split.valid.head(5)),
                "torch_mlp": log_packaged_model(net, spec, 0.3, input_example=split.valid.head(5),
                                                registered_model_name="churn-test")}
    return dict(split=split, spec=spec, pipes={"hgb": hgb, "torch_mlp": net}, iso=iso, uris=uris, cfg=cfg)


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np, pandas as pd, mlflow
    uris, rows = json.loads(sys.argv[1]), pd.read_pickle(sys.argv[2])
    out = {}
    for family, uri in uris.items():
        model = mlflow.pyfunc.load_model(uri)
        out[family] = model.predict(rows)["churn_probability"].tolist()
    import mlops_nb
    out["mlops_nb_from"] = mlops_nb.__file__
    print("RESULT " + json.dumps(out))
""")


def test_loads_in_a_fresh_process_with_plain_mlflow_and_gives_the_same_probabilities(shipped, tmp_path):
    rows = shipped["split"].test.head(300)
    rows.to_pickle(tmp_path / "rows.pkl")
    uris = {**shipped["uris"], "torch_mlp": "models:/churn-test/1"}         # the registered version resolves too
    # a plain environment, but one OpenMP thread: torch's default spins a thread per core, and with the suite's other
    # worker busy that made this load take 40 s instead of 7 (the package sizes its own pools; plain MLflow does not)
    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri(),
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", FRESH, json.dumps(uris), str(tmp_path / "rows.pkl")], cwd=tmp_path,
                       env=env,
                       capture_output=True, text=True, timeout=240)
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, r.stderr[-2000:]
    got = json.loads(line[7:])
    assert "/code/mlops_nb/" in got["mlops_nb_from"], "the model must load its own bundled code"
    hgb = shipped["iso"].transform(shipped["pipes"]["hgb"].predict_proba(rows)[:, 1])
    net = shipped["pipes"]["torch_mlp"].predict_proba(rows)[:, 1]
    assert np.abs(np.array(got["hgb"]) - hgb).max() <= 1e-9
    assert np.abs(np.array(got["torch_mlp"]) - net).max() <= 1e-9


def test_nullable_integers_plain_integers_and_missing_values_all_score(shipped):
    model = mlflow.pyfunc.load_model(shipped["uris"]["hgb"])
    spec, rows = shipped["spec"], shipped["split"].test.head(6)[shipped["spec"].features].copy()
    ints = ["tenure_months", "tickets_3m", "satisfaction", "lines"]
    as_float = rows.astype({c: "float64" for c in spec.numeric})
    ref = model.predict(as_float)["churn_probability"].to_numpy()
    nullable = rows.astype({c: "Int64" for c in ints})
    nullable.loc[nullable.index[0], "satisfaction"] = pd.NA
    plain = rows.assign(**{c: rows[c].fillna(0).astype("int64") for c in ints})   # what a JSON client sends
    assert np.allclose(model.predict(nullable)["churn_probability"].iloc[1:], ref[1:], atol=1e-12)
    assert np.isfinite(model.predict(nullable)["churn_probability"]).all()
    assert np.isfinite(model.predict(plain)["churn_probability"]).all()
    holes = as_float.copy()
    holes.loc[holes.index[:3], ["dropped_call_rate", "monthly_fee"]] = np.nan
    holes.loc[holes.index[:3], ["payment_method", "region"]] = None
    holes["product"] = pd.array(holes["product"], dtype="string")
    assert np.isfinite(model.predict(holes)["churn_probability"]).all()
    records = json.loads(as_float.head(2).to_json(orient="records"))                 # JSON round trip: ints, nulls
    assert np.allclose(model.predict(pd.DataFrame(records))["churn_probability"], ref[:2], atol=1e-9)


def test_bad_input_is_refused_with_a_clear_message(shipped):
    model = mlflow.pyfunc.load_model(shipped["uris"]["hgb"])
    rows = shipped["split"].test.head(2)[shipped["spec"].features]
    with pytest.raises(Exception, match="column 'monthly_fee' must hold numbers"):
        model.predict(rows.astype({"monthly_fee": object}).assign(monthly_fee="R$ 99,90"))
    with pytest.raises(Exception, match="missing inputs.*contract_type"):
        model.predict(rows.drop(columns="contract_type"))


def test_decision_threshold_and_explanations(shipped):
    model = mlflow.pyfunc.load_model(shipped["uris"]["hgb"])
    spec, rows = shipped["spec"], shipped["split"].test.head(40)
    plain = model.predict(rows)
    assert list(plain.columns) == ["churn_probability", "decision", "threshold"]
    assert (plain.decision == (plain.churn_probability >= 0.15)).all() and (plain.threshold == 0.15).all()
    out = model.predict(rows, params={"explain": True})
    contrib = out[[f"contrib_{f}" for f in spec.features]]
    assert np.abs(contrib.sum(axis=1) + out.base_log_odds - out.log_odds).max() < 1e-9
    raw = shipped["pipes"]["hgb"].predict_proba(rows)[:, 1]
    assert np.allclose(1 / (1 + np.exp(-out.log_odds)), raw,
                       atol=1e-9), "explanations are of the model's log-odds, before calibration"
    assert np.allclose(out.churn_probability, plain.churn_probability)
    net = mlflow.pyfunc.load_model(shipped["uris"]["torch_mlp"]).predict(rows, params={"explain": True})
    assert np.abs(net.filter(like="contrib_").sum(axis=1) + net.base_log_odds - net.log_odds).max() < 1e-4


def test_requirements_signature_and_metadata(shipped):
    from mlflow.models import Model
    for family, uri in shipped["uris"].items():
        local = Path(mlflow.artifacts.download_artifacts(uri))
        reqs = (local / "requirements.txt").read_text().split()
        assert any(r.startswith("torch==") for r in reqs) == (family == "torch_mlp")
        assert any(r.startswith("shap==") for r in reqs) == (family == "hgb")
        assert not any(r.startswith(("rich", "psutil", "tqdm")) for r in reqs)
        m = Model.load(local)
        assert m.metadata["family"] == family and m.metadata["feature_spec"]["target"] == "churned_next"
        sig = m.signature
        assert [c.name for c in sig.inputs.inputs] == shipped["spec"].features and sig.params.params[
            0
        ].name == "explain"


def test_servability_numbers(shipped):
    got = servability_check(shipped["uris"]["hgb"], n_requests=60)
    print(got)
    assert got["ok"], got
    assert 0 < got["p50_ms"] <= got["p99_ms"] and 0 < got["explain_p50_ms"] and got["load_seconds"] > 0
    assert "/code/mlops_nb/" in got["mlops_nb_from"]
    bad = servability_check("runs:/0123456789abcdef/none", n_requests=5)
    assert not bad["ok"] and bad["error"]


class _Collect(logging.Handler):
    def __init__(self): super().__init__(); self.messages: list[str] = []
    def emit(self, record): self.messages.append(record.getMessage())


def test_mlflow_routine_notices_are_dropped_and_other_messages_still_show(tmp_path):
    from mlops_nb.tracking import ROUTINE_MLFLOW_NOTICES
    seen = _Collect()
    mlflow_log = logging.getLogger("mlflow")          # MLflow's loggers report to its own handler, not the root's
    mlflow_log.addHandler(seen)
    try:
        df, spec = demo_feature_table(200, 5, seed=2)
        split = split_frame(df, spec)
        hgb = make_candidate("hgb", {"max_iter": 20}, spec, 1).fit(split.train, split.y("train"))
        net = make_candidate("torch_mlp", {"hidden_sizes": (8,), "max_epochs": 2}, spec, 1).fit(split.train,
                                                                                                split.y("train"))
        cfg = sandbox_settings(tmp_path)                # a new embedded store: MLflow creates its tables
        with phase_run(cfg, "notices-test"):
            log_packaged_model(hgb, spec, 0.2, input_example=split.valid.head(3))   # a pyfunc saved with cloudpickle
            # a network's pipeline: saved with cloudpickle
            log_pipeline(net, spec, split.valid.head(3), name="raw")
        logging.getLogger("mlflow.sklearn").warning("a warning a reader must see")
    finally:
        mlflow_log.removeHandler(seen)
    routine = [m for m in seen.messages if any(m.startswith(o) for os_ in ROUTINE_MLFLOW_NOTICES.values() for o in os_)]
    assert routine == [] and "a warning a reader must see" in seen.messages


def test_a_packaged_models_input_example_is_nobodys_row(shipped):
    """LGPD: a model travels far from the warehouse; its input example is synthetic (per-column percentiles and frequent
    categories), never a customer's row — though it was built from the rows it was given."""
    from mlops_nb.encoder import model_input
    from mlops_nb.tracking import configure_mlflow
    configure_mlflow(shipped["cfg"])      # its store: an earlier test may have pointed MLflow at another one
    spec, split = shipped["spec"], shipped["split"]
    real = {tuple(r) for r in model_input(split.train, spec).astype(str).to_numpy()} | \
        {tuple(r) for r in model_input(split.valid, spec).astype(str).to_numpy()}
    for uri in shipped["uris"].values():
        ex = mlflow.pyfunc.load_model(uri).input_example
        assert len(ex) == 5 and list(ex.columns) == list(spec.features)
        assert not any(tuple(r) in real for r in model_input(ex, spec).astype(str).to_numpy())
