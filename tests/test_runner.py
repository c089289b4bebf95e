"""The papermill runner, through the real CLI: overrides reach the notebooks, records are kept, failures are named."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from conftest import make_project, run_cli
from mlops_nb.runner import Phase
from mlops_nb.settings import load_settings


def toy_notebook(path: Path, body: str, params: str = "steps: int = 1") -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(f'settings_file: str = ""\nmlflow_run_id: str = ""\nlake_seed: int = 0\n{params}')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


LOGS = ("from mlops_nb.settings import load_settings\nfrom mlops_nb.tracking import phase_run, mlflow\n"
        "cfg = load_settings(settings_file)\n"
        "with phase_run(cfg, 'toy', mlflow_run_id):\n"
        "    mlflow.log_metric('product', steps * lake_seed * cfg.lake.customers)\n")


@pytest.fixture
def toy_project(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    toy_notebook(nbs / "a.ipynb", LOGS)
    toy_notebook(nbs / "b.ipynb", "x = 1\n# the next line fails\nraise ValueError('bad month 2025-13')")
    import mlops_nb.runner as runner
    settings = make_project(tmp_path / "proj", paths_notebooks=str(nbs))
    return settings, runner


def _run(settings, runner, monkeypatch, *names, overrides=None):
    monkeypatch.setattr(runner, "PHASES", (Phase("a", "a.ipynb", "ok"), Phase("b", "b.ipynb", "fails")))
    return runner.run_pipeline(load_settings(settings, env={}), list(names), overrides, phases=runner.PHASES,
                               kernel_name="python3", progress=False)


def test_overrides_reach_the_notebook_and_records_are_kept(toy_project, monkeypatch):
    from mlflow.tracking import MlflowClient
    settings, runner = toy_project
    res = _run(settings, runner, monkeypatch, "a", overrides={"steps": "3", "lake_seed": "7", "lake_customers": "100"})
    assert res.status == "FINISHED", res.error
    out = Path(res.out_dir)
    executed = nbformat.read(out / "a.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "steps = 3" in injected.source and "lake_seed = 7" in injected.source
    assert "\ncustomers = 100\n" in (out / "settings.ini").read_text()     # a setting override is applied run-wide
    client = MlflowClient()
    phase_run = client.get_run(res.phases[0].mlflow_run_id)
    assert phase_run.data.metrics["product"] == 3 * 7 * 100
    assert phase_run.data.tags["mlflow.parentRunId"] == res.mlflow_run_id
    assert [a.path for a in client.list_artifacts(phase_run.info.run_id, "notebook")] == ["notebook/a.ipynb"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "FINISHED" and manifest["phases"][0]["mlflow_run_id"] == phase_run.info.run_id
    assert not ((out / "a.ipynb").stat().st_mode & 0o222), "executed notebooks are read-only"


def test_failure_stops_the_run_and_names_the_cell(toy_project, monkeypatch):
    from mlflow.tracking import MlflowClient
    settings, runner = toy_project
    res = _run(settings, runner, monkeypatch)
    assert [p.status for p in res.phases] == ["FINISHED", "FAILED"]
    assert "phase 'b' failed in cell [3] of b.ipynb (`x = 1`): ValueError: bad month 2025-13" == res.error
    failed = MlflowClient().get_run(res.phases[1].mlflow_run_id)
    assert failed.info.status == "FAILED" and "bad month" in failed.data.tags["mlops_nb.error"]
    assert MlflowClient().get_run(res.mlflow_run_id).info.status == "FAILED"
    assert (Path(res.out_dir) / "b.ipynb").exists(), "the failed notebook is kept as a record"


def test_unknown_override_is_refused_before_anything_runs(toy_project, monkeypatch):
    settings, runner = toy_project
    from mlops_nb.settings import SettingsError
    with pytest.raises(SettingsError, match="unknown parameter 'stepz'"):
        _run(settings, runner, monkeypatch, overrides={"stepz": "3"})
    with pytest.raises(SettingsError, match="override lake_customers: expected a whole number"):
        _run(settings, runner, monkeypatch, overrides={"lake_customers": "many"})
    assert not (settings.parent / "reports" / "runs").exists(), "a refused run leaves no record folder behind"


def test_cli_run_exit_codes(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    settings = make_project(tmp_path / "proj", paths_notebooks=str(nbs))
    r = run_cli("--settings", str(settings), "run", "lake")
    assert r.returncode == 2 and "phase notebook not found" in r.stderr and "Traceback" not in r.stderr
