"""Shared fixtures: a throwaway project folder (its own settings, stores and reports) wired to this repo's notebooks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

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
    path.write_text(render_settings({**SANDBOX_DEFAULTS, "paths_notebooks": str(REPO / "nbs"), **values}),
                    encoding="utf-8")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder with small settings; returns its settings.ini path."""
    return make_project(tmp_path / "project")


def _cli_env(extra: dict | None = None) -> dict:
    """This process's environment without MLOPS_* overrides (a test's settings file decides), plus `extra`."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    e.update(extra or {})
    return e


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed `mlops-nb` command and capture its output."""
    return subprocess.run([str(BIN / "mlops-nb"), *args], cwd=cwd or REPO, env=_cli_env(env), capture_output=True,
                          text=True,
                          timeout=timeout)


# --- long end-to-end runs in the background
# ----------------------------------------------------------------------------
# The two end-to-end fixtures each run the whole lifecycle (~2.5 min, one core busy). Started when collection ends and
# run one after the other in a background thread, they overlap with the rest of the suite (which, on average, keeps
# one of this machine's two cores busy) instead of adding to it; the tests that use them are moved to the end.

BACKGROUND_PREPARERS: dict[str, Callable[[Path], tuple[list[str], Any]]] = {}
_BACKGROUND: "BackgroundRuns | None" = None


def in_background(fixture_name: str):
    """Register `prepare(root) -> (mlops-nb arguments, extras)` as the background run behind fixture `fixture_name`.

    The fixture then returns `(extras, CompletedProcess)` from `background_result(fixture_name)`."""
    def register(prepare: Callable[[Path], tuple[list[str], Any]]):
        BACKGROUND_PREPARERS[fixture_name] = prepare
        return prepare
    return register


class BackgroundRuns:
    """`mlops-nb` runs executed one at a time in a worker thread; each result is awaited by the fixture that needs
    it."""

    def __init__(self, factory: pytest.TempPathFactory):
        self.factory, self.futures, self.procs = factory, {}, []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-background")
        self.closed = False

    def submit(self, name: str) -> None:
        if name not in self.futures:
            self.futures[name] = self.pool.submit(self._run, name)

    def _run(self, name: str) -> tuple[Any, subprocess.CompletedProcess]:
        args, extras = BACKGROUND_PREPARERS[name](self.factory.mktemp(name))
        if self.closed: raise RuntimeError("the test session ended before this run started")
        proc = subprocess.Popen([str(BIN / "mlops-nb"), *args], cwd=REPO, env=_cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.procs.append(proc)
        try: out, err = proc.communicate(timeout=1800)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return extras, subprocess.CompletedProcess(proc.args, -9, out, err + "\n[killed after 1800 s]")
        return extras, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def result(self, name: str) -> tuple[Any, subprocess.CompletedProcess]:
        self.submit(name)   # not started at collection (e.g. the fixture was requested some other way): start it now
        return self.futures[name].result()

    def close(self) -> None:
        """End what is still running (an interrupted or failed session), by the process groups this object started."""
        self.closed = True
        for proc in self.procs:
            if proc.poll() is None:
                try: os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError: pass
        self.pool.shutdown(wait=True, cancel_futures=True)


def background_result(name: str) -> tuple[Any, subprocess.CompletedProcess]:
    assert _BACKGROUND is not None, "background runs start in pytest_collection_modifyitems"
    return _BACKGROUND.result(name)


# after -k / -m deselection (the mark plugin's own hook): a deselected test starts nothing
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Start the background run of every selected test that needs one, and move those tests to the end."""
    global _BACKGROUND
    uses = [next((f for f in getattr(it, "fixturenames", ()) if f in BACKGROUND_PREPARERS), None) for it in items]
    if not any(uses) or config.option.collectonly: return
    _BACKGROUND = BackgroundRuns(config._tmp_path_factory)
    for name in dict.fromkeys(u for u in uses if u): _BACKGROUND.submit(name)
    items[:] = [it for it, u in zip(items, uses) if not u] + [it for it, u in zip(items, uses) if u]


def pytest_sessionfinish(session, exitstatus) -> None:
    if _BACKGROUND is not None: _BACKGROUND.close()


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


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started in its own session (mlflow models serve forks its workers): SIGTERM its group, then
    SIGKILL."""
    if proc.poll() is None:
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: return
        try: proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def launch(cmd: Sequence[str], ready: str, *, cwd: Path, env: dict, log: Path | None = None, timeout: float = 60,
           own_group: bool = False) -> subprocess.Popen:
    """Start a server this test owns and wait until `ready` answers 200 (stopping it again if it never does).

    Its stdout and stderr go to `log` (or nowhere: never to an unread pipe, which blocks a chatty server);
    `own_group` puts it in a session of its own, for servers that fork workers (stop it with `stop_group`)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=own_group)
    finally:
        if log: out.close()   # the child holds its own copy
    try: wait_http(ready, timeout=timeout, proc=proc)
    except Exception:
        (stop_group if own_group else stop)(proc)
        raise
    return proc


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, served artifacts); yields its http URI."""
    url = f"http://127.0.0.1:{(port := free_port())}"
    root = tmp_path / "mlflow-server"
    root.mkdir()
    proc = launch(
        [
            BIN / "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            root / "artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--workers",
            "1",
        ],
        f"{url}/health",
        cwd=root,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        log=root / "server.log",
        timeout=90,
    )
    try:
        yield url
    finally:
        stop(proc)
