"""Benchmark of the synthetic data lake (a script, not collected by pytest).

    python tests/bench/bench_lake.py                      # 1,000,000 customers x 12 months, then Faker vs ours on
    20,000 people
    python tests/bench/bench_lake.py --customers 20000    # the pipeline's default size

1. Full generation (lake + oracle) in a child process, so its peak RSS is measured alone (getrusage of the child):
   wall time, files, rows, bytes, peak RSS.
2. The tool a user would otherwise pick for synthetic Brazilian people, Faker('pt_BR'), against our generator,
   producing the same personal columns (name, CPF, e-mail, phone, address, birth date) for the same number of rows.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = """
import json, sys, time
from mlops_nb.settings import load_settings
from mlops_nb.lake import generate_lake
cfg = load_settings(sys.argv[1])
t = time.perf_counter()
def say(m, label):
    print(f"  month {m:>2} ({label}) done at {time.perf_counter() - t:6.1f} s", file=sys.stderr, flush=True)
res = generate_lake(cfg, progress=say)
wall = time.perf_counter() - t
files = res.manifest["files"]
print(json.dumps(dict(wall=wall, files=len(files), rows=sum(f["rows"] for f in files),
                      bytes=sum(f["bytes"] for f in files),
                      truth_rows=sum(res.stats["active"]), defects=res.stats["defects"])))
"""


def bench_generation(customers: int, months: int, root: Path) -> dict:
    "Generate the lake in a child process; return its timings and peak RSS."
    from mlops_nb.settings import sandbox_settings
    cfg = sandbox_settings(root, lake_customers=customers, lake_months=months, lake_scenario="drift",
                           lake_drift_month=min(8, months), lake_schema_drift_month=min(7, months))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-c", CHILD, str(cfg.source)], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB; the largest child so far
    stats = json.loads(out.strip().splitlines()[-1])
    stats["peak_rss_mb"] = peak_kb / 1024 if peak_kb > before else float("nan")
    stats["oracle_bytes"] = sum(p.stat().st_size for p in cfg.paths.oracle.rglob("*") if p.is_file())
    return stats


def faker_people(n: int, seed: int = 0) -> pd.DataFrame:
    "The same personal columns with Faker('pt_BR')."
    from faker import Faker
    fake = Faker("pt_BR")
    Faker.seed(seed)
    rows = [dict(nome=fake.name(), cpf=fake.cpf(), email=fake.email(), telefone=fake.phone_number(),
                 endereco=fake.street_address(), cep=fake.postcode(),
                 data_nascimento=fake.date_of_birth(minimum_age=18, maximum_age=85))
            for _ in range(n)]
    return pd.DataFrame(rows)


def our_people(n: int, seed: int = 0) -> pd.DataFrame:
    "The same personal columns with the lake's generator (attributes drawn, then rendered as the CRM writes them)."
    from mlops_nb import people
    rng = people.rng_for(seed, 0, "initial_base")
    p = people.draw_customers(rng, np.arange(1, n + 1), np.full(n, people.month_first_day("2025-01")), seed)
    cols = people.render_people(p, seed, people.rng_for(seed, 0, "crm_updates", 1))
    cols["data_nascimento"] = people.format_dates(p["birth"], "%d/%m/%Y")
    return pd.DataFrame({k: v.to_pandas() for k, v in cols.items()})


def rate(fn, n: int) -> tuple[float, pd.DataFrame]:
    t = time.perf_counter()
    df = fn(n)
    return n / (time.perf_counter() - t), df


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000, help="active customers in month 1 (default 1,000,000)")
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--people", type=int, default=20_000, help="rows for the Faker comparison (default 20,000)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="generate into this folder and keep it (default: a temp folder, removed)")
    args = ap.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-lake-"))
    try:
        print(f"[1] generating {args.customers:,} customers x {args.months} months into {root} (child process)")
        s = bench_generation(args.customers, args.months, root)
        print(f"    wall time     {s['wall']:8.1f} s")
        print(f"    peak RSS      {s['peak_rss_mb']:8.0f} MB (child process, lake + oracle generation)")
        print(f"    lake          {s['files']} files, {s['rows']:,} rows, {s['bytes'] / 1e6:,.0f} MB")
        print(f"    oracle        {s['truth_rows']:,} truth rows, {s['oracle_bytes'] / 1e6:,.0f} MB; defects "
              f"{s['defects']}")
        print(f"    throughput    {s['rows'] / s['wall']:,.0f} lake rows/s, "
              f"{args.customers * args.months / s['wall']:,.0f} customer-months/s")
    finally:
        if args.keep is None: shutil.rmtree(root, ignore_errors=True)

    n = args.people
    print(f"[2] personal data for {n:,} people: Faker('pt_BR') vs mlops-nb")
    our_people(1000); faker_people(100)  # warm-up (imports, caches)
    f_rate, f_df = rate(faker_people, n)
    o_rate, o_df = rate(our_people, n)
    assert list(f_df.columns) == list(o_df.columns) and len(f_df) == len(o_df) == n
    print(f"    Faker         {f_rate:12,.0f} rows/s")
    print(f"    mlops-nb      {o_rate:12,.0f} rows/s")
    print(f"    ratio         {o_rate / f_rate:12,.0f} x faster")


if __name__ == "__main__":
    main()
