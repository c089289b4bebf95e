"""Benchmark of the etl phase against a straightforward pandas implementation (a script, not collected by pytest).

    python tests/bench/bench_etl.py                          # 1,000,000 customers x 12 months (generates the lake
    once, then reuses it)
    python tests/bench/bench_etl.py --customers 20000        # the pipeline's default size
    python tests/bench/bench_etl.py --skip-pandas            # ours only

1. The lake (drift scenario, default defect rates) is generated under --root, or reused if it is already there.
2. Our ETL (`mlops_nb.warehouse.load_warehouse`) loads it into a fresh warehouse and vault, in a child process.
3. A straightforward pandas implementation of the same transformations — read every partition (csv / json / parquet
   modules), find corrupt lines, drop exact duplicates, pseudonymise each distinct id once, parse dates in every
   format, Brazilian money, map category spellings, validate CPFs, apply the same quarantine reasons and outlier
   policy, store personal data with `privacy.store_in_vault`, build the same point-in-time mart month by month, and
   write staging, quarantine and mart as Parquet — runs on the same lake, in another child process.
Each child's wall time, CPU time and peak RSS (its own, from wait4) are printed, with the ratio, the machine's load
average and a host speed probe before and after ours (the machine is shared and its speed moves by ~20 % within an
hour: read wall times against the probe, or compare versions in interleaved runs). `MLOPS_ETL_TRACE=<seconds>` prints
the load's slow statements. Row counts of both are compared. Each progress line of the pandas twin says how many times
our wall time it has already taken: a lower bound on the ratio when the twin is stopped early (at 1M x 12 its twelve
monthly loads take ~10 minutes on this machine, and its mart tens more at ~10 GB RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OURS = """
import json, sys, time
from mlops_nb.settings import load_settings
from mlops_nb.warehouse import load_warehouse
cfg = load_settings(sys.argv[1])
t = time.perf_counter()
res = load_warehouse(cfg, progress=lambda line: print(f"  ours   {time.perf_counter() - t:6.1f} s  {line}",
                                                     file=sys.stderr, flush=True))
print(json.dumps(dict(wall=time.perf_counter() - t, rows=res.tables, summary=res.summary())))
"""

PANDAS = """
import json, sys, time, warnings
# combine_first, once a month
warnings.filterwarnings("ignore", message="The behavior of array concatenation with empty entries is deprecated")
sys.path.insert(0, sys.argv[2])
from bench_etl import pandas_etl
from mlops_nb.settings import load_settings
cfg = load_settings(sys.argv[1])
t = time.perf_counter()
ours = float(sys.argv[4])   # our wall time: each line says how far behind pandas already is (a lower bound if stopped)
def say(line):
    print(f"  pandas {time.perf_counter() - t:6.1f} s  {line}  (already {(time.perf_counter() - t) / ours:.1f}x ours)",
          file=sys.stderr, flush=True)
