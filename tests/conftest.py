"""Shared fixtures: a throwaway project folder (its own settings, stores and reports) wired to this repo's notebooks."""
from __future__ import annotations

import fcntl
import inspect
import os
import pickle
import signal
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # each pytest-xdist worker has a core's share: one thread for OpenMP (scikit-learn), BLAS and torch, here and in the
    # processes the tests start. Two per worker oversubscribe the cores, and OpenMP threads that spin waiting for a
    # busy core cost a quarter more CPU on the training tests. Set before anything loads those libraries.
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"): os.environ.setdefault(_var, "1")

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


def exploration_world(root: Path, **values):
    """A small synthetic world whose history is loaded and featured — 2,000 customers x 7 months, 40 % of them in each
    month's exploration campaign (randomised rows to learn and value an offer's effect from): (settings, cfg)."""
    from mlops_nb.features import write_features
    from mlops_nb.lake import generate_lake
    from mlops_nb.settings import load_settings
    from mlops_nb.warehouse import load_warehouse
    settings = make_project(root, **{**dict(lake_customers=2000, lake_months=7, lake_campaign_share=0.4,
                                            gate_n_boot=200), **values})
    cfg = load_settings(settings, env={})
    generate_lake(cfg); load_warehouse(cfg); write_features(cfg)
    return settings, cfg


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
# run one after the other in a background thread, they overlap with the rest of the suite instead of adding to it;
# the tests that use them are moved to the end.
#
# Under pytest-xdist every worker collects every test, so each would start every run. Instead the workers share a
# folder (the session's base temp dir, parent of each worker's own) and the first worker to claim a run starts it;
# it holds an flock on the claim until the pickled result is written, and any other worker that needs the result
# waits on that lock (an event wait, no polling). A claimer that dies releases the lock: the waiter then fails, it
# does not hang.

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
    it. With `shared` (a folder all xdist workers of this session see), a run is started only by the worker that
    claims it first; the others wait for its result file."""

    def __init__(self, factory: pytest.TempPathFactory, shared: Path | None = None):
        self.factory, self.shared, self.futures, self.procs = factory, shared, {}, []
        self.claims: dict[str, int] = {}      # name -> fd holding the flock on its claim (this process runs it)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-background")
        self.closed = False

    def _claim(self, name: str) -> bool:
        """True if this process is the first of the session to claim `name` (then it holds the claim's lock)."""
        assert self.shared is not None
        mine = self.shared / f".{name}.{os.getpid()}.claim"
        fd = os.open(mine, os.O_CREAT | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)        # locked before the claim has its name: nobody sees it unlocked
        try: os.link(mine, self.shared / f"{name}.claim")      # atomic: exactly one process succeeds
        except FileExistsError:
            os.close(fd)
            return False
        finally: os.unlink(mine)
        self.claims[name] = fd
        return True

    def submit(self, name: str) -> None:
        if name in self.futures: return
        if self.shared is None or self._claim(name):
            self.futures[name] = self.pool.submit(self._run_and_publish, name)

    def _run_and_publish(self, name: str) -> tuple[Any, subprocess.CompletedProcess]:
        if name not in self.claims: return self._run(name)
        outcome: tuple[str, Any] = ("error", "the run did not finish")
        try:
            result = self._run(name)
            outcome = ("ok", result)
            return result
        except BaseException:
            outcome = ("error", traceback.format_exc())
            raise
        finally:
            try:
                tmp = self.shared / f".{name}.result.tmp"
                tmp.write_bytes(pickle.dumps(outcome))
                os.replace(tmp, self.shared / f"{name}.result")
            finally: os.close(self.claims.pop(name))  # releases the lock: the waiting workers read the result now

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

    def _wait_for_other_worker(self, name: str) -> tuple[Any, subprocess.CompletedProcess]:
        assert self.shared is not None
        fd = os.open(self.shared / f"{name}.claim", os.O_RDONLY)
        try: fcntl.flock(fd, fcntl.LOCK_SH)   # returns when the claiming worker has published (or died)
        finally: os.close(fd)
        path = self.shared / f"{name}.result"
        if not path.exists():
            raise RuntimeError(f"the xdist worker that ran {name!r} in the background ended without a result")
        status, value = pickle.loads(path.read_bytes())
        if status != "ok": raise RuntimeError(f"the background run {name!r} failed in another worker:\n{value}")
        return value

    def result(self, name: str) -> tuple[Any, subprocess.CompletedProcess]:
        self.submit(name)   # not started at collection (e.g. the fixture was requested some other way): start it now
        if name in self.futures: return self.futures[name].result()
        return self._wait_for_other_worker(name)

    def close(self, wait: bool = False) -> None:
        """End what is still running (an interrupted or failed session), by the process groups this object started.

        `wait`: first let the runs this worker claimed finish, since other xdist workers may still need them."""
        if wait and self.claims:
            for name in list(self.claims):
                try: self.futures[name].exception()
                except BaseException: pass
        self.closed = True
        for proc in self.procs:
            if proc.poll() is None:
                try: os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError: pass
        self.pool.shutdown(wait=True, cancel_futures=True)


def background_result(name: str) -> tuple[Any, subprocess.CompletedProcess]:
    assert _BACKGROUND is not None, "background runs start in pytest_collection_modifyitems"
    return _BACKGROUND.result(name)


def _xdist_shared_dir(config: pytest.Config) -> Path | None:
    """Under pytest-xdist, a folder every worker of this session sees (the controller's base temp dir); else None."""
    if not hasattr(config, "workerinput"): return None
    return config._tmp_path_factory.getbasetemp().parent


# --- scheduling under pytest-xdist (`-n 2 --dist loadgroup`, as run_all.sh runs the tests)
# ------------------------------------------------------------------------
# A test that uses one of our module- or class-scoped fixtures (a built project, a started server, a background run)
# goes to the same worker as the other tests of its file that use them, so the fixture is built once and its tests run
# in file order; one that uses a session- or package-scoped fixture of ours, with every test that uses that fixture; an
# explicit `xdist_group` mark still groups as it does with plain loadgroup; every other test is scheduled on its own.
# The groups go first, biggest first, then the single tests, then the tests of the background runs (xdist's own
# reordering is turned off: it would pull the background runs' groups to the front, where a worker would sit waiting).
#
# Only the workers know each test's fixtures, so they write the groups to the shared folder at collection and the
# controller's scheduler reads them there. (pytest-xdist's own loadgroup renames each grouped test's node id to carry
# its group, which has no effect with pytest 9's node ids: on its own it would spread a file's tests, and rebuild
# their module fixtures, on both workers.)

_TESTS = Path(__file__).resolve().parent
_GROUPS_FILE = "xdist-groups.json"


def _ours(fixturedef) -> bool:
    try: return Path(inspect.getfile(fixturedef.func)).resolve().is_relative_to(_TESTS)
    except (TypeError, OSError): return False


def _group_of(item: pytest.Item) -> str | None:
    """The scheduling group of `item` (see above), or None to schedule it on its own."""
    mark = next(item.iter_markers("xdist_group"), None)
    if mark is not None: return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    info = getattr(item, "_fixtureinfo", None)
    if info is None: return None
    wide, module = [], False
    for name in getattr(item, "fixturenames", ()):
        defs = info.name2fixturedefs.get(name)
        if not defs or not _ours(defs[-1]): continue
        if defs[-1].scope in ("session", "package"): wide.append(name)
        elif defs[-1].scope in ("module", "class"): module = True
    if wide: return "session:" + ",".join(sorted(wide))
    return item.nodeid.split("::", 1)[0] if module else None


def _loadgroup(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "loadgroup", False)) or getattr(config.option, "dist", "no") == "loadgroup"


