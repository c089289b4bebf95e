"""Shared by the serving tests and the benchmark: a project with a registered champion, servers started as subprocesses
(ours through `mlops-nb serve`, MLflow's through `mlflow models serve`) and a small asyncio HTTP/1.1 load generator.

The load generator speaks raw HTTP/1.1 over keep-alive connections (pre-encoded requests, Content-Length or chunked
responses): a generic client such as httpx costs ~10x more CPU per request, and on a two-core machine the client's
CPU is taken from the servers it measures. Every loop is bounded by a request count or a deadline.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import BIN, free_port, launch, make_project  # noqa: E402
# re-exported: the serving tests and benchmark stop mlflow serve with it
from conftest import stop_group as stop_group  # noqa: E402

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# ---- a project with models ------------------------------------------------------------------------------------------
@dataclass
class ServingProject:
    settings: Path
    cfg: Any
    v1: str                      # the champion
    # registered, not promoted: another threshold and a calibrator (different probabilities)
    v2: str
    records: list[dict] = field(default_factory=list)   # JSON feature records of the latest month
    keys: list[str] = field(default_factory=list)       # their customer keys (stand-ins for company customer ids)


def build_project(root: Path, n_customers: int = 2000, n_months: int = 6, hgb_params: dict | None = None,
                  **settings: Any) -> ServingProject:
    """A project folder with a pseudonym key, a demo feature table, champion v1 (hgb) and a second version v2."""
    from mlops_nb.privacy import load_key
    from mlops_nb.sandbox import sandbox_champion
    from mlops_nb.settings import load_settings
    path = make_project(root, privacy_key_file=str(root / "secrets" / "pseudonym.key"), **settings)
    cfg = load_settings(path, env={})
    load_key(cfg)
    v1 = sandbox_champion(cfg, params=hgb_params, threshold=0.2, n_customers=n_customers, n_months=n_months)
    v2 = sandbox_champion(cfg, params=hgb_params, threshold=0.35, calibrated=True, promote=False)
    records, keys = latest_records(cfg)
    return ServingProject(path, cfg, v1.version, v2.version, records, keys)


def latest_records(cfg, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """The latest month of the feature table as JSON feature records (missing → None), with their customer keys."""
    from mlops_nb.contracts import load_feature_table
    df, spec = load_feature_table(cfg)
    df = df[df[spec.time_column] == df[spec.time_column].max()]
    if limit: df = df.head(limit)
    out = []
    for row in df[spec.features].astype(object).itertuples(index=False):
        out.append(
            {
                f: (
                    None
                    if v is None or v is getattr(__import__("pandas"), "NA") or (isinstance(v, float) and v != v)
                    else (int(v) if isinstance(v, (np.integer,)) else float(v) if isinstance(v, np.floating) else v)
                )
                for f, v in zip(spec.features, row)
            }
        )
    return out, df[spec.id_column].tolist()


# ---- servers --------------------------------------------------------------------------------------------------------
def start_api(settings: Path, port: int | None = None, workers: int = 1, env: dict | None = None,
              args: Sequence[str] = (),
              log: Path | None = None, timeout: float = 180, ready: str = "/ready") -> tuple[subprocess.Popen, str]:
    """`mlops-nb serve` on 127.0.0.1 as a subprocess, waited for until `ready` answers 200; returns (process, base
    URL)."""
    url = f"http://127.0.0.1:{(port := port or free_port())}"
    e = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    e.update(env or {})
    proc = launch(
        [
            BIN / "mlops-nb",
            "--settings",
            settings,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--workers",
            workers,
            *args,
        ],
        f"{url}{ready}",
        cwd=settings.parent,
        env=e,
        log=log,
        timeout=timeout,
    )
    return proc, url


def start_mlflow_serve(cfg, model_uri: str, port: int | None = None, workers: int = 1, log: Path | None = None,
                       timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """Stock `mlflow models serve --env-manager local` on 127.0.0.1; returns (process, base URL) once /ping answers."""
    url = f"http://127.0.0.1:{(port := port or free_port())}"
    e = {**os.environ, "MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri, "MLFLOW_REGISTRY_URI": cfg.mlflow.tracking_uri,
         "MLFLOW_DISABLE_TELEMETRY": "true",
         # stock serve starts `uvicorn` by name: the venv's, even when it is not activated
         "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    proc = launch(
        [
            BIN / "mlflow",
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-w",
            workers,
        ],
        f"{url}/ping",
        cwd=cfg.root,
        env=e,
        log=log,
        timeout=timeout,
        own_group=True,
    )
    return proc, url


# ---- requests
# ---------------------------------------------------------------------------------------------------------
def http_request(path: str, body: Any, host: str = "127.0.0.1", headers: dict | None = None) -> bytes:
    """A pre-encoded HTTP/1.1 POST with a JSON body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Host": host, "Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
    return (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + data


def score_requests(records: Sequence[dict], keys: Sequence[str] | None = None) -> list[bytes]:
    """One `POST /v1/score` request per record."""
    return [
        http_request("/v1/score", {"customer_id": (str(keys[i]) if keys else None), "features": r})
        for i, r in enumerate(records)
    ]


def mlflow_requests(records: Sequence[dict], features: Sequence[str]) -> list[bytes]:
    """One `POST /invocations` request (dataframe_split, one row) per record."""
    return [
        http_request(
            "/invocations", {"dataframe_split": {"columns": list(features), "data": [[r[f] for f in features]]}}
        )
        for r in records
    ]


# ---- the load generator ---------------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies: list[float]                       # seconds, per completed request
    statuses: dict[int, int]
    bodies: list[bytes] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float: return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies else float("nan")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = None, False, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length": length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower(): chunked = True
        elif k == b"connection" and v.strip().lower() == b"close": close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), close
    return status, (await reader.readexactly(length) if length else b""), close


async def _load(host: str, port: int, requests: Sequence[bytes], concurrency: int, total: int | None,
                seconds: float | None,
                collect: bool) -> LoadResult:
    deadline = time.perf_counter() + (seconds if seconds is not None else 3600)
    limit = total if total is not None else 10**9
    state = {"next": 0}
    res = LoadResult(0, 0, 0, 0.0, [], {})

    async def conn() -> None:
        reader = writer = None
        while True:
            if time.perf_counter() >= deadline: break
            i = state["next"]
            if i >= limit: break
            state["next"] = i + 1
            req = requests[i % len(requests)]
            try:
                if writer is None: reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                writer.write(req)
                status, body, close = await asyncio.wait_for(_read_response(reader), timeout=60)
                res.latencies.append(time.perf_counter() - t0)
                res.statuses[status] = res.statuses.get(status, 0) + 1
                if status == 200: res.ok += 1
                else: res.errors += 1
                if collect: res.bodies.append(body)
                if close: writer.close(); writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as e:
                res.errors += 1
                res.error_kinds[type(e).__name__] = res.error_kinds.get(type(e).__name__, 0) + 1
                if writer is not None: writer.close()
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None: writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(concurrency)))
    res.seconds, res.sent = time.perf_counter() - t0, state["next"]
    return res


def run_load(url: str, requests: Sequence[bytes], concurrency: int = 1, total: int | None = None,
             seconds: float | None = None,
             collect: bool = False) -> LoadResult:
    """Send `requests` (cycled) over `concurrency` keep-alive connections until `total` are sent or `seconds` pass."""
    if total is None and seconds is None: raise ValueError("bound the load: give total or seconds")
    host, port = url.split("//")[1].split(":")
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_load(host, int(port), requests, concurrency, total, seconds, collect))
