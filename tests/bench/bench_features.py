"""Benchmark: one new month of features built incrementally vs the whole table rebuilt (a script, not a test).

    python tests/bench/bench_features.py                      # 1,000,000 customers x 12 months (bench_etl's lake)
    python tests/bench/bench_features.py --customers 20000    # the pipeline's default size

An operated month adds one month of lake partitions. What a team would do without an incremental build is rebuild the
feature table from every month (`write_features(cfg, full=True)`); ours rebuilds only the months from the earliest
changed partition and updates the labels of earlier rows (`write_features(cfg)`). On bench_etl's warehouse (generated
and loaded first if missing): [1] the full build; [2] the last month's partitions are made to look new (their recorded
fingerprints forgotten, as when they have just been loaded) and the incremental build runs; [3] both tables' content
digests are compared — they must be equal. Each build runs in a child process: its wall time, CPU time and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
from mlops_nb.contracts import connect_warehouse, sql_digest
from mlops_nb.features import write_features
from mlops_nb.settings import load_settings
cfg = load_settings(sys.argv[1])
t, c = time.perf_counter(), time.process_time()
wrote = write_features(cfg, full=sys.argv[2] == "full")
wall, cpu = time.perf_counter() - t, time.process_time() - c
with connect_warehouse(cfg) as con: digest = sql_digest(con)
print(json.dumps(dict(wall=wall, cpu=cpu, since=wrote.since, rows=wrote.rows, digest=digest,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def child(settings: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(settings), mode], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def forget_month(settings: Path, month: str) -> int:
    """Make `month`'s partitions look newly loaded to the feature table: drop them from what it recorded."""
    from mlops_nb.catalog import TABLE_FEATURE_INPUTS
    from mlops_nb.contracts import connect_warehouse
    from mlops_nb.settings import load_settings
    with connect_warehouse(load_settings(settings), read_only=False) as con:
        n = con.execute(f"SELECT count(*) FROM {TABLE_FEATURE_INPUTS} WHERE month = ?", [month]).fetchone()[0]
        con.execute(f"DELETE FROM {TABLE_FEATURE_INPUTS} WHERE month = ?", [month])
    return int(n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--root", type=Path, default=None, help="bench_etl's root (default /tmp/bench-etl-<customers>)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_etl import lake_settings
    root = args.root or Path(f"/tmp/bench-etl-{args.customers}")
    cfg = lake_settings(root, args.customers, args.months)
    if not cfg.paths.warehouse.exists():
        print(f"[0] no warehouse in {root}: running bench_etl --skip-pandas first")
        subprocess.run([sys.executable, str(Path(__file__).parent / "bench_etl.py"), "--customers",
                        str(args.customers), "--months", str(args.months), "--root", str(root), "--skip-pandas"],
                       check=True)
    settings = cfg.source
    full = child(settings, "full")
    print(f"[1] full build:        {full['rows']:>12,} rows  wall {full['wall']:7.1f} s  CPU {full['cpu']:7.1f} s  "
          f"peak RSS {full['peak_rss_mb']:7,.0f} MB")
    from mlops_nb.contracts import connect_warehouse
    with connect_warehouse(cfg) as con:
        last = con.execute("SELECT max(month) FROM features.customer_month").fetchone()[0]
    n = forget_month(settings, last)
    inc = child(settings, "incremental")
    print(f"[2] new month {last} ({n} partitions): since {inc['since']!r}")
    print(f"    incremental build:  {inc['rows']:>12,} rows  wall {inc['wall']:7.1f} s  CPU {inc['cpu']:7.1f} s  "
          f"peak RSS {inc['peak_rss_mb']:7,.0f} MB")
    same = inc["digest"] == full["digest"]
    print(f"[3] same table as the full build: {same} ({inc['digest']} vs {full['digest']})")
    print(f"    ratio: {full['wall'] / inc['wall']:.1f}x faster (wall), {full['cpu'] / inc['cpu']:.1f}x less CPU")
    if not same: sys.exit(1)


if __name__ == "__main__":
    main()