def pytest_configure(config: pytest.Config) -> None:
    # the workers' collection order is the schedule (see above); only the controller reads this option
    if _loadgroup(config) and hasattr(config.option, "loadscopereorder"): config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `--dist loadgroup`: groups as above, read from the file the workers wrote (a file's tests stay together
    if it is missing)."""
    if config.getvalue("dist") != "loadgroup": return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                try: self.groups = json.loads((config._tmp_path_factory.getbasetemp() / _GROUPS_FILE).read_text())
                except (OSError, ValueError): self.groups = {}
            if not self.groups: return nodeid.split("::", 1)[0]
            return self.groups.get(nodeid) or nodeid

    return SharedFixtureScheduling(config, log)


# after -k / -m deselection (the mark plugin's own hook): a deselected test starts nothing
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Start the background run of every selected test that needs one, and move those tests to the end."""
    global _BACKGROUND
    uses = [next((f for f in getattr(it, "fixturenames", ()) if f in BACKGROUND_PREPARERS), None) for it in items]
    if _loadgroup(config):
        groups = [_group_of(it) for it in items]
        size: dict[str | None, int] = {}
        for g in groups: size[g] = size.get(g, 0) + 1
        order = sorted(range(len(items)), key=lambda i: (uses[i] is not None, groups[i] is None,
                                                         -size[groups[i]] if groups[i] else 0))
        items[:], uses, groups = [items[i] for i in order], [uses[i] for i in order], [groups[i] for i in order]
        if (shared := _xdist_shared_dir(config)) is not None:   # every worker writes the same: last one wins
            import json
            tmp = shared / f".{_GROUPS_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps({it.nodeid: g for it, g in zip(items, groups) if g}))
            os.replace(tmp, shared / _GROUPS_FILE)
    if not any(uses) or config.option.collectonly: return
    _BACKGROUND = BackgroundRuns(config._tmp_path_factory, _xdist_shared_dir(config))
    for name in dict.fromkeys(u for u in uses if u): _BACKGROUND.submit(name)
    items[:] = [it for it, u in zip(items, uses) if not u] + [it for it, u in zip(items, uses) if u]


def pytest_sessionfinish(session, exitstatus) -> None:
    if _BACKGROUND is not None: _BACKGROUND.close(wait=exitstatus != pytest.ExitCode.INTERRUPTED)


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
        time.sleep(0.1)
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
        except ProcessLookupError: return stop(proc, timeout)    # not a group leader after all: the process itself
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
