"""The lake phase end to end through the real entry points: `mlops-nb run` (papermill) and `mlflow run` (MLflow
Projects)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat

from conftest import BIN, REPO, make_project, run_cli


def _client(settings: Path):
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlops_nb.settings import load_settings

    mlflow.set_tracking_uri(load_settings(settings, env={}).mlflow.tracking_uri)
    return MlflowClient()


def _phase_runs(client, phase: str):
    exp = client.get_experiment_by_name("churn")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`mlops_nb.phase` = '{phase}'",
                              order_by=["attributes.start_time DESC"])


def test_run_lake_with_overrides_produces_the_expected_records(tmp_path):
    settings = make_project(tmp_path / "proj")
    r = run_cli("--settings", str(settings), "run", "lake",
                "-p", "lake_customers", "321", "-p", "lake_scenario", "stable", "-p", "lake_seed", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    # a scheduler's log (stderr is not a terminal): no progress bars, no kernel transport warnings
    assert "Executing:" not in r.stderr and "without encryption" not in r.stderr + r.stdout, r.stderr[-2000:]
    assert "KeyboardInterrupt" not in r.stderr, r.stderr[-2000:]   # no SIGINT at the kernel's shutdown
    run_dir = next((tmp_path / "proj/reports/runs").iterdir())
    # the executed notebook is an immutable record with the injected values
    nb_path = run_dir / "14_lake.ipynb"
    assert not (nb_path.stat().st_mode & 0o222)
    injected = next(
        c for c in nbformat.read(nb_path, as_version=4).cells if "injected-parameters" in c.metadata.get("tags", [])
    )
    for line in ("lake_customers = 321", 'lake_scenario = "stable"', "lake_seed = 5",
                 f'settings_file = "{run_dir / "settings.ini"}"'):
        assert line in injected.source
    # the lake really has the overridden size and seed
    manifest = json.loads((tmp_path / "proj/data/lake/_manifest.json").read_text())
    assert (
        manifest["lake"]["customers"] == 321
        and manifest["lake"]["seed"] == 5
        and manifest["lake"]["scenario"] == "stable"
    )
    # MLflow: the phase run holds the params, the manifest, the executed notebook, and is nested in the pipeline run
    client = _client(settings)
    run = _phase_runs(client, "lake")[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["lake_customers"] == "321" and run.data.params["lake_seed"] == "5"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"lake", "notebook", "settings.json"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notebook")] == ["notebook/14_lake.ipynb"]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["mlops_nb.pipeline_run_id"] == run_dir.name and parent.info.status == "FINISHED"
    record = json.loads((run_dir / "manifest.json").read_text())
    assert record["status"] == "FINISHED" and record["phases"][0]["mlflow_run_id"] == run.info.run_id
    assert "rows_total_usage" in run.data.metrics


def test_mlflow_projects_entry_point_reproduces_the_phase(tmp_path):
    settings = make_project(tmp_path / "proj")
    from mlops_nb.settings import load_settings
    uri = load_settings(settings, env={}).mlflow.tracking_uri
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_EXPERIMENT_", "MLFLOW_RUN_ID"))}
    env.update(MLOPS_SETTINGS=str(settings), MLFLOW_TRACKING_URI=uri, PATH=f"{BIN}:{env.get('PATH', '')}")
    r = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            str(REPO),
            "-e",
            "lake",
            "-P",
            "lake_customers=222",
            "-P",
            "lake_months=4",
            "--env-manager",
            "local",
            "--experiment-name",
            "churn",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    client = _client(settings)
    outer = client.search_runs([client.get_experiment_by_name("churn").experiment_id],
                               filter_string="tags.`mlops_nb.pipeline_run_id` != ''")
    assert len(outer) == 1, "the MLflow Projects run is the pipeline's parent run"
    lake_run = _phase_runs(client, "lake")[0]
    assert lake_run.data.tags["mlflow.parentRunId"] == outer[0].info.run_id
    assert lake_run.data.params["lake_customers"] == "222" and lake_run.data.params["lake_months"] == "4"


def test_failing_phase_exits_nonzero_and_names_the_cell(tmp_path):
    settings = make_project(tmp_path / "proj")
    (tmp_path / "proj/data").mkdir(parents=True)
    (tmp_path / "proj/data/lake").write_text("a file where the lake folder should be")
    r = run_cli("--settings", str(settings), "run", "lake", "--no-progress")
    assert r.returncode == 1
    assert "phase 'lake' failed in cell [" in r.stderr and "14_lake.ipynb" in r.stderr and "Traceback" not in r.stderr
    assert "[paths] lake:" in r.stderr and "exists and is not a folder" in r.stderr
    assert (tmp_path / "proj/data/lake").read_text().startswith("a file"), "the user's file is left alone"
