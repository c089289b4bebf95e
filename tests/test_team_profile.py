"""The team profile: the embedded store moved into PostgreSQL behind a real `mlflow server` (served artifacts,
basic-auth) that the test starts on 127.0.0.1, then the lifecycle and a month operated through HTTP tracking and the
registry's history and aliases checked there. Marked `scaleout`: a developer may skip it (-m "not scaleout"); CI
runs it."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, _cli_env, free_port, launch, run_cli, stop, stop_group

pytestmark = pytest.mark.scaleout
PASSWORD = "team-profile-test-Pw1"


def postgres_bin() -> Path:
    "Debian's PostgreSQL programs (the newest installed), or a clear failure naming the package."
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = Path(found[-1]) if found else (Path(shutil.which("initdb")) if shutil.which("initdb") else None)
    if initdb is None:
        pytest.fail("PostgreSQL is missing: `apt-get install postgresql` (./run_all.sh --test installs it)")
    return initdb.parent


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port with an empty `mlflow` database; yields its URI."""
    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="mlops-nb-pg-"))     # not under pytest's 0700 folders: postgres must enter it
    as_pg: list[str] = []
    if os.geteuid() == 0:                                      # initdb refuses root: run the cluster as postgres
        shutil.chown(root, "postgres"); as_pg = ["runuser", "-u", "postgres", "--"]
    def pg(*cmd: object) -> None:
        subprocess.run([*as_pg, *map(str, cmd)], check=True, capture_output=True, timeout=120)
    port = free_port()
    pg(bindir / "initdb", "-D", root / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8")
    pg(bindir / "pg_ctl", "-D", root / "data", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
       "-l", root / "server.log", "-w", "start")
    try:
        pg(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "mlflow")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pg(bindir / "pg_ctl", "-D", root / "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def status_code(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        import base64
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r: return r.status
    except urllib.error.HTTPError as e: return e.code


def test_the_store_moves_to_postgresql_and_the_lifecycle_and_a_month_run_through_the_server(postgres, tmp_path):
    from mlflow import MlflowClient

    from test_operate import build, table
    from mlops_nb.catalog import (AUDIT_TRACKING_MIGRATED, STATUS_PRODUCTION, TABLE_MONITOR_MONTHS, TAG_MONTH,
                                  TAG_STATUS)
    cfg, version = build(tmp_path / "p")
    settings = str(cfg.source)
    before = run_cli("--settings", settings, "model", "history")
    assert before.returncode == 0 and "production" in before.stdout, before.stderr[-2000:]
    artifacts = tmp_path / "server-artifacts"
    moved = run_cli("--settings", settings, "tracking", "migrate", "--to", postgres, "--artifacts-destination",
                    str(artifacts))
    assert moved.returncode == 0 and "migrated" in moved.stdout, moved.stderr[-2000:]
    assert "***" in moved.stdout or "postgres@" in moved.stdout
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = launch([BIN / "mlops-nb", "tracking", "server", "--backend-store-uri", postgres, "--artifacts-destination",
                     artifacts, "--port", port, "--workers", "1", "--config-folder", tmp_path / "server"],
                    f"{url}/health", cwd=tmp_path, env=_cli_env({"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD}),
                    log=tmp_path / "server.log", timeout=180, own_group=True)
    team = {"MLOPS_MLFLOW__TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    try:
        search = f"{url}/api/2.0/mlflow/registered-models/search"
        assert status_code(search) == 401 and status_code(search, ("admin", "wrong")) == 401
        assert status_code(search, ("admin", PASSWORD)) == 200
        # the registry's history, read through the server, is the embedded store's
        after = run_cli("--settings", settings, "model", "history", env=team)
        assert after.returncode == 0 and after.stdout == before.stdout, (before.stdout, after.stdout, after.stderr)
        # the whole lifecycle through the server (every phase's run, the datasets, the models, the registration and
        # the policies), then a month operated: only the setting and the credentials changed
        life = run_cli("--settings", settings, "run", "--no-progress", "-p", "train_candidates", "hgb", "-p",
                       "train_trials", "1", env=team, timeout=900)
        assert life.returncode == 0, (life.stdout[-2000:], life.stderr[-3000:])
        grown = run_cli("--settings", settings, "model", "history", env=team)      # the old history, then the new
        rows = lambda out: {" ".join(line.split()) for line in out.splitlines()}   # noqa: E731 — widths change
        assert grown.returncode == 0 and rows(before.stdout) < rows(grown.stdout), grown.stdout
        month = run_cli("--settings", settings, "operate", "--month", "2025-06", "-p", "operate_drift_report",
                        "false", env=team)
        assert month.returncode == 0, (month.stdout[-2000:], month.stderr[-3000:])
        assert list(table(cfg, f"SELECT status FROM {TABLE_MONITOR_MONTHS}").status) == ["ok"]
        os.environ.update({k: v for k, v in team.items() if k.startswith("MLFLOW_")})
        try:
            client = MlflowClient(tracking_uri=url, registry_uri=url)
            # the registry there: the migrated version and the lifecycle's, each status change, the champion alias on
            # the version in production
            versions = client.search_model_versions(f"name = '{cfg.mlflow.registered_model}'")
            assert len(versions) == 2 and str(version) in {str(v.version) for v in versions}
            champion = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
            in_production = [v for v in versions if v.tags.get(TAG_STATUS) == STATUS_PRODUCTION]
            assert [str(v.version) for v in in_production] == [str(champion.version)], [v.tags for v in versions]
            assert client.get_model_version_by_alias(cfg.mlflow.registered_policy, "champion")
            serving = str(champion.version)
            exp = client.get_experiment_by_name(cfg.mlflow.experiment)
            runs = client.search_runs([exp.experiment_id], f"tags.`{TAG_MONTH}` = '2025-06'")
            assert runs and all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
            assert client.list_artifacts(runs[0].info.run_id)        # served from the server's destination
        finally:
            for k in team:
                if k.startswith("MLFLOW_"): os.environ.pop(k, None)
        # the API follows the champion through the server: it loads the model's artifacts from it and answers
        import httpx

        from serving_fixtures import latest_records, start_api
        api, api_url = start_api(Path(settings), env=team, log=tmp_path / "api.log")
        try:
            assert str(httpx.get(f"{api_url}/ready").json()["model"]["version"]) == serving
            records, _ = latest_records(cfg, 2)
            answer = httpx.post(f"{api_url}/v1/score", json={"features": records[0]})
            assert answer.status_code == 200 and 0 <= answer.json()["churn_probability"] <= 1, answer.text
            assert str(answer.json()["model"]["version"]) == serving
        finally:
            stop(api)        # `mlops-nb serve` is not started in a group of its own
        trail = run_cli("--settings", settings, "audit", "verify")
        assert trail.returncode == 0, trail.stderr
        shown = run_cli("--settings", settings, "audit", "show", "--kind", AUDIT_TRACKING_MIGRATED)
        assert shown.returncode == 0 and "tracking.migrated" in shown.stdout, shown.stdout + shown.stderr
    finally:
        stop_group(server)
