"""Benchmark of the mart on DuckDB against the same statements on Spark SQL (a script, not collected by pytest).

    python tests/bench/bench_mart_engines.py                         # 200,000 and 1,000,000 customers x 12 months
    python tests/bench/bench_mart_engines.py --customers 200000      # one size
    python tests/bench/bench_mart_engines.py --spark-memory 6g       # the Spark driver's heap (default 4g)

For each size: the lake (drift scenario, as bench_etl.py; reused from /tmp/bench-etl-<customers> when it is there) is
loaded once into a warehouse by our ETL (DuckDB). Then, on that same staging, each engine rebuilds `mart.customer_month`
for every month in its own child process, inside a transaction that is rolled back (the warehouse is left as it was):
DuckDB with `mart.build_mart` (the incremental state table), Spark with `mart.build_mart_on_spark` (a local session,
staging handed over as Parquet, the rows landed back into the same DuckDB table). Printed side by side: wall time, CPU
time and peak memory of each child's whole process tree (Spark's Java process included; sampled every 0.1 s), rows
and the mart's content hash — which must be identical. Needs pyspark (requirements-spark.lock) and Java 17+.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_etl import ensure_lake, host_speed  # noqa: E402

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import duckdb
from mlops_nb.mart import build_mart, build_mart_on_spark
engine, warehouse, threads, memory = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
con = duckdb.connect(warehouse)
con.execute(f"SET threads = {threads}")
con.execute("SET memory_limit = '1536MB'")
con.execute("SET preserve_insertion_order = false")
months = [m for (m,) in con.execute("SELECT DISTINCT month FROM mart.customer_month ORDER BY 1").fetchall()]
con.execute("BEGIN TRANSACTION")
t = time.perf_counter()
if engine == "duckdb": n = build_mart(con, months)
else:
    with tempfile.TemporaryDirectory(prefix="bench-spark-", dir=str(Path(warehouse).parent)) as tmp:
        n = build_mart_on_spark(con, months, Path(tmp), threads, memory)
wall = time.perf_counter() - t
parts = con.execute("SELECT sum(rows), sum(hash_sum) FROM meta.content_parts WHERE table_name = "
                    "'mart.customer_month'").fetchone()
content = con.execute("SELECT count(*), sum(hash(t)) FROM mart.customer_month t").fetchone()
con.execute("ROLLBACK")
print(json.dumps(dict(wall=wall, rows=n, months=len(months), content=[int(content[0]), int(content[1])],
                      parts=[int(parts[0]), int(parts[1])])))
"""


def sample_tree(pid: int, cpu: dict[int, float]) -> int:
    "The resident memory of process `pid` and its descendants now; each one's CPU seconds so far into `cpu`."
    import psutil
    try: procs = [p := psutil.Process(pid), *p.children(recursive=True)]
    except psutil.NoSuchProcess: return 0
    rss = 0
    for q in procs:
        try:
            rss += q.memory_info().rss
            t = q.cpu_times(); cpu[q.pid] = t.user + t.system   # (children_*: the JVM, counted as itself)
        except psutil.NoSuchProcess: pass
    return rss


def run_engine(engine: str, warehouse: Path, threads: int, memory: str) -> dict:
    "Rebuild the mart with `engine` in a child process; its result with wall, CPU and peak tree RSS."
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", CHILD, engine, str(warehouse), str(threads), memory],
                         stdout=subprocess.PIPE, text=True)
    peak, cpu, done = [0], {}, threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], sample_tree(p.pid, cpu)); time.sleep(0.1)
    th = threading.Thread(target=sample, daemon=True); th.start()
    out = p.stdout.read()
    p.wait(); done.set(); th.join()
    if p.returncode != 0: raise SystemExit(f"the {engine} child failed (status {p.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall_total=time.perf_counter() - t, cpu=sum(cpu.values()), peak_mb=peak[0] / 2**20)
    return res


def bench(customers: int, months: int, threads: int, memory: str) -> None:
    from mlops_nb.warehouse import load_warehouse
    cfg = ensure_lake(Path(f"/tmp/bench-etl-{customers}"), customers, months)
    t = time.perf_counter()
    res = load_warehouse(cfg)
    print(f"[2] the warehouse loaded by our ETL (DuckDB): {time.perf_counter() - t:.0f} s, "
          f"{res.tables['mart.customer_month']:,} mart rows ({'loaded' if res.loaded else 'unchanged'})")
    out = {}
    for engine in ("duckdb", "spark"):
        print(f"[3] {engine}: the mart's {months} months rebuilt from staging (child process; host speed probe "
              f"{host_speed():.2f} s; load average {os.getloadavg()[0]:.1f})", flush=True)
        out[engine] = r = run_engine(engine, cfg.paths.warehouse, threads, memory)
        print(f"    wall {r['wall']:.1f} s (process {r['wall_total']:.1f} s), CPU {r['cpu']:.1f} s, peak memory "
              f"{r['peak_mb']:,.0f} MB, {r['rows']:,} rows")
    d, s = out["duckdb"], out["spark"]
    same = d["content"] == s["content"] and d["parts"] == s["parts"]
    print(f"[4] {customers:,} customers x {months} months, side by side")
    print(f"    {'':26s}{'DuckDB':>12s}{'Spark SQL':>12s}")
    print(f"    {'mart build, wall (s)':26s}{d['wall']:12.1f}{s['wall']:12.1f}")
    print(f"    {'process, wall (s)':26s}{d['wall_total']:12.1f}{s['wall_total']:12.1f}")
    print(f"    {'CPU (s)':26s}{d['cpu']:12.1f}{s['cpu']:12.1f}")
    print(f"    {'peak memory, tree (MB)':26s}{d['peak_mb']:12,.0f}{s['peak_mb']:12,.0f}")
    print(f"    {'rows':26s}{d['rows']:12,}{s['rows']:12,}")
    print(f"    Spark/DuckDB: {s['wall'] / d['wall']:.1f}x the wall time, {s['peak_mb'] / d['peak_mb']:.1f}x the "
          f"memory; content {'IDENTICAL' if same else 'DIFFERENT'} "
          f"(rows and hash sum {d['content']} vs {s['content']})")
    if not same: raise SystemExit("the two engines built different marts")
    print("    what the Spark path buys: not speed on one machine — the same statements on a cluster (spark_master), "
          "where staging\n    outgrows one machine's disk and memory and the executors scale out; DuckDB stays the "
          "default for one host")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spark-memory", default="4g")
    args = ap.parse_args(argv)
    for n in args.customers: bench(n, args.months, args.threads, args.spark_memory)


if __name__ == "__main__":
    main()
