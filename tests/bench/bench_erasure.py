"""Erasure, side by side with what a team would do without it: cut the people from the lake and rebuild the warehouse
from scratch. Both on a copy of a project that `./run_all.sh` (or `mlops-nb run` + `operate`) has filled.

    .venv/bin/python tests/bench/bench_erasure.py --settings settings.ini [--people 1 --people 50]

Prints, per batch size: our whole erasure (lake, warehouse, vault, prediction log, artifacts, reports, the final
check), its warehouse step, and the rebuild (a forced full load of the erased lake into a new warehouse — the warehouse
alone, nothing else); the ratio is rebuild / our warehouse step, the like-for-like part; and whether both warehouses
hold the same rows."""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import duckdb


def departed(cfg, n: int) -> list[str]:
    from mlops_nb.erasure import retention_due
    short = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, retention_months=1))
    return retention_due(short)[:n]


def table_hashes(path: Path) -> dict[str, str]:
    from mlops_nb.warehouse import HASHED_TABLES, _table_hash
    with duckdb.connect(str(path), read_only=True) as con: return {t: _table_hash(con, t) for t in HASHED_TABLES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="settings.ini")
    ap.add_argument("--people", type=int, action="append", help="batch sizes (default 1 and 50)")
    args = ap.parse_args()
    from mlops_nb.erasure import erase_people
    from mlops_nb.settings import load_settings
    from mlops_nb.subjects import open_request
    from mlops_nb.warehouse import load_warehouse
    src = Path(args.settings).resolve().parent
    print(f"{'people':>7} {'erasure s':>10} {'its warehouse step s':>21} {'rebuild s':>10} {'ratio':>7}  same rows")
    for n in args.people or [1, 50]:
        with tempfile.TemporaryDirectory() as d:
            root = Path(d) / "p"
            shutil.copytree(src, root, ignore=shutil.ignore_patterns(".venv", ".git", "nbs", "mlops_nb", "tests"))
            cfg = load_settings(root / Path(args.settings).name, env={})
            keys = departed(cfg, n)
            rid = open_request(cfg, "erasure", f"{len(keys)} people", "bench", "bench")
            t0 = time.perf_counter()
            res = erase_people(cfg, keys, rid, (), "bench")
            ours = time.perf_counter() - t0
            fresh = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, warehouse=root / "fresh.duckdb"),
                                        privacy=dataclasses.replace(cfg.privacy, vault=root / "fresh_vault.duckdb"))
            t0 = time.perf_counter()
            load_warehouse(fresh, force=True)
            rebuild = time.perf_counter() - t0
            same = table_hashes(cfg.paths.warehouse) == table_hashes(fresh.paths.warehouse)
            wh = res.steps["warehouse"]
            print(f"{len(keys):>7} {ours:>10.1f} {wh:>21.1f} {rebuild:>10.1f} {rebuild / wh:>6.2f}x  {same} "
                  f"({res.status}; steps {res.steps})")


if __name__ == "__main__":
    main()
