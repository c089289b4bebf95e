"""Batch scoring (`mlops-nb score --month`) into the prediction log, and reading that log while it is written."""
from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import make_project, run_cli


# what a PredictionLog needs of a served model, for tests that write the log directly
LOG_MODEL = SimpleNamespace(name="churn-model", version="9", threshold=0.5, features=["x", "c"], numeric=["x"],
                            feature_index={"x": 0, "c": 1},
                            lineage={"training_run_id": "r", "dataset_digest": "d", "git_commit": "g"})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with a demo feature table (2025-01..2025-05) and a production champion."""
    from mlops_nb.privacy import load_key
    from mlops_nb.sandbox import sandbox_champion
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
    from mlops_nb.score import month_rows
    from mlops_nb.prediction_log import read_prediction_log
    from mlops_nb.tracking import mlflow
    from mlops_nb.encoder import model_input
    # a read-write open by the job would fail while we hold this
    with connect_warehouse(project.cfg, read_only=True):
        r = run_cli("--settings", str(project.settings), "score", "--month", "2025-04")
    assert r.returncode == 0, r.stderr
    assert f"with churn-model version {project.version}" in r.stdout and "Traceback" not in r.stderr
    df, spec = month_rows(project.cfg, "2025-04")
    log = read_prediction_log(project.cfg, source="batch").sort_values("row")
    assert len(log) == len(df) == 1200 and set(log.month) == {"2025-04"} and log.request_id.nunique() == 1
    ref = (
        mlflow.pyfunc.load_model(f"models:/churn-model/{project.version}")
        .predict(model_input(df, spec))
        .churn_probability.to_numpy()
    )
    np.testing.assert_array_equal(log.churn_probability.to_numpy(), ref)          # bit for bit
    assert (log.decision == (log.churn_probability >= log.threshold)).all()
    assert log.customer_key.tolist() == df[spec.id_column].tolist()               # the warehouse's pseudonyms, in order
    assert (log.training_run_id == project.run_id).all() and (log.dataset_digest.str.len() == 16).all()
    assert log.git_commit.str.fullmatch(r"[0-9a-f]{40}(-dirty)?").all()
    assert log.latency_ms.isna().all() and (log.source == "batch").all()
    np.testing.assert_array_equal(log.tenure_months.to_numpy(),
                                  pd.to_numeric(df.tenure_months).to_numpy(dtype=float, na_value=np.nan))
    ev = [e for e in read_events(project.cfg, "batch.scored")][-1]
    assert (
        ev.details["month"] == "2025-04"
        and ev.details["rows"] == 1200
        and ev.subject == f"churn-model@{project.version}"
    )


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
    from mlops_nb.api import ScoringApp
    res = score_month(project.cfg, "2025-03")
    df, spec = month_rows(project.cfg, "2025-03")
    recs = [{f: (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)) for f, v in zip(spec.features, row)}
            for row in df[spec.features].head(50).astype(object).itertuples(index=False)]
    with TestClient(ScoringApp(project.cfg)) as c:
        online = c.post("/v1/score/batch", json={"records": [{"features": r} for r in recs]}).json()["predictions"]
    from mlops_nb.prediction_log import read_prediction_log
    batch = read_prediction_log(project.cfg, source="batch")
    batch = batch[batch.request_id == res.request_id].sort_values("row").head(50)
    np.testing.assert_array_equal([p["churn_probability"] for p in online], batch.churn_probability.to_numpy())


def test_read_prediction_log_while_it_is_written(tmp_path):
    """A reader polling the log during writes sees whole files only: counts never go down, never an error."""
    from mlops_nb.prediction_log import read_prediction_log
    from mlops_nb.prediction_log import LogBlock, PredictionLog, new_request_id
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(tmp_path / "sb")
    m = LOG_MODEL
    plog = PredictionLog(cfg.paths.prediction_log, flush_rows=50, flush_seconds=0.02).start()
    n, stop = 3000, threading.Event()
    def write():
        for i in range(n):
            plog.append(
                LogBlock(
                    m,
                    new_request_id(),
                    time.time(),
                    "api",
                    0.5,
                    [f"p_{i:024x}"],
                    [[float(i), "a" if i % 3 else None]],
                    np.array([0.1]),
                    np.array([False]),
                )
            )
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


def _multi_day_log(cfg, days=("2026-01-01", "2026-01-02", "2026-01-03"), per_day=40, rows=25):
    """A prediction log written by a real PredictionLog: `per_day` files on each of `days` (past dates), plus
    today's."""
    import datetime as dt
    from mlops_nb.prediction_log import LogBlock, PredictionLog, new_request_id
    m = LOG_MODEL
    plog = PredictionLog(cfg.paths.prediction_log, flush_rows=10 ** 6, flush_seconds=3600).start()
    stamps = [dt.datetime.fromisoformat(d + "T12:00:00+00:00").timestamp() for d in days] + [time.time()]
    i = 0
    for t in stamps:
        for _ in range(per_day * rows):
            plog.append(
                LogBlock(
                    m,
                    new_request_id(t + i * 1e-3),
                    t + i * 1e-3,
                    "api",
                    0.5,
                    [f"p_{i:024x}"],
                    [[float(i), "a" if i % 3 else None]],
                    np.array([0.1]),
                    np.array([i % 2 == 0]),
                )
            )
            i += 1
            # one file per `rows` predictions, as a worker's timed flushes make them
            if i % rows == 0: plog.flush()
    assert plog.close() == 0
    return i


