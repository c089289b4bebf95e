"""Shared fixtures: a throwaway project folder (its own settings, stores and reports) wired to this repo's notebooks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_project(root: Path, **values) -> Path:
    """Write a small settings.ini under `root` whose notebooks are this repo's; return the settings path."""
    from mlops_nb.settings import SANDBOX_DEFAULTS, render_settings

    root.mkdir(parents=True, exist_ok=True)
    path = root / "settings.ini"
    path.write_text(render_settings({**SANDBOX_DEFAULTS, "paths_notebooks": str(REPO / "nbs"), **values}), encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder with small settings; returns its settings.ini path."""
    return make_project(tmp_path / "project")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed `mlops-nb` command and capture its output."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    e.update(env or {})
    return subprocess.run([str(BIN / "mlops-nb"), *args], cwd=cwd or REPO, env=e, capture_output=True, text=True, timeout=timeout)
