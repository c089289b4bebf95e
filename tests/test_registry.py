"""The model registry's lifecycle on a real MLflow store — embedded SQLite and a real `mlflow server` over HTTP."""
from __future__ import annotations

import time

import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from conftest import make_project, run_cli
from mlops_nb import registry as R
from mlops_nb.audit import read_events, verify_chain
from mlops_nb.settings import load_settings
from mlops_nb.tracking import mlflow, phase_run


def candidate(cfg, approved: bool) -> tuple[str, str]:
    """Log a tiny model in its own run, tagged the way the gate tags candidates."""
    with phase_run(cfg, "test") as run:
        info = mlflow.sklearn.log_model(DummyClassifier(strategy="prior").fit([[0], [1]], [0, 1]), name="model",
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
        mlflow.set_tag("mlops_nb.gate.approved", str(approved).lower())
    return info.model_uri, run.info.run_id


def lifecycle(cfg, settings_path):
    v1 = R.register(cfg, *candidate(cfg, True))
    v2 = R.register(cfg, *candidate(cfg, False))
    v3 = R.register(cfg, *candidate(cfg, True))
    assert [v.status for v in R.list_versions(cfg)] == ["development"] * 3

    R.promote(cfg, v1.version, actor="ana", reason="first model")
    t_v1 = pd.Timestamp.now(tz="UTC")
    time.sleep(0.05)
    with pytest.raises(R.RegistryError, match="not approved by the promotion gate"):
        R.promote(cfg, v2.version, actor="ana")
    with pytest.raises(R.RegistryError, match="at least 15 characters"):
        R.promote(cfg, v2.version, actor="ana", override_reason="because")
    R.set_status(cfg, v3.version, "staging", actor="ana", reason="challenger")
    assert R.version_with_status(cfg, "staging").version == v3.version
    R.promote(cfg, v3.version, actor="ana", reason="better and as fair")
    t_v3 = pd.Timestamp.now(tz="UTC")
    time.sleep(0.05)
    assert R.version_info(cfg, v1.version).status == "archived"
    assert R.version_with_status(cfg, "staging") is None, "the challenger alias moved with the promotion"
    assert "champion" in R.version_info(cfg, v3.version).aliases

    # an override is possible, with a written reason, and recorded
    R.promote(cfg, v2.version, actor="rui", override_reason="regulator-mandated rules model for Q4 audit")
    overrides = [e for e in read_events(cfg, "gate.override")]
    assert overrides and overrides[-1].actor == "rui" and "regulator" in overrides[-1].details["reason"]
    t_v2 = pd.Timestamp.now(tz="UTC")
    time.sleep(0.05)

    back = R.rollback(cfg, actor="rui", reason="complaints about v2")
    assert back.version == v3.version and R.version_with_status(cfg, "production").version == v3.version

    # which version was in production at time T
    assert R.production_version_at(cfg, t_v1) == v1.version
    assert R.production_version_at(cfg, t_v3) == v3.version
    assert R.production_version_at(cfg, t_v2) == v2.version
    assert R.production_version_at(cfg, pd.Timestamp("2000-01-01", tz="UTC")) is None
    h = R.history(cfg)
    assert set(h.columns) >= {"time", "actor", "version", "from_status", "to_status", "reason", "gate_approved"}
    promotions = h[h.to_status == "production"]
    assert list(promotions.version) == [v1.version, v3.version, v2.version, v3.version]
    assert list(promotions.actor) == ["ana", "ana", "rui", "rui"] and promotions.override.tolist() == [False, False,
                                                                                                       True, False]
    assert verify_chain(cfg) == (True, None)
    with pytest.raises(R.RegistryError, match="is in production"):
        R.archive(cfg, v3.version, "ana", "cleanup")
    # the CLI answers the same question
    r = run_cli("--settings", str(settings_path), "model", "at", t_v1.isoformat())
    assert r.returncode == 0 and r.stdout.strip() == v1.version, r.stderr
    r = run_cli("--settings", str(settings_path), "model", "promote", v1.version, "--actor", "eve", "--reason",
                "restore v1")
    assert r.returncode == 0 and f"version {v1.version} is now in production" in r.stdout, r.stderr
    assert R.history(cfg).iloc[-1].actor == "eve"


def test_lifecycle_on_the_embedded_store(tmp_path):
    settings = make_project(tmp_path / "proj")
    lifecycle(load_settings(settings, env={}), settings)


def test_lifecycle_through_a_real_mlflow_server(tmp_path, mlflow_server, monkeypatch):
    settings = make_project(tmp_path / "proj", mlflow_tracking_uri=mlflow_server)
    cfg = load_settings(settings, env={})
    assert cfg.mlflow.tracking_uri.startswith("http://127.0.0.1:")
    lifecycle(cfg, settings)


def test_cli_refuses_unknown_versions_and_unapproved_promotions(tmp_path):
    settings = make_project(tmp_path / "proj")
    cfg = load_settings(settings, env={})
    v = R.register(cfg, *candidate(cfg, False))
    r = run_cli("--settings", str(settings), "model", "promote", "99")
    assert r.returncode == 2 and "has no version 99" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--settings", str(settings), "model", "promote", v.version)
    assert r.returncode == 2 and "not approved by the promotion gate" in r.stderr
    r = run_cli("--settings", str(settings), "model", "list")
    assert r.returncode == 0 and "not approved" in r.stdout
