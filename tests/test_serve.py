"""The scoring API as users and operators meet it: real `mlops-nb serve` processes (uvicorn) on 127.0.0.1, a real MLflow
store with two registered versions, real Parquet prediction logs — and stock `mlflow models serve` as the reference."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import BIN, free_port, launch, stop
from serving_fixtures import (build_project, run_load, score_requests, start_api,
                              start_mlflow_serve, stop_group)

ADMIN = "admin-token-for-tests-0123456789"
CLIENT = "client-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with champion v1 and a registered v2 (another threshold, calibrated): built once for this file."""
    return build_project(tmp_path_factory.mktemp("serve") / "proj", n_customers=1500, n_months=5,
                         hgb_params={"max_iter": 80})


@pytest.fixture(scope="module")
def api(project, tmp_path_factory):
    """One server for the request-level tests: admin token set, log flushed every 0.3 s."""
    log = tmp_path_factory.mktemp("logs") / "api.log"
    proc, url = start_api(project.settings, env={"MLOPS_API_ADMIN_TOKEN": ADMIN, "MLOPS_API__LOG_FLUSH_SECONDS": "0.3"},
                          log=log)
    try:
        yield url
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def logged(project, request_ids=None):
    from mlops_nb.prediction_log import read_prediction_log
    df = read_prediction_log(project.cfg)
    return df if request_ids is None else df[df.request_id.isin(set(request_ids))]


# ---- requests and their errors ---------------------------------------------------------------------------------------
def test_health_ready_model_and_openapi_name_the_real_fields(api, project):
    with httpx.Client(base_url=api) as c:
        assert c.get("/health").json()["status"] == "ok"
        ready = c.get("/ready").json()
        assert (
            ready["status"] == "ready"
            and ready["model"]["version"] == project.v1
            and ready["model"]["compiled"] is True
        )
        info = c.get("/v1/model").json()
        assert info["lineage"]["training_run_id"] and info["self_check"]["max_abs_diff"] == 0.0
        spec = c.get("/openapi.json").json()
        feats = spec["components"]["schemas"]["Features"]
        assert sorted(feats["required"]) == sorted(project.records[0]) and feats["additionalProperties"] is False
        assert (
            feats["properties"]["region"]["enum"][:-1] == info["categories"]["region"]
            and None in feats["properties"]["region"]["enum"]
        )
        assert feats["properties"]["tenure_months"]["type"] == ["number", "null"]
        assert spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"][
            "$ref"
        ].endswith("ScoreRequest")


def test_scores_one_record_and_a_batch_with_nullable_integers(api, project):
    rec = {**project.records[0], "tenure_months": None, "tickets_3m": 2, "satisfaction": None, "payment_method": None}
    with httpx.Client(base_url=api) as c:
        one = c.post("/v1/score", json={"customer_id": "cust-0001", "features": rec})
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["model"]["version"] == project.v1 and 0 <= body["churn_probability"] <= 1
        assert body["decision"] == (body["churn_probability"] >= body["threshold"]) and body["customer_key"].startswith(
            "p_"
        )
        batch = c.post(
            "/v1/score/batch",
            json={
                "records": [{"features": r} for r in project.records[:25]]
                + [{"customer_id": "cust-0001", "features": rec}]
            },
        )
        assert batch.status_code == 200
        preds = batch.json()["predictions"]
        assert [p["row"] for p in preds] == list(range(26)) and preds[-1]["churn_probability"] == body[
            "churn_probability"
        ]
        assert preds[-1]["customer_key"] == body["customer_key"] and preds[0]["customer_key"] is None


