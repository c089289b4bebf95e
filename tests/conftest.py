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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200, or fail (early if `proc` died)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """End a server this test started: SIGTERM, then SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, served artifacts); yields its http URI."""
    port = free_port()
    root = tmp_path / "mlflow-server"
    root.mkdir()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=90, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
