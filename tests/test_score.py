"""Batch scoring (`mlops-nb score --month`) into the prediction log, and reading that log while it is written."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import make_project, run_cli


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with a demo feature table (2025-01..2025-05) and a production champion."""
    from mlops_nb.privacy import load_key
    from mlops_nb.serve import sandbox_champion
    from mlops_nb.settings import load_settings
    root = tmp_path_factory.mktemp("score") / "proj"
    path = make_project(root, privacy_key_file=str(root / "secrets" / "pseudonym.key"))
    cfg = load_settings(path, env={})
    load_key(cfg)
    v = sandbox_champion(cfg, params={"max_iter": 80}, n_customers=1200, n_months=5)
    return SimpleNamespace(settings=path, cfg=cfg, version=v.version, run_id=v.run_id)


def test_score_month_from_the_cli_matches_the_pyfunc_and_reads_the_warehouse_read_only(project):
    from mlops_nb.audit import read_events
    from mlops_nb.contracts import connect_warehouse
    from mlops_nb.score import month_rows, read_prediction_log
    from mlops_nb.tracking import mlflow
    from mlops_nb.train import model_input
    with connect_warehouse(project.cfg, read_only=True):       # a read-write open by the job would fail while we hold this
        r = run_cli("--settings", str(project.settings), "score", "--month", "2025-04")
    assert r.returncode == 0, r.stderr
    assert f"with churn-model version {project.version}" in r.stdout and "Traceback" not in r.stderr
    df, spec = month_rows(project.cfg, "2025-04")
    log = read_prediction_log(project.cfg, source="batch").sort_values("row")
    assert len(log) == len(df) == 1200 and set(log.month) == {"2025-04"} and log.request_id.nunique() == 1
    ref = mlflow.pyfunc.load_model(f"models:/churn-model/{project.version}").predict(model_input(df, spec)).churn_probability.to_numpy()
    np.testing.assert_array_equal(log.churn_probability.to_numpy(), ref)          # bit for bit
    assert (log.decision == (log.churn_probability >= log.threshold)).all()
    assert log.customer_key.tolist() == df[spec.id_column].tolist()               # the warehouse's pseudonyms, in order
    assert (log.training_run_id == project.run_id).all() and (log.dataset_digest.str.len() == 16).all()
    assert log.git_commit.str.fullmatch(r"[0-9a-f]{40}(-dirty)?").all()
    assert log.latency_ms.isna().all() and (log.source == "batch").all()
    np.testing.assert_array_equal(log.tenure_months.to_numpy(), pd.to_numeric(df.tenure_months).to_numpy(dtype=float, na_value=np.nan))
    ev = [e for e in read_events(project.cfg, "batch.scored")][-1]
    assert ev.details["month"] == "2025-04" and ev.details["rows"] == 1200 and ev.subject == f"churn-model@{project.version}"


def test_score_errors_are_messages_not_tracebacks(project, tmp_path):
    r = run_cli("--settings", str(project.settings), "score", "--month", "April")
    assert r.returncode == 2 and "YYYY-MM" in r.stderr
    r = run_cli("--settings", str(project.settings), "score", "--month", "2030-01")
    assert r.returncode == 2 and "no rows for month 2030-01; its months are 2025-01, 2025-02" in r.stderr
    empty = make_project(tmp_path / "empty")
    r = run_cli("--settings", str(empty), "score", "--month", "2025-01")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no warehouse" in r.stderr, r.stderr


def test_batch_and_online_scores_agree(project):
    """The same customers scored by the API (in process) and by the batch job get the same probabilities."""
    from starlette.testclient import TestClient
    from mlops_nb.score import month_rows, score_month
    from mlops_nb.serve import ScoringApp
    res = score_month(project.cfg, "2025-03")
    df, spec = month_rows(project.cfg, "2025-03")
    recs = [{f: (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)) for f, v in zip(spec.features, row)}
            for row in df[spec.features].head(50).astype(object).itertuples(index=False)]
    with TestClient(ScoringApp(project.cfg)) as c:
        online = c.post("/v1/score/batch", json={"records": [{"features": r} for r in recs]}).json()["predictions"]
    from mlops_nb.score import read_prediction_log
    batch = read_prediction_log(project.cfg, source="batch")
    batch = batch[batch.request_id == res.request_id].sort_values("row").head(50)
    np.testing.assert_array_equal([p["churn_probability"] for p in online], batch.churn_probability.to_numpy())


def test_read_prediction_log_while_it_is_written(tmp_path):
    """A reader polling the log during writes sees whole files only: counts never go down, never an error."""
    from mlops_nb.score import read_prediction_log
    from mlops_nb.serve import LogBlock, PredictionLog, new_request_id
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(tmp_path / "sb")
    m = SimpleNamespace(name="churn-model", version="9", threshold=0.5, features=["x", "c"], numeric=["x"], feature_index={"x": 0, "c": 1},
                        lineage={"training_run_id": "r", "dataset_digest": "d", "git_commit": "g"})
    plog = PredictionLog(cfg.paths.prediction_log, flush_rows=50, flush_seconds=0.02).start()
    n, stop = 3000, threading.Event()
    def write():
        for i in range(n):
            plog.append(LogBlock(m, new_request_id(), time.time(), "api", 0.5, [f"p_{i:024x}"], [[float(i), "a" if i % 3 else None]],
                                 np.array([0.1]), np.array([False])))
            if i % 50 == 0: time.sleep(0.04)          # ~2.5 s of writing: the reader reads many times meanwhile
        stop.set()
    t = threading.Thread(target=write)
    t.start()
    counts = []
    while not stop.is_set() or plog.pending_rows:
        counts.append(len(read_prediction_log(cfg)))
        if stop.is_set(): plog.flush()
    t.join()
    assert plog.close() == 0
    final = read_prediction_log(cfg)
    assert len(final) == n and counts == sorted(counts) and len(set(counts)) >= 3, counts
    assert not list(Path(cfg.paths.prediction_log).rglob("*.tmp"))
    assert final.x.tolist() == [float(i) for i in range(n)]                        # oldest first
    t0 = final.time.iloc[n // 2]
    assert len(read_prediction_log(cfg, since=t0)) == n - n // 2 - (final.time.iloc[: n // 2] == t0).sum()
    assert len(read_prediction_log(cfg, source="batch")) == 0