rows = pandas_etl(cfg, sys.argv[3], progress=say)
print(json.dumps(dict(wall=time.perf_counter() - t, rows=rows)))
"""


# --- the pandas implementation ---------------------------------------------------------------------------------------

def pandas_etl(cfg, out_dir: str, progress=print) -> dict[str, int]:
    "The same transformations with pandas; returns rows per output table."
    import csv
    import numpy as np
    import pandas as pd
    from mlops_nb import people
    from mlops_nb import warehouse as W
    from mlops_nb import byod
    from mlops_nb import features
    from mlops_nb import staging
    from mlops_nb.privacy import load_key, pseudonymise
    from mlops_nb.vault import open_vault, store_in_vault

    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
    key = load_key(cfg)
    parts = W.lake_partitions(cfg.paths.lake, W.lake_manifest(cfg.paths.lake))
    canon = {(r.source, r.col, r.norm): r.canon for r in staging.category_map().itertuples()}
    keymap: dict[str, str] = {}
    staged: dict[str, list[pd.DataFrame]] = {t.table: [] for t in staging.TABLES.values()}
    rejected: list[pd.DataFrame] = []
    vault = open_vault(cfg)

    def read(part, t):
        src = t.src
        names = t.raw_names()
        if src.format == "parquet":
            df = pd.read_parquet(part.path)
            for n in names:
                if n not in df: df[n] = None
            return df.assign(_rec=np.arange(len(df)), _ok=True)[["_rec", "_ok", *names]]
        text = part.path.read_bytes().decode(src.encoding)
        lines = text.split(src.newline)
        if lines and lines[-1] == "": lines.pop()
        if src.format == "csv":
            header, lines = lines[0].split(src.sep), lines[1:]
            recs = list(csv.reader(lines, delimiter=src.sep))
            ok = [len(r) == len(header) for r in recs]
            df = pd.DataFrame([r for r, k in zip(recs, ok) if k], columns=header).replace("", None)
            good = np.flatnonzero(ok)
        else:
            objs, good = [], []
            for i, line in enumerate(lines):
                try: o = json.loads(line)
                except json.JSONDecodeError: continue
                if isinstance(o, dict): objs.append(o); good.append(i)
            df = pd.DataFrame(objs).astype(object).where(lambda d: d.notna(), None)
            for c in df.columns:   # JSON values as the text they were written as
                df[c] = df[c].map(
                    lambda v: None if v is None else ("true" if v is True else "false" if v is False else str(v))
                )
        for n in names:
            if n not in df: df[n] = None
        df = df[names].assign(_rec=np.asarray(good, dtype=np.int64), _ok=True)
        bad = np.setdiff1d(np.arange(len(lines)), good)
        return pd.concat([df, pd.DataFrame({"_rec": bad, "_ok": False})], ignore_index=True)

    def parse_dates(s, fmt):
        s = s.astype("string").str.strip()
        outp = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
        for f in dict.fromkeys((fmt, *byod.DATE_FORMATS)):
            todo = outp.isna() & s.notna()
            if not todo.any(): break
            outp[todo] = pd.to_datetime(s[todo], format=f, errors="coerce")
        return outp.where(outp.dt.year.between(1900, 2100))

    for part in parts:
        t = staging.TABLES[part.source]
        df = read(part, t)
        n_read = len(df)
        ok = df._ok.to_numpy()
        cols = t.raw_names()
        dup = np.zeros(len(df), bool)
        dup[ok] = df.loc[ok, cols].duplicated(keep="first").to_numpy()
        keycol = next(f.raw for f in t.fields if f.parse == "key")
        ids = df[keycol].dropna().unique()
        new = [i for i in ids if i not in keymap]
        keymap.update(zip(new, pseudonymise(new, key, "customer")))
        v = {"customer_key": df[keycol].map(keymap)}
        reason = pd.Series(np.where(ok, None, "corrupt_line"), index=df.index, dtype=object)
        def fail(mask, code):
            reason[(reason.isna() & mask & ~dup).to_numpy()] = code
        present = {f.raw: df[f.raw].combine_first(df[f.aliases[0]]) if f.aliases else df[f.raw] for f in t.fields}
        for f in t.fields:
            if f.required:
                fail(present[f.raw].isna() | (present[f.raw].astype("string").str.strip() == ""),
                     f"missing_required:{f.raw}")
        if part.source == "crm_customers":
            fail(~pd.Series(people.cpf_is_valid(df["cpf"].astype("string")), index=df.index) & df._ok, "invalid_cpf")
        for f in t.fields:
            x = present[f.raw]
            if f.parse in ("date", "timestamp"):
                p = parse_dates(x, t.src.col(f.raw).fmt or "%Y-%m-%d")
                if f.parse == "date": p = p.dt.normalize()
                v[f.name] = p; fail(x.notna() & p.isna(), f"bad_date:{f.raw}")
            elif f.parse == "money":
                p = people.parse_brl(x.astype("string"))
                v[f.name] = p; fail(x.notna() & p.isna(), f"bad_number:{f.raw}")
            elif f.parse in ("int", "float"):
                p = pd.to_numeric(x, errors="coerce"); v[f.name] = p; fail(x.notna() & p.isna(), f"bad_number:{f.raw}")
            elif f.parse == "bool":
                p = x.map(lambda s: None if pd.isna(s) else {"true": True, "false": False}.get(str(s).lower()))
                v[f.name] = p
                fail(x.notna() & p.isna(), f"bad_value:{f.raw}")
            elif f.parse == "month":
                p = x.where(x.astype("string").str.fullmatch(r"\d{4}-(0[1-9]|1[0-2])").fillna(False))
                v[f.name] = p; fail(x.notna() & p.isna(), f"bad_value:{f.raw}")
            elif f.parse == "category":
                p = x.map(lambda s: None if pd.isna(s) else canon.get((part.source, f.raw, staging.normal_form(s))))
                v[f.name] = p
                fail(x.notna() & p.isna(), f"unknown_category:{f.raw}")
            elif f.parse in ("text", "cpf"):
                v[f.name] = x.astype("string").str.strip().replace("", None)
        for f in t.fields:
            if f.valid and f.on_outlier == "quarantine":
                fail(v[f.name].notna() & ~v[f.name].between(*f.valid), f"out_of_range:{f.raw}")
        nat = [next(f.raw for f in t.fields if f.name == n) for n in t.unique]
        keydup = df[nat].duplicated(keep="first") & ~dup & df._ok.to_numpy()
        fail(keydup, f"duplicate_key:{nat[0]}")
        good = reason.isna().to_numpy() & ~dup
        s = pd.DataFrame(
            {
                k: (val[good] if hasattr(val, "__getitem__") else val)
                for k, val in v.items()
                if k in {c for c, _, _ in features.staging_columns(t)}
            }
        )
        for f in t.fields:
            if f.valid and f.on_outlier == "null": s[f.name] = s[f.name].where(s[f.name].between(*f.valid))
        if part.source == "crm_customers":
            bd = v["birth_date"][good]
            s = s.assign(birth_year=bd.dt.year, has_email=v["email"][good].notna(), has_phone=v["phone"][good].notna(),
                         has_address=v["address"][good].notna() | v["postal_code"][good].notna())
            pii = pd.DataFrame({f.name: v[f.name][good].astype("string") for f in t.fields if f.personal}).assign(
                birth_date=bd.dt.strftime("%Y-%m-%d")
            )
            store_in_vault(vault, v["customer_key"][good].tolist(), pii, part.month)
            month = part.month
        else:
            m = {"billing": "issue_date", "tickets": "opened_at", "cancellations": "request_date",
                 "contracts": "event_date"}.get(part.source)
            month = s[m].dt.strftime("%Y-%m") if m else s["month"]
        s = s.assign(month=month, arrival_month=part.month, record=df._rec[good].to_numpy())
        staged[t.table].append(s)
        rej = reason.notna().to_numpy()
        rejected.append(
            pd.DataFrame(
                {
                    "source": part.source,
                    "month": part.month,
                    "record": df._rec[rej].to_numpy(),
                    "reason": reason[rej].to_numpy(),
                }
            )
        )
        if n_read != good.sum() + rej.sum() + dup.sum():
            raise RuntimeError(f"reconciliation failed for {part.source} {part.month}")
        if part.source == "campaigns": progress(f"loaded {part.month}")
    vault.close()
    tables = {k: pd.concat(v, ignore_index=True) for k, v in staged.items()}
    rows = {}
    for k, df in tables.items():
        df.to_parquet(out / f"staging.{k}.parquet", index=False); rows[f"staging.{k}"] = len(df)
    q = pd.concat(rejected, ignore_index=True)
    q.to_parquet(out / "quarantine.records.parquet", index=False); rows["quarantine.records"] = len(q)
    mart = pandas_mart(tables, sorted({p.month for p in parts}))
    mart.to_parquet(out / "mart.customer_month.parquet", index=False); rows["mart.customer_month"] = len(mart)
    progress("mart built")
    return rows


def pandas_mart(t, months):
    "mart.customer_month, month by month, as known at each month's end."
    import pandas as pd
    from mlops_nb.privacy import AGE_BANDS
    from mlops_nb.mart import _add_months
    c, k, u, b, tk, cx, cp = (
        t[x] for x in ("customers", "contracts", "usage", "billing", "tickets", "cancellations", "campaigns")
    )
    k = k.assign(known=k[["arrival_month"]].assign(e=k.event_date.dt.strftime("%Y-%m")).max(axis=1))
    out = []
    for m in months:
        end = pd.Timestamp(m + "-01") + pd.offsets.MonthEnd(0)
        m2 = _add_months(m, -2)
        base = u[u.month == m].merge(
            b[(b.reference_month == m) & (b.arrival_month <= m)][["customer_key", "amount", "due_date", "paid_date"]],
            on="customer_key",
            how="outer",
        )
        cv = c[c.arrival_month <= m].sort_values(["customer_key", "arrival_month"]).drop_duplicates("customer_key",
                                                                                                    keep="last")
        ct = (
            k[k.known <= m]
            .sort_values(["customer_key", "known", "event_date", "contract_id"])
            .drop_duplicates("customer_key", keep="last")
        )
        w = tk[(tk.month >= m2) & (tk.month <= m) & (tk.arrival_month <= m)]
        g = w.groupby("customer_key")
        tka = pd.DataFrame(
            {
                "tickets": g.month.apply(lambda s: (s == m).sum()),
                "tickets_3m": g.size(),
                "unresolved_tickets_3m": g.resolved.apply(lambda s: (~s.astype(bool)).sum()),
                "open_tickets": g.closed_at.apply(lambda s: (s.isna() | (s >= end + pd.Timedelta(days=1))).sum()),
                "satisfaction_avg": w[w.month == m].groupby("customer_key").satisfaction.mean(),
            }
        ).reset_index()
        lb = b[
            (b.reference_month >= m2)
            & (b.reference_month <= m)
            & (b.arrival_month <= m)
            & (b.due_date <= end)
            & (b.paid_date.isna() | (b.paid_date > b.due_date))
        ]
        bl = lb.groupby("customer_key").size().rename("late_payments_3m").reset_index()
        cxm = (
            cx[(cx.month == m) & (cx.arrival_month <= m)]
            .sort_values(["customer_key", "request_date"])
            .drop_duplicates("customer_key")[["customer_key", "reason"]]
        )
        cpm = (
            cp[cp.month == m]
            .sort_values(["customer_key", "campaign_id"])
            .drop_duplicates("customer_key")[["customer_key", "arm", "contacted", "accepted"]]
        )
        df = (
            base.merge(
                cv[["customer_key", "gender", "birth_year", "state", "city", "signup_date"]],
                on="customer_key",
                how="left",
            )
            .merge(
                ct[["customer_key", "product", "plan", "contract_type", "monthly_fee", "payment_method"]],
                on="customer_key",
                how="left",
            )
            .merge(tka, on="customer_key", how="left")
            .merge(bl, on="customer_key", how="left")
            .merge(cxm, on="customer_key", how="left")
            .merge(cpm, on="customer_key", how="left")
        )
        age = end.year - df.birth_year
        df["age_band"] = pd.cut(age, [lo for lo, _, _ in AGE_BANDS] + [200], right=False,
                                labels=[lab for _, _, lab in AGE_BANDS])
        df["tenure_months"] = (end.year - df.signup_date.dt.year) * 12 + end.month - df.signup_date.dt.month
        df["invoice_overdue"] = (df.due_date <= end) & (df.paid_date.isna() | (df.paid_date > df.due_date))
        df["cancel_requested"] = df.reason.notna()
        df = df.assign(month=m).rename(
            columns={
                "amount": "invoice_amount",
                "reason": "cancel_reason",
                "arm": "campaign_arm",
                "contacted": "campaign_contacted",
                "accepted": "campaign_accepted",
            }
        )
        out.append(df[[c for c, _, _ in __import__("mlops_nb.warehouse").warehouse.MART_COLUMNS]])
    return pd.concat(out, ignore_index=True)


# --- running both in child processes ---------------------------------------------------------------------------------

def run_child(code: str, *args: str) -> dict:
    "Run `code` in a child process; return its JSON result plus wall, CPU and peak RSS (wait4 of that child alone)."
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0: raise SystemExit(f"child failed (status {status})")
    *said, last = out.strip().splitlines()
    for line in said: print(line)                  # e.g. MLOPS_ETL_TRACE=<seconds>: the load's own statement timings
    res = json.loads(last)
    res.update(wall_total=wall, cpu=ru.ru_utime + ru.ru_stime, peak_rss_mb=ru.ru_maxrss / 1024)
    return res


def host_speed() -> float:
    """CPU seconds of a fixed single-threaded workload (a Python loop and a DuckDB hash query): ~1.0 on this machine at
    its usual speed. The machine is shared and its speed moves by 20 % within an hour; read wall times against this."""
    import duckdb
    t = time.process_time()
    s = 0
    for i in range(5_000_000): s += i
    with duckdb.connect() as con:
        con.execute("SET threads = 1")
        con.execute("SELECT sum(hash(i::VARCHAR)) FROM range(10000000) t(i)").fetchall()
    return time.process_time() - t


def lake_settings(root: Path, customers: int, months: int):
    from mlops_nb.settings import sandbox_settings
    return sandbox_settings(root, lake_customers=customers, lake_months=months, lake_scenario="drift",
                            lake_drift_month=min(8, months), lake_schema_drift_month=min(7, months))


def ensure_lake(root: Path, customers: int, months: int):
    "The benchmark's settings under `root`, its lake generated there unless the same lake is there already."
    from mlops_nb import lake as L
    cfg = lake_settings(root, customers, months)
    manifest = cfg.paths.lake / "_manifest.json"
    m = json.loads(manifest.read_text()) if manifest.exists() else {}
    if m.get("lake") == __import__("dataclasses").asdict(cfg.lake) and m.get("generator") == L.GENERATOR_VERSION:
        print(f"[1] reusing the lake in {cfg.paths.lake}")
    else:
        print(f"[1] generating {customers:,} customers x {months} months into {cfg.paths.lake}")
        t = time.perf_counter(); L.generate_lake(cfg); print(f"    {time.perf_counter() - t:.0f} s")
    return cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000, help="active customers in month 1 (default 1,000,000)")
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--root", type=Path, default=None,
                    help="where the lake and outputs live (default /tmp/bench-etl-<customers>; the lake is reused)")
    ap.add_argument("--skip-pandas", action="store_true")
    args = ap.parse_args(argv)
    root = args.root or Path(f"/tmp/bench-etl-{args.customers}")
    cfg = ensure_lake(root, args.customers, args.months)
    manifest = cfg.paths.lake / "_manifest.json"
    files = json.loads(manifest.read_text())["files"]
    print(f"    {len(files)} files, {sum(f['rows'] for f in files):,} records, "
          f"{sum(f['bytes'] for f in files) / 1e6:,.0f} MB")
    for p in (cfg.paths.warehouse, cfg.privacy.vault):
        for f in p.parent.glob(p.name + "*"): f.unlink()
    load = os.getloadavg()
    print(f"[2] ours: load_warehouse into a fresh warehouse and vault (child process; load average {load[0]:.1f}; "
          f"host speed probe {host_speed():.2f} s)")
    ours = run_child(OURS, str(cfg.source))
    print(f"    wall {ours['wall']:.1f} s, CPU {ours['cpu']:.1f} s, peak RSS {ours['peak_rss_mb']:,.0f} MB, warehouse "
          f"{cfg.paths.warehouse.stat().st_size / 1e9:.2f} GB (host speed probe after: {host_speed():.2f} s)")
    if args.skip_pandas: return
    vault = cfg.privacy.vault
    pcfg = lake_settings(root, args.customers, args.months)
    for f in vault.parent.glob("pandas-vault.duckdb*"): f.unlink()
    pcfg_file = root / "settings-pandas.ini"
    pcfg_file.write_text(
        pcfg.source.read_text().replace("vault = data/vault.duckdb", "vault = data/pandas-vault.duckdb")
    )
    print(f"[3] pandas: the same transformations (child process; load average {os.getloadavg()[0]:.1f})")
    pandas = run_child(PANDAS, str(pcfg_file), str(Path(__file__).parent), str(root / "pandas-out"),
                       f"{ours['wall']:.3f}")
    print(f"    wall {pandas['wall']:.1f} s, CPU {pandas['cpu']:.1f} s, peak RSS {pandas['peak_rss_mb']:,.0f} MB")
    print("[4] side by side")
    print(f"    {'':24s}{'ours':>12s}{'pandas':>12s}")
    print(f"    {'wall time (s)':24s}{ours['wall']:12.1f}{pandas['wall']:12.1f}")
    print(f"    {'CPU time (s)':24s}{ours['cpu']:12.1f}{pandas['cpu']:12.1f}")
    print(f"    {'peak RSS (MB)':24s}{ours['peak_rss_mb']:12,.0f}{pandas['peak_rss_mb']:12,.0f}")
    print(f"    ratio: {pandas['wall'] / ours['wall']:.1f}x faster (wall), {pandas['cpu'] / ours['cpu']:.1f}x less CPU")
    for name, n in pandas["rows"].items():
        print(f"    rows {name:28s} ours {ours['rows'].get(name, 0):>12,}  pandas {n:>12,}")


if __name__ == "__main__":
    main()