def test_compaction_rewrites_closed_days_as_one_file_with_the_same_rows(tmp_path):
    from mlops_nb.audit import read_events
    from mlops_nb.prediction_log import compact_prediction_log, read_prediction_log
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(tmp_path / "sb")
    n = _multi_day_log(cfg)
    folder = Path(cfg.paths.prediction_log)
    before = read_prediction_log(cfg)
    files = {d.name: len(list(d.glob("part-*.parquet"))) for d in folder.glob("date=*")}
    assert len(before) == n and len(files) == 4 and min(files.values()) >= 40
    left = folder / ".date=2026-01-02.compacting"                  # what a compaction killed mid-day leaves
    left.mkdir()
    (left / "part-x.parquet").write_bytes(next((folder / "date=2026-01-02").glob("part-*.parquet")).read_bytes())
    res = compact_prediction_log(cfg)
    assert not left.exists() and res.before < str(pd.Timestamp.now(tz="UTC").date())
    assert res.days == ["2026-01-01", "2026-01-02",
                        "2026-01-03"] and res.files_before == sum(files[f"date={d}"] for d in res.days)
    assert res.rows == 3 * 40 * 25
    after = {d.name: len(list(d.glob("part-*.parquet"))) for d in folder.glob("date=*")}
    today = next(k for k in files if k[5:] not in res.days)
    assert all(after[f"date={d}"] == 1 for d in res.days) and after[today] == files[today]   # today is left alone
    # same rows, same order, same types
    pd.testing.assert_frame_equal(read_prediction_log(cfg), before)
    # nothing left beside the days (and the API processes' usage files, which compaction leaves alone)
    from mlops_nb.prediction_log import USAGE_DIR
    assert sorted(p.name for p in folder.iterdir() if p.name != USAGE_DIR) == sorted(files)
    assert [e.subject for e in read_events(cfg) if e.kind == "log.compacted"] == [f"date={d}" for d in res.days]
    # a second run has nothing to do
    assert compact_prediction_log(cfg).days == []
    # days before today only: today still grows
    assert compact_prediction_log(cfg, keep_days=0).days == []
    pd.testing.assert_frame_equal(read_prediction_log(cfg), before)


def _poll_during_compaction(cfg, poll, readers: int = 2):
    """Run `poll()` over and over on `readers` threads while `compact_prediction_log` runs; return its result and the
    results and errors of every poll."""
    from mlops_nb.prediction_log import compact_prediction_log
    results, errors, done = [], [], threading.Event()
    def loop():
        while not done.is_set():
            try: results.append(poll())
            except Exception as e: errors.append(repr(e))
    threads = [threading.Thread(target=loop) for _ in range(readers)]
    for t in threads: t.start()
    time.sleep(0.3)
    res = compact_prediction_log(cfg)
    time.sleep(0.3)
    done.set()
    for t in threads: t.join()
    return res, results, errors


def test_readers_during_compaction_see_every_row_once(tmp_path):
    """Readers polling while days are swapped: every read returns all rows, never a day twice or missing, never an
    error."""
    from mlops_nb.prediction_log import read_prediction_log
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(tmp_path / "sb")
    days = tuple(f"2026-02-{d:02d}" for d in range(1, 9))
    n = _multi_day_log(cfg, days=days, per_day=30, rows=20)
    def read():
        df = read_prediction_log(cfg)
        return len(df), df.request_id.nunique()
    res, counts, errors = _poll_during_compaction(cfg, read)
    assert res.days == list(days) and errors == []
    assert len(counts) >= 5 and set(counts) == {(n, n)}, sorted(set(counts))[:5]


def test_explanation_lookups_during_compaction_find_their_request(tmp_path):
    """The API's explanation lookup reads one day's files by the date in the request id: it too reads again when a swap
    removes the files it listed, so a request is found, whole, while its day is compacted."""
    from mlops_nb.prediction_log import read_prediction_log
    from mlops_nb.prediction_log import find_logged_request
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(tmp_path / "sb")
    days = tuple(f"2026-03-{d:02d}" for d in range(1, 9))
    _multi_day_log(cfg, days=days, per_day=30, rows=20)
    log = read_prediction_log(cfg)
    wanted = log.groupby(log.time.dt.date).request_id.last().tolist()[:len(days)]      # one request of each closed day
    folder = Path(cfg.paths.prediction_log)
    # each poll: the next day's request
    turns = itertools.cycle(wanted)
    def look() -> bool:
        rid = next(turns)
        return find_logged_request(folder, rid).request_id.tolist() == [rid]
    res, found, errors = _poll_during_compaction(cfg, look)
    assert res.days == list(days) and errors == []
    assert len(found) >= len(wanted) and all(found)                                      # ~30 on a busy machine


def test_log_compact_from_the_cli(project):
    r = run_cli("--settings", str(project.settings), "log", "compact", "--keep-days", "0")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "nothing to compact" in r.stdout or "compacted" in r.stdout
    bad = run_cli("--settings", str(project.settings), "log", "compact", "--keep-days", "-1")
    assert (
        bad.returncode != 0
        and "keep_days must be 0 or more" in (bad.stdout + bad.stderr)
        and "Traceback" not in bad.stderr
    )
