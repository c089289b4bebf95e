"""The papermill runner, through the real CLI: overrides reach the notebooks, records are kept, failures are named."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from conftest import make_project, run_cli
from mlops_nb.runner import PHASES, Phase, phase_section
from mlops_nb.settings import load_settings


def toy_notebook(path: Path, body: str, params: str = "steps: int = 1") -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(f'settings_file: str = ""\nmlflow_run_id: str = ""\nlake_seed: int = 0\n{params}')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


LOGS = ("from mlops_nb.settings import load_settings\nfrom mlops_nb.tracking import phase_run, mlflow\ncfg = "
        "load_settings(settings_file)\nwith phase_run(cfg, 'toy', mlflow_run_id):\n    mlflow.log_metric('product', "
        "steps * lake_seed * cfg.lake.customers)\n")


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


HOLD = ("import sys, time\nfrom mlops_nb.settings import load_settings\nfrom mlops_nb.runner import pipeline_lock\n"
        "with pipeline_lock(load_settings(sys.argv[1], env={}), 'mlops-nb operate (a scheduler)'):\n"
        "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n"
        "print(time.time(), flush=True)\n")


def hold_pipeline_lock(settings: Path, seconds: float) -> subprocess.Popen:
    "Another process (a scheduler's run, say) holding the project's pipeline lock for `seconds`."
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(settings), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_pipeline_run_waits_for_the_first_and_says_who_holds_it(toy_project, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient
    settings, runner = toy_project
    t0 = time.time()
    holder = hold_pipeline_lock(settings, 3)
    res = _run(settings, runner, monkeypatch, "a")
    released = float(holder.stdout.readline()); holder.wait()
    assert res.status == "FINISHED", res.error
    started = MlflowClient().get_run(res.mlflow_run_id).info.start_time / 1000
    assert started >= released - 1 and started - t0 >= 2.5         # nothing of it began while the other ran
    err = capfd.readouterr().err
    assert "waiting for another pipeline run" in err and f"pid {holder.pid}: mlops-nb operate (a scheduler)" in err


def test_a_run_that_would_wait_too_long_is_refused_before_it_starts_anything(tmp_path):
    settings = make_project(tmp_path / "p")
    holder = hold_pipeline_lock(settings, 60)
    try:
        r = run_cli("--settings", str(settings), "run", "lake", env={"MLOPS_COMPUTE__PIPELINE_WAIT_MINUTES": "0"})
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "another pipeline run holds the warehouse" in r.stderr and f"pid {holder.pid}" in r.stderr
        assert not (tmp_path / "p" / "reports" / "runs").exists() and not (tmp_path / "p" / "data" / "lake").exists()
    finally:
        holder.kill(); holder.wait()


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


def lesson_notebook(path: Path) -> None:
    """A phase notebook shaped like ours: a definition, a demonstration of it, then the phase section from `parameters`
    on."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('settings_file: str = ""\nmlflow_run_id: str = ""\nsteps: int = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# The toy phase\nWhy it exists."),
                nbformat.v4.new_code_cell("#| export\ndef double(x: int) -> int: return 2 * x"),
                nbformat.v4.new_markdown_cell("It doubles:"),
                nbformat.v4.new_code_cell("from pathlib import Path\nassert double(2) == "
                                          "4\nPath('demo-ran').write_text('the demonstration ran')"),
                nbformat.v4.new_markdown_cell("## Run the phase"), params,
                nbformat.v4.new_code_cell("from mlops_nb.settings import load_settings\nfrom mlops_nb.tracking import "
                                          "phase_run, mlflow\nwith phase_run(load_settings(settings_file), 'lake', "
                                          "mlflow_run_id): mlflow.log_metric('doubled', double(steps))")]
    nbformat.write(nb, path)


@pytest.mark.parametrize("demos", [False, True])
def test_a_run_executes_definitions_and_the_phase_section_and_demos_only_when_asked(tmp_path, demos):
    from mlflow.tracking import MlflowClient
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    lesson_notebook(nbs / "14_lake.ipynb")
    settings = make_project(tmp_path / "proj", paths_notebooks=str(nbs))
    r = run_cli("--settings", str(settings), "run", "lake", "-p", "steps", "21", *(["--demos"] if demos else []))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (nbs / "demo-ran").exists() == demos
    cfg = load_settings(settings, env={})
    out = next((cfg.paths.reports / "runs").glob("*/14_lake.ipynb"))
    executed = nbformat.read(out, as_version=4)
    sources = [c.source for c in executed.cells]
    assert any("demo-ran" in s for s in sources) == demos, "the record holds what ran"
    definition = next(c for c in executed.cells if c.source.startswith("#| export"))
    assert definition.metadata.get("jupyter", {}).get("source_hidden", False) != demos   # collapsed in a run's record
    if not demos:
        assert executed.cells[0].source.startswith("# The toy phase — a run") and "--demos" in executed.cells[0].source
    run_id = json.loads(next((cfg.paths.reports / "runs").glob("*/manifest.json")).read_text())["phases"][0][
        "mlflow_run_id"
    ]
    assert MlflowClient(cfg.mlflow.tracking_uri).get_run(run_id).data.metrics["doubled"] == 42


def _names(source: str) -> tuple[set[str], set[str]]:
    "(names a cell defines, names it reads) — IPython magics and shell lines left out."
    import ast
    tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))))
    defined, read = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)): defined |= {(a.asname or a.name).split(".")[0] for a in n.names}
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): defined.add(n.name)
        elif isinstance(n, ast.arg): defined.add(n.arg)
        elif isinstance(n, ast.ExceptHandler) and n.name: defined.add(n.name)
        elif isinstance(n, ast.Name): (defined if isinstance(n.ctx, ast.Store) else read).add(n.id)
    return defined, read


@pytest.mark.parametrize("phase", [p.notebook for p in PHASES])
def test_each_phase_section_needs_nothing_from_the_skipped_demonstrations(phase):
    """A name the phase section reads must come from a definition cell or the section itself, not from a demonstration a
    run skips."""
    import builtins
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "nbs" / phase, as_version=4)
    ran = [_names(c.source) for c in phase_section(nb, phase).cells if c.cell_type == "code"]
    kept = set(dir(builtins)) | {"display", "get_ipython"} | set().union(*(d for d, _ in ran))
    read = set().union(*(r for _, r in ran))
    everywhere = set().union(*(_names(c.source)[0] for c in nb.cells if c.cell_type == "code"))
    borrowed = sorted((read - kept) & everywhere)
    assert not borrowed, f"{phase}: the phase section reads {borrowed}, defined only in demonstration cells"
