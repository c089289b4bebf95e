"""Benchmark the scoring API against stock `mlflow models serve` (not a test; prints a table).

    python tests/bench/bench_serve.py                       # build a project under /tmp, 1 and 2 workers
    python tests/bench/bench_serve.py --root /tmp/bench-serve --seconds 15 --json results.json
    python tests/bench/bench_serve.py --family blend        # the champion is a blend (trees + spline logistic
    regression)

One run builds (or reuses, with --root) a project whose champion is a HistGradientBoosting pipeline (with --family
blend:
its blend with the spline logistic regression) on the demo feature table (16 raw features), then, for 1 and then 2
worker processes, starts our API (`mlops-nb serve`, prediction log on) and
the stock server (`mlflow models serve --env-manager local`) on 127.0.0.1 and drives both with the same load generator:

* sequential single-row requests (one connection): p50 / p99 latency;
* concurrency 32 (keep-alive connections) for --seconds: requests/s and errors;

then batch scoring in this process: rows/s of our fast scorer against the pipeline's own `predict_proba` (scikit-learn's
default threads, and one thread), and rows/s through the API's batch endpoint. Run it on a quiet machine (`uptime`):
client and servers share the same cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import stop  # noqa: E402
from serving_fixtures import (http_request, latest_records, mlflow_requests, run_load, score_requests,
                              start_api,  # noqa: E402
                              start_mlflow_serve, stop_group)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def project(root: Path, customers: int, months: int, family: str = "hgb"):
    from mlops_nb.registry import version_with_status
    from mlops_nb.settings import load_settings
    from mlops_nb.settings import SettingsError
    path = root / "settings.ini"
    if path.exists():
        try:
            cfg = load_settings(path, env={})
            v = version_with_status(cfg, "production")
            if v and (root / f"family-{family}").exists(): return path, cfg, v.version
        except SettingsError as e:
            print(f"not reusing {root}: {str(e).splitlines()[0]}")
        import shutil
        shutil.rmtree(root)
    from conftest import make_project
    from mlops_nb.privacy import load_key
    from mlops_nb.sandbox import sandbox_champion
    path = make_project(root, privacy_key_file=str(root / "secrets" / "pseudonym.key"))
    cfg = load_settings(path, env={})
    load_key(cfg)
    t0 = time.perf_counter()
    v = sandbox_champion(cfg, family, threshold=0.2, n_customers=customers, n_months=months)
    (root / f"family-{family}").touch()
    print(f"built the champion ({family}, version {v.version}) in {time.perf_counter() - t0:.0f} s")
    return path, cfg, v.version


def drive(url: str, seq_requests, conc_requests, n_seq: int, seconds: float, warmup: int = 300) -> dict:
    run_load(url, seq_requests, 1, total=warmup)
    seq = run_load(url, seq_requests, 1, total=n_seq)
    run_load(url, conc_requests, 32, total=warmup)
    conc = run_load(url, conc_requests, 32, seconds=seconds)
    return {"seq_p50_ms": seq.pct(50), "seq_p99_ms": seq.pct(99), "seq_rps": seq.rps, "seq_errors": seq.errors,
            "c32_rps": conc.rps, "c32_errors": conc.errors, "c32_p50_ms": conc.pct(50), "c32_p99_ms": conc.pct(99),
            "c32_requests": conc.ok}


def batch_figures(cfg, version: str, url_factory, rows: int) -> dict:
    import pandas as pd
    from threadpoolctl import threadpool_limits
    from mlops_nb.contracts import load_feature_table
    from mlops_nb.served import load_served_model
    from mlops_nb.encoder import model_input
    m = load_served_model(cfg, version)
    df, spec = load_feature_table(cfg)
    X = model_input(df, spec)
    X = pd.concat([X] * int(np.ceil(rows / len(X))), ignore_index=True).head(rows)
    pipe = m.churn.pipeline

    def best(f, n=5):
        f(); ts = []
        for _ in range(n):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        return rows / min(ts)
    # a blend: its trees member
    t = getattr(m.scorer, "trees", None) or next((p.trees for p in getattr(m.scorer, "parts", ()) if p.trees), None)
    out = {"rows": rows, "trees": int(t.leaf_value.shape[0]) if t else None,
           "splits": int(t.threshold.size) if t else None,
           "sklearn_default_threads": best(lambda: pipe.predict_proba(X))}
    with threadpool_limits(1):
        out["sklearn_1_thread"] = best(lambda: pipe.predict_proba(X))
        out["ours_1_thread"] = best(lambda: m.scorer.probabilities(m.scorer.encode_frame(X)))
        ours, ref = m.scorer.probabilities(m.scorer.encode_frame(X)), m.churn.predict(None,
                                                                                      X).churn_probability.to_numpy()
        # trees alone: the same bits; a folded scaler: rounding
        exact = getattr(m.scorer, "trees", None) is not None
        assert np.array_equal(ours, ref) if exact else np.allclose(ours, ref, rtol=0, atol=1e-12)
    cores = os.cpu_count() or 1
    # what score_month does
    out["ours_all_cores"] = best(lambda: m.scorer.probabilities(m.scorer.encode_frame(X), threads=cores))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("hgb", "blend"), default="hgb",
                    help="the champion: boosted trees, or their blend with the spline logistic regression")
    ap.add_argument("--root", type=Path,
                    help="project folder (reused if it has a champion of --family); default "
                         "/tmp/mlops-nb-bench-serve-<family>")
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each concurrency-32 run")
    ap.add_argument("--sequential", type=int, default=2000,
                    help="sequential requests to our API (the stock server gets a quarter)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-rows", type=int, default=50_000)
    ap.add_argument("--micro-batch", action="store_true",
                    help="also measure our API (1 worker) with micro-batching on, and with the trees scored by "
                    "scikit-learn with and without it")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    a = ap.parse_args()
    a.root = a.root or Path(f"/tmp/mlops-nb-bench-serve-{a.family}")
    print(f"load average at start: {load_avg()}")
    settings, cfg, version = project(a.root, a.customers, a.months, a.family)
    records, keys = latest_records(cfg)
    records, keys = records[:1000], [str(k) for k in keys[:1000]]
    features = list(records[0])
    ours_req, stock_req = score_requests(records, keys), mlflow_requests(records, features)
    logs = a.root / "bench-logs"
    logs.mkdir(exist_ok=True)
    results: dict = {"load_avg_start": load_avg(), "features": len(features), "servers": {}}
    for w in a.workers:
        variants = [("ours", {})]
        # the design choice, measured: compiled trees vs scikit-learn, with and without micro-batching
        if a.micro_batch and w == 1:
            variants += [("ours (micro_batch=on)", {"MLOPS_API__MICRO_BATCH": "on"}),
                         ("ours (sklearn scorer)", {"MLOPS_NB_SCORER": "sklearn", "MLOPS_API__MICRO_BATCH": "off"}),
                         ("ours (sklearn scorer + micro_batch)",
                          {"MLOPS_NB_SCORER": "sklearn", "MLOPS_API__MICRO_BATCH": "on"})]
        for name, env in variants:
            proc, url = start_api(settings, workers=w, env=env, log=logs / f"api-{w}-{len(results['servers'])}.log")
            try:
                r = drive(url, ours_req, ours_req, a.sequential, a.seconds)
            finally:
                stop(proc)
            results["servers"][f"{name}, {w} worker(s)"] = r | {"load_avg": load_avg()}
            print(f"{name:36s} workers={w}: seq p50 {r['seq_p50_ms']:.2f} ms p99 {r['seq_p99_ms']:.2f} ms | c=32 "
                  f"{r['c32_rps']:,.0f} req/s errors {r['c32_errors']} (load {load_avg()})")
        proc, url = start_mlflow_serve(cfg, f"models:/{cfg.mlflow.registered_model}/{version}", workers=w,
                                       log=logs / f"mlflow-{w}.log")
        try:
            r = drive(url, stock_req, stock_req, max(200, a.sequential // 4), a.seconds, warmup=50)
        finally:
            stop_group(proc)
        results["servers"][f"mlflow models serve, {w} worker(s)"] = r | {"load_avg": load_avg()}
        print(f"{'mlflow models serve':36s} workers={w}: seq p50 {r['seq_p50_ms']:.2f} ms p99 {r['seq_p99_ms']:.2f} "
              f"ms | c=32 {r['c32_rps']:,.0f} req/s errors {r['c32_errors']} (load {load_avg()})")
    # batch: in process, and through the API's batch endpoint
    b = batch_figures(cfg, version, None, a.batch_rows)
    proc, url = start_api(settings, workers=1, log=logs / "api-batch.log")
    try:
        body = http_request("/v1/score/batch",
                            {"records": [{"customer_id": k, "features": r} for k, r in zip(keys, records)]})
        run_load(url, [body], 1, total=3)
        res = run_load(url, [body], 1, total=30)
        b["api_batch_endpoint_1_worker"] = res.ok * len(records) / res.seconds
    finally:
        stop(proc)
    results["batch_rows_per_s"] = b
    results["load_avg_end"] = load_avg()

    # ---- the table
    # -----------------------------------------------------------------------------------------------------
    S = results["servers"]
    print("\n| server | workers | seq p50 ms | seq p99 ms | c=32 req/s | c=32 errors | c=32 p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k, r in S.items():
        name, w = k.rsplit(", ", 1)
        print(f"| {name} | {w.split()[0]} | {r['seq_p50_ms']:.2f} | {r['seq_p99_ms']:.2f} | {r['c32_rps']:,.0f} | "
              f"{r['c32_errors']} | {r['c32_p99_ms']:.1f} |")
    print("\n| workers | throughput ours / stock (c=32) | p50 stock / ours | p99 stock / ours | goal |")
    print("| --- | --- | --- | --- | --- |")
    for w in a.workers:
        o, s = S[f"ours, {w} worker(s)"], S[f"mlflow models serve, {w} worker(s)"]
        met = o['c32_rps'] >= 10 * s['c32_rps'] and o['c32_errors'] == 0 and o['seq_p99_ms'] <= 5
        print(f"| {w} | {o['c32_rps'] / s['c32_rps']:.1f}x | {s['seq_p50_ms'] / o['seq_p50_ms']:.1f}x | "
              f"{s['seq_p99_ms'] / o['seq_p99_ms']:.1f}x | >= 10x, 0 errors, p99 <= 5 ms: "
              f"{'met' if met else 'MISSED'} |")
    print(f"\nmodel: {results['features']} raw features, {b['trees']} trees, {b['splits']} splits")
    print(f"batch scoring, {b['rows']:,} rows, rows/s (goal: ours >= 2x sklearn):")
    print(f"  1 thread:        ours {b['ours_1_thread']:,.0f} vs sklearn pipeline predict_proba "
          f"{b['sklearn_1_thread']:,.0f} -> {b['ours_1_thread'] / b['sklearn_1_thread']:.1f}x")
    print(f"  all cores:       ours {b['ours_all_cores']:,.0f} vs sklearn (default threads) "
          f"{b['sklearn_default_threads']:,.0f} -> {b['ours_all_cores'] / b['sklearn_default_threads']:.1f}x")
    print("  through the API: batch endpoint, 1000-row requests incl. JSON, validation and logging, 1 worker: "
          f"{b['api_batch_endpoint_1_worker']:,.0f}")
    print(f"load average at end: {results['load_avg_end']}")
    if a.json: a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