BAD = [  # (name, body, the field the error must name)
    ("string for a number", lambda r: {"features": {**r, "tenure_months": "12"}}, "features.tenure_months"),
    ("boolean for a number", lambda r: {"features": {**r, "lines": True}}, "features.lines"),
    ("number for a category", lambda r: {"features": {**r, "region": 3}}, "features.region"),
    ("missing field", lambda r: {"features": {k: v for k, v in r.items() if k != "monthly_fee"}},
     "features.monthly_fee"),
    ("unknown field", lambda r: {"features": {**r, "cpf": "123"}}, "features.cpf"),
    ("unknown category", lambda r: {"features": {**r, "region": "Sudest"}}, "features.region"),
    ("features not an object", lambda r: {"features": [1, 2]}, "features"),
    ("no features", lambda r: {"customer_id": "x"}, "features"),
    ("unknown top-level field", lambda r: {"features": r, "name": "Maria"}, "name"),
    ("explain not a boolean", lambda r: {"features": r, "explain": "yes"}, "explain"),
    ("customer id too long", lambda r: {"features": r, "customer_id": "9" * 129}, "customer_id"),
    ("customer id not a string", lambda r: {"features": r, "customer_id": 12345}, "customer_id"),
]


@pytest.mark.parametrize("name,make,field", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_get_a_422_naming_the_field(api, project, name, make, field):
    r = httpx.post(f"{api}/v1/score", json=make(project.records[0]))
    assert r.status_code == 422, (name, r.status_code, r.text)
    fields = [e["field"] for e in r.json()["detail"]]
    assert field in fields, (name, fields)
    if name == "unknown category":
        msg = next(e["msg"] for e in r.json()["detail"] if e["field"] == field)
        # lists the allowed values, never repeats the value sent
        assert "Sudeste" in msg and "Sudest " not in msg + " "


def test_nan_infinity_malformed_and_oversized_bodies_get_4xx_never_5xx(api, project):
    rec = project.records[0]
    def raw(body: bytes, path="/v1/score", headers=None):
        return httpx.post(f"{api}{path}", content=body, headers={"content-type": "application/json", **(headers or {})})
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        text = json.dumps({"features": rec}).replace('"data_gb": ' + json.dumps(rec["data_gb"]),
                                                     f'"data_gb": {literal}')
        r = raw(text.encode())
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "features.data_gb", (literal, r.text)
    for body in (b"", b"{", b"[1,2]", b'"x"', b"\xff\xfe", b"{" * 5000):
        r = raw(body)
        assert r.status_code == 422, (body[:10], r.status_code)
    assert raw(json.dumps({"features": rec}).encode(), headers={"content-type": "text/plain"}).status_code == 415
    assert httpx.post(f"{api}/v1/score?explain=maybe", json={"features": rec}).status_code == 422
    # too large: refused from Content-Length before the body is read, and when streamed without one
    big = json.dumps({"records": [{"features": rec}] * 4000}).encode()
    assert len(big) > 1_048_576
    r = raw(big, "/v1/score/batch")
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
    r = httpx.post(f"{api}/v1/score/batch", content=(big[i:i + 65536] for i in range(0, len(big), 65536)),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = httpx.post(f"{api}/v1/score/batch", json={"records": [{"features": rec}] * 1001})
    assert r.status_code == 413 and "max_batch_rows" in r.json()["detail"]
    r = httpx.post(f"{api}/v1/score/batch", json={"records": []})
    assert r.status_code == 422
    r = httpx.post(f"{api}/v1/score/batch",
                   json={"records": [{"features": rec}, {"features": {**rec, "region": "Lua"}}, 7]})
    assert r.status_code == 422 and {e["field"] for e in r.json()["detail"]} == {"records[1].features.region",
                                                                                 "records[2]"}
    assert httpx.get(f"{api}/v1/score").status_code == 405


# ---- explanations, admin, metrics
# -------------------------------------------------------------------------------------
def test_explanations_are_recoverable_later_and_audited(api, project):
    from mlops_nb.audit import read_events
    r = httpx.post(f"{api}/v1/score",
                   json={"customer_id": "cust-77", "features": project.records[3], "explain": True}).json()
    deadline = time.monotonic() + 20
    while True:   # from the worker's buffer at first, from the Parquet log once flushed: the same answer either way
        e = httpx.get(f"{api}/v1/explanations/{r['request_id']}", headers={"x-actor": "dpo"})
        assert e.status_code == 200, e.text
        if len(logged(project, [r["request_id"]])) == 1 or time.monotonic() > deadline: break
        time.sleep(0.2)
    e = httpx.get(f"{api}/v1/explanations/{r['request_id']}", headers={"x-actor": "dpo"}).json()
    p = e["predictions"][0]
    assert p["explanation"] == r["explanation"] and p["churn_probability"] == r["churn_probability"]
    assert (
        p["customer_key"] == r["customer_key"]
        and e["model"]["version"] == project.v1
        and e["lineage"]["training_run_id"]
    )
    ev = [x for x in read_events(project.cfg, "api.explanation") if x.subject == r["request_id"]]
    assert ev and ev[-1].actor == "dpo" and ev[-1].details["customer_keys"] == [r["customer_key"]]
    assert httpx.get(f"{api}/v1/explanations/0190a1b2-0000-7000-8000-000000000000").status_code == 404
    assert httpx.get(f"{api}/v1/explanations/not-an-id").status_code == 422


def test_admin_reload_needs_the_bearer_token(api, project):
    assert httpx.post(f"{api}/admin/reload").status_code == 401
    assert httpx.post(f"{api}/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    r = httpx.post(f"{api}/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json()["model"]["version"] == project.v1 and r.json()["changed"] is False


def test_metrics(api, project):
    httpx.post(f"{api}/v1/score", json={"features": project.records[0]})
    httpx.post(f"{api}/v1/score", json={"features": {}})
    m = httpx.get(f"{api}/metrics").text
    assert 'mlops_nb_api_requests_total{endpoint="/v1/score",status="200"}' in m
    assert 'mlops_nb_api_requests_total{endpoint="/v1/score",status="422"}' in m
    assert f'mlops_nb_api_model_info{{model_name="churn-model",model_version="{project.v1}"}} 1.0' in m
    assert "mlops_nb_api_request_seconds_bucket" in m and "mlops_nb_prediction_log_lag_seconds" in m
    assert f'mlops_nb_api_predictions_total{{model_version="{project.v1}"}}' in m


def test_the_api_records_its_cpu_and_predictions_for_the_services_cost(api, project):
    """Beside the log, each API process keeps its CPU seconds and predictions written (what `58_costs` prices)."""
    from mlops_nb.costs import api_usage
    cpu0, n0 = api_usage(project.cfg)
    r = httpx.post(f"{api}/v1/score/batch", json={"records": [{"features": project.records[0]}] * 40})
    assert r.status_code == 200
    deadline = time.time() + 15
    while api_usage(project.cfg)[1] < n0 + 40 and time.time() < deadline: time.sleep(0.2)
    cpu, n = api_usage(project.cfg)
    assert n >= n0 + 40 and cpu > cpu0 > 0, (cpu0, n0, cpu, n)


def test_schemathesis_finds_no_server_error(api, tmp_path):
    """At least 500 generated cases against our OpenAPI document; every check, no failure (413 counts as a
    rejection)."""
    cfg = tmp_path / "schemathesis.toml"
    cfg.write_text('[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "403", "404", "405", "406", '
                   '"409", "413", "415", "422"]\n')
    report = tmp_path / "st.json"
    r = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(cfg),
            "run",
            f"{api}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "110",
            "--seed",
            "7",
            "-H",
            f"Authorization: Bearer {ADMIN}",
            "--request-timeout",
            "30",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            "--no-shrink",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    rep = json.loads(report.read_text())
    assert rep["test_cases"]["generated"] >= 500, rep["test_cases"]
    assert r.returncode == 0 and not rep["failures"] and not rep["errors"], r.stdout[-4000:]


# ---- the stock server as the reference
# ---------------------------------------------------------------------------------
def test_same_probabilities_as_mlflow_models_serve(api, project, tmp_path):
    rows = project.records[:40] + [{**project.records[0], "satisfaction": None, "payment_method": None}]
    ours = httpx.post(f"{api}/v1/score/batch", json={"records": [{"features": r} for r in rows]}).json()["predictions"]
    proc, url = start_mlflow_serve(project.cfg, f"models:/{project.cfg.mlflow.registered_model}/{project.v1}",
                                   log=tmp_path / "mlflow.log")
    try:
        feats = list(rows[0])
        r = httpx.post(f"{url}/invocations",
                       json={"dataframe_split": {"columns": feats, "data": [[x[f] for f in feats] for x in rows]}},
                       timeout=60)
        assert r.status_code == 200, r.text
        theirs = r.json()["predictions"]
    finally:
        stop_group(proc)
    assert len(theirs) == len(ours)
    np.testing.assert_allclose([p["churn_probability"] for p in ours], [p["churn_probability"] for p in theirs], rtol=0,
                               atol=1e-9)
    assert [p["decision"] for p in ours] == [p["decision"] for p in theirs]


# ---- auth on the scoring endpoints, admin disabled
# ------------------------------------------------------------------------
def test_scoring_auth_and_disabled_admin(project, tmp_path):
    proc, url = start_api(project.settings, env={"MLOPS_API__AUTH": "bearer", "MLOPS_API_TOKEN": CLIENT},
                          log=tmp_path / "auth.log")
    try:
        body = {"features": project.records[0]}
        assert httpx.post(f"{url}/v1/score", json=body).status_code == 401
        assert httpx.post(f"{url}/v1/score", json=body, headers={"authorization": "Bearer nope"}).status_code == 401
        r = httpx.post(f"{url}/v1/score", json=body, headers={"authorization": f"Bearer {CLIENT}"})
        assert r.status_code == 200
        assert httpx.get(f"{url}/v1/explanations/{r.json()['request_id']}").status_code == 401
        assert httpx.get(f"{url}/v1/explanations/{r.json()['request_id']}",
                         headers={"authorization": f"Bearer {CLIENT}"}).status_code == 200
        # no admin token: disabled
        assert httpx.post(f"{url}/admin/reload", headers={"authorization": f"Bearer {CLIENT}"}).status_code == 403
        assert httpx.get(f"{url}/health").status_code == 200
        spec = httpx.get(f"{url}/openapi.json").json()
        assert spec["paths"]["/v1/score"]["post"]["security"] == [{"bearerAuth": []}]
    finally:
        stop(proc)


# ---- hot swap under load
# ------------------------------------------------------------------------------------------------
def swap_under_load(project, url: str, concurrency: int, seconds: float, what: str):
    """`seconds` of scoring load at `concurrency` with v2 promoted 2.5 s in; v1 is the champion again afterwards,
    whatever happened. Returns the load's result (bodies collected, in completion order)."""
    from mlops_nb import registry
    out = {}
    reqs = score_requests(project.records[:200], project.keys[:200])
    load = threading.Thread(
        target=lambda: out.update(res=run_load(url, reqs, concurrency=concurrency, seconds=seconds, collect=True))
    )
    load.start()
    try:
        time.sleep(2.5)
        registry.promote(project.cfg, project.v2, actor="test", reason=what, override_reason=f"test of {what}")
        load.join(timeout=60)
    finally:
        registry.promote(project.cfg, project.v1, actor="test", reason="restore",
                         override_reason=f"restore the champion after the test of {what}")
    return out["res"]


def test_hot_swap_under_concurrent_load_fails_no_request(project, tmp_path):
    proc, url = start_api(project.settings, args=["--poll-seconds", "0.3"], log=tmp_path / "swap.log")
    try:
        res = swap_under_load(project, url, concurrency=8, seconds=14, what="the API's hot swap under load")
    finally:
        stop(proc)
    assert res.errors == 0 and res.statuses == {200: res.ok}, (res.statuses, res.error_kinds)
    bodies = [json.loads(b) for b in res.bodies]
    versions = [b["model"]["version"] for b in bodies]
    assert versions[0] == project.v1 and set(versions) == {project.v1, project.v2}, set(versions)
    tail = versions[int(len(versions) * 0.8):]
    assert set(tail) == {project.v2}, "after the swap, requests are scored by the new champion"
    # each response's version is what the log recorded for that request, with that version's threshold
    df = logged(project, [b["request_id"] for b in bodies]).set_index("request_id")
    assert len(df) == len(bodies)
    for b in bodies[:: max(1, len(bodies) // 400)]:
        row = df.loc[b["request_id"]]
        assert (
            row.model_version == b["model"]["version"]
            and row.threshold == b["threshold"]
            and row.churn_probability == b["churn_probability"]
        )
    print(f"{res.ok} requests, {versions.count(project.v1)} by v{project.v1}, {versions.count(project.v2)} by "
          f"v{project.v2}, 0 errors")


# ---- graceful shutdown: no prediction lost
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_flushes_every_prediction(project, tmp_path, workers):
    from mlops_nb.privacy import scan_for_values, scan_frame
    # nothing is written before shutdown
    env = {"MLOPS_API__LOG_FLUSH_SECONDS": "3600", "MLOPS_API__LOG_FLUSH_ROWS": "1000000"}
    proc, url = start_api(project.settings, workers=workers, env=env, log=tmp_path / "term.log")
    ids = [f"BR-CLI-{7000000000 + i}" for i in range(300)]       # company customer ids: must never reach the log
    out = {}
    try:
        done = run_load(url, score_requests(project.records[:300], ids), concurrency=4, total=300, collect=True)
        assert done.ok == 300 and done.errors == 0
        # and more requests in flight when the signal arrives
        load = threading.Thread(
            target=lambda: out.update(
                res=run_load(
                    url, score_requests(project.records[:100], ids[:100]), concurrency=8, seconds=4, collect=True
                )
            )
        )
        load.start()
        time.sleep(1.0)
        before = len(list(project.cfg.paths.prediction_log.rglob("*.parquet")))
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        load.join(timeout=30)
    finally:
        stop(proc)
    assert "Traceback" not in (tmp_path / "term.log").read_text()
    inflight = [json.loads(b)["request_id"] for b in out["res"].bodies if b.startswith(b'{"request_id"')]
    answered = [json.loads(b)["request_id"] for b in done.bodies] + inflight
    assert out["res"].ok == len(inflight) and len(inflight) > 0
    df = logged(project, answered)
    assert len(df) == len(answered) == len(set(answered)), f"{len(df)} logged of {len(answered)} answered"
    assert len(list(project.cfg.paths.prediction_log.rglob("*.parquet"))) > before
    if workers == 2: assert df.request_id.nunique() == len(answered)
    # lineage in every row, the version's own
    from mlops_nb.served import mlflow_for, model_lineage
    lineage = model_lineage(mlflow_for(project.cfg)[1], project.cfg.mlflow.registered_model, project.v1)
    for k, v in lineage.items():
        assert v not in ("", "unknown") and (df[k] == v).all(), (k, v)
    assert (df.model_version == project.v1).all() and df.time.notna().all() and df.latency_ms.notna().all()
    # no clear customer id anywhere in the log: not in the files' bytes, not in the decoded rows
    assert df.customer_key.str.fullmatch(r"p_[0-9a-f]{24}").all()
    assert not scan_for_values([project.cfg.paths.prediction_log], ids, min_len=6)
    assert not scan_frame(df, ids, "prediction_log")


# ---- no model yet: 503 until the alias appears
# ----------------------------------------------------------------------------
def test_serves_503_until_its_alias_points_somewhere(project, tmp_path):
    """A server on an alias nobody holds starts, says why it is not ready, and loads the version the alias gets."""
    from mlops_nb import registry
    proc, url = start_api(project.settings, args=["--alias", "challenger", "--poll-seconds", "0.3"],
                          log=tmp_path / "s.log",
                          timeout=120, ready="/health")   # alive, not ready: nobody holds the alias yet
    try:
        r = httpx.get(f"{url}/ready")
        assert (
            r.status_code == 503 and "holds the alias 'challenger'" in r.json()["detail"] and r.headers["retry-after"]
        )
        s = httpx.post(f"{url}/v1/score", json={"features": project.records[0]})
        assert s.status_code == 503 and "no model is loaded yet" in s.json()["detail"]
        registry.set_status(project.cfg, project.v2, "staging", actor="test", reason="canary for the 503 test")
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/ready").status_code != 200 and time.monotonic() < deadline: time.sleep(0.2)
        r = httpx.post(f"{url}/v1/score", json={"features": project.records[0]})
        assert r.status_code == 200 and r.json()["model"]["version"] == project.v2
    finally:
        registry.set_status(project.cfg, project.v2, "development", actor="test", reason="end of the 503 test")
        stop(proc)


# ---- one reload call moves every worker
# -------------------------------------------------------------------------------------
def _versions_by_worker(url: str, tries: int = 300) -> dict[int, str]:
    """The version each worker serves, from /ready on fresh connections (the kernel hands them to either worker)."""
    seen: dict[int, str] = {}
    for _ in range(tries):
        body = httpx.get(f"{url}/ready", headers={"connection": "close"}).json()
        seen[body["pid"]] = body["model"]["version"]
        if len(seen) == 2 and len(set(seen.values())) == 1 and _ > 20: break
    return seen


def test_admin_reload_reaches_every_worker_without_polling(project, tmp_path):
    from mlops_nb import registry
    proc, url = start_api(project.settings, workers=2, args=["--poll-seconds", "0"],
                          env={"MLOPS_API_ADMIN_TOKEN": ADMIN},
                          log=tmp_path / "reload.log")
    try:
        before = _versions_by_worker(url)
        # two workers, both on the champion
        assert len(before) == 2 and set(before.values()) == {project.v1}, before
        registry.promote(project.cfg, project.v2, actor="test", reason="reload test",
                         override_reason="test of the reload across workers")
        r = httpx.post(f"{url}/admin/reload", headers={"authorization": f"Bearer {ADMIN}"}).json()
        assert r["changed"] and r["model"]["version"] == project.v2 and r["other_workers_told"]
        deadline, after = time.time() + 15, {}
        # nothing polls: only the announcement moves the other
        while time.time() < deadline:
            after = _versions_by_worker(url, tries=60)
            if len(after) == 2 and set(after.values()) == {project.v2}: break
            time.sleep(0.3)
        assert len(after) == 2 and set(after.values()) == {project.v2}, after
    finally:
        registry.promote(project.cfg, project.v1, actor="test", reason="restore",
                         override_reason="restore the champion after the reload test")
        stop(proc)
    assert "Traceback" not in (tmp_path / "reload.log").read_text()


def test_the_balancer_command_prints_its_configuration_and_refuses_a_bad_address():
    from conftest import run_cli
    ok = run_cli("balancer", "--print", "--replica", "10.0.0.5:8000", "--replica", "api-2.internal:8000")
    assert ok.returncode == 0 and "server replica2 api-2.internal:8000 check" in ok.stdout, ok.stderr
    bad = run_cli("balancer", "--print", "--replica", "api-2.internal")
    assert bad.returncode == 2 and "'api-2.internal' is not an address of the form host:port" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---- replicas behind a load balancer
# ---------------------------------------------------------------------------------------
def _rows_by_writer(project, request_ids) -> dict[int, set]:
    """The model versions in each writing process's log files, for these requests (a file's name ends in its writer's
    host-pid and a sequence number)."""
    import duckdb
    glob = str(project.cfg.paths.prediction_log / "date=*" / "part-*.parquet")
    rows = duckdb.sql(f"SELECT filename, request_id, model_version FROM read_parquet('{glob}', filename = true, "
                      "union_by_name = true)").df()
    rows = rows[rows.request_id.isin(set(request_ids))]
    pid = rows.filename.str.extract(r"-(\d+)-\d{6}\.parquet$")[0].astype(int)
    return {int(p): set(g) for p, g in rows.model_version.groupby(pid)}


@pytest.mark.scaleout
def test_replicas_behind_haproxy_follow_a_promotion_and_log_every_request_once(project, tmp_path):
    """Two API processes on their own ports behind Debian's HAProxy, each following the champion alias by polling (no
    reload broadcast reaches across hosts): 64 concurrent clients through a promotion, every request answered, and
    every one in the merged prediction log exactly once, by the version that answered it."""
    env = {"MLOPS_API__LOG_FLUSH_SECONDS": "0.5"}
    replicas, lb = [], None
    try:
        with ThreadPoolExecutor(2) as pool:                # both start at once (each waits for its model)
            starts = [pool.submit(start_api, project.settings, args=["--poll-seconds", "0.5"], env=env,
                                  log=tmp_path / f"replica{i}.log") for i in (1, 2)]
        replicas += [f.result() for f in starts if f.exception() is None]    # stopped below even if the other failed
        for f in starts: f.result()
        pids = [httpx.get(f"{u}/ready").json()["pid"] for _, u in replicas]
        url = f"http://127.0.0.1:{(port := free_port())}"
        behind = [a for _, u in replicas for a in ("--replica", u.split("//")[1])]
        lb = launch([BIN / "mlops-nb", "balancer", "--listen", f"127.0.0.1:{port}", "--check-seconds", "0.5",
                     "--config", tmp_path / "haproxy.cfg", *behind],
                    f"{url}/balancer/health", cwd=tmp_path, env=dict(os.environ), log=tmp_path / "haproxy.log")
        res = swap_under_load(project, url, concurrency=64, seconds=8, what="the replicas' hot swap behind HAProxy")
    finally:
        if lb is not None: stop(lb)
        for proc, _ in replicas: stop(proc)             # SIGTERM: each replica flushes its log before it ends
    assert res.errors == 0 and res.statuses == {200: res.ok} and res.ok == res.sent, (res.statuses, res.error_kinds)
    bodies = [json.loads(b) for b in res.bodies]
    ids, versions = [b["request_id"] for b in bodies], [b["model"]["version"] for b in bodies]
    assert versions[0] == project.v1 and set(versions[int(len(versions) * 0.8):]) == {project.v2}, set(versions)
    # the merged log: every answered request once, with the version that answered it
    df = logged(project, ids)
    assert len(df) == len(ids) == df.request_id.nunique() == len(set(ids)), (len(df), len(ids))
    answered = dict(zip(ids, versions))
    assert (df.model_version == df.request_id.map(answered)).all()
    # both replicas served, and each one moved to the new champion on its own
    by_writer = _rows_by_writer(project, ids)
    assert set(by_writer) == set(pids) and all(v == {project.v1, project.v2} for v in by_writer.values()), by_writer
    for i in (1, 2): assert "Traceback" not in (tmp_path / f"replica{i}.log").read_text()
    assert "server replica2" in (tmp_path / "haproxy.cfg").read_text()     # `mlops-nb balancer` wrote and ran it
    print(f"{res.ok} requests at concurrency 64 through HAProxy, {res.rps:.0f}/s, p99 {res.pct(99):.0f} ms; "
          f"{versions.count(project.v1)} by v{project.v1}, {versions.count(project.v2)} by v{project.v2}; "
          f"logged once each by {len(by_writer)} replicas")


def test_the_fast_path_explains_and_encodes_a_logistic_regression_like_the_pipeline():
    """The API's fast path on a logistic-regression champion (a scaler between encoder and model, a spline basis):
    JSON records encode bit-identically, and explanations sum to the log-odds (they skipped the scaler before)."""
    from mlops_nb.package import ChurnModel
    from mlops_nb.scorers import FastScorer
    from mlops_nb.sandbox import demo_feature_table
    from mlops_nb.candidates import make_candidate
    from mlops_nb.encoder import model_input
    from mlops_nb.split import split_frame
    df, spec = demo_feature_table(1500, 5, seed=2)
    split = split_frame(df, spec)
    lr = make_candidate("logreg", None, spec, 7).fit(split.train, split.y("train"))
    fs = FastScorer(ChurnModel(lr, spec, 0.2))
    X = model_input(split.test.head(50), spec)
    records = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in X.astype(object).to_dict("records")
    ]
    enc = [fs.records.encode(r, ("body",), []) for r in records]
    Z = np.array([row for row, _ in enc])
    assert np.array_equal(Z, lr[0].transform(X)) and np.array_equal(Z, fs.encode_frame(X))
    assert np.allclose(fs.probabilities(Z), lr.predict_proba(X)[:, 1], atol=1e-12)
    out = fs.explain(Z, [v for _, v in enc])
    ref = ChurnModel(lr, spec, 0.2).predict(None, X, params={"explain": True})
    for e, (_, r) in zip(out, ref.iterrows()):
        assert e["base_log_odds"] + sum(c["contribution"] for c in e["contributions"]) == pytest.approx(e["log_odds"],
                                                                                                        abs=1e-9)
        assert {c["feature"]: c["contribution"] for c in e["contributions"]}["tenure_months"] == pytest.approx(
            r.contrib_tenure_months, abs=1e-9
        )


def test_a_blend_champion_serves_its_members_average_with_explanations_that_add_up(tmp_path):
    """A blend (boosted trees + spline logistic regression, log-odds averaged) registered as champion: the API answers
    with the packaged model's probabilities, explanations summing to the blend's log-odds, and field errors once."""
    import pandas as pd
    from conftest import make_project
    from serving_fixtures import latest_records
    from mlops_nb.privacy import load_key
    from mlops_nb.sandbox import sandbox_champion
    from mlops_nb.settings import load_settings
    from mlops_nb.tracking import configure_mlflow, mlflow
    settings = make_project(tmp_path / "proj", privacy_key_file=str(tmp_path / "proj" / "secrets" / "pseudonym.key"))
    cfg = load_settings(settings, env={})
    load_key(cfg)
    v = sandbox_champion(cfg, "blend", n_customers=1200, n_months=5)
    records, _ = latest_records(cfg, limit=12)
    configure_mlflow(cfg)
    ref = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model}/{v.version}").predict(
        pd.DataFrame(records), params={"explain": True}
    )
    proc, url = start_api(settings, log=tmp_path / "api.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            ready = c.get("/ready").json()
            # the trees member compiled
            assert ready["model"]["version"] == v.version and ready["model"]["compiled"] is True
            assert c.get("/v1/model").json()["self_check"]["max_abs_diff"] < 1e-9
            for rec, (_, r) in zip(records, ref.iterrows()):
                out = c.post("/v1/score?explain=true", json={"features": rec}).json()
                assert out["churn_probability"] == pytest.approx(r.churn_probability, abs=1e-9)
                e = out["explanation"]
                assert e["log_odds"] == pytest.approx(r.log_odds, abs=1e-9)
                assert e["base_log_odds"] + sum(x["contribution"] for x in e["contributions"]) == pytest.approx(
                    e["log_odds"], abs=1e-9
                )
            bad = c.post("/v1/score", json={"features": {**records[0], "region": "Atlantis"}})
            assert bad.status_code == 422 and [d["field"] for d in bad.json()["detail"]] == ["features.region"], (
                bad.text
            )
    finally:
        stop(proc)
    assert "Traceback" not in (tmp_path / "api.log").read_text()
