"""The etl phase: reconciliation, quarantine reasons against the oracle, idempotence, kill -9 recovery, late records,
no clear personal data in the warehouse, and clear errors for broken inputs.

Everything runs on real generated lakes (small, with raised defect rates) and real DuckDB files.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mlops_nb import lake as L
from mlops_nb import people
from mlops_nb import sources
from mlops_nb import warehouse as W
from mlops_nb import cleaning
from mlops_nb import privacy
from mlops_nb import staging
from mlops_nb.contracts import connect_warehouse
from mlops_nb.vault import open_vault
from mlops_nb.privacy import scan_for_values, scan_frame
from mlops_nb.sandbox import MESSY_RATES
from mlops_nb.settings import SettingsError, load_settings, sandbox_settings

RATE = 0.04
RATES = {k: RATE for k in MESSY_RATES}   # every defect the lake plants, a little more often than the sandbox
MONTHS = [f"2025-{m:02d}" for m in range(1, 7)]


def make_cfg(root: Path, **kw):
    values = dict(lake_customers=600, lake_months=6, lake_drift_month=4, lake_schema_drift_month=4,
                  lake_scenario="drift", **RATES)
    values.update(kw)
    return sandbox_settings(root, **values)


def digest(cfg) -> str:
    """An independent content hash: every ETL table, rows sorted, hashed as text."""
    import hashlib
    h = hashlib.sha256()
    with connect_warehouse(cfg) as con:
        for name in W.HASHED_TABLES:
            df = con.execute(f"SELECT * FROM {name}").df()
            h.update(name.encode())
            h.update(df.astype(str).sort_values(list(df.columns)).to_csv(index=False).encode())
    return h.hexdigest()


def scanned_hash(cfg) -> str:
    """The content hash from a scan of every row (the load records one added up from per-partition sums)."""
    with connect_warehouse(cfg) as con:
        return W.content_hash(con)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    cfg = make_cfg(tmp_path_factory.mktemp("wh"))
    L.generate_lake(cfg)
    res = W.load_warehouse(cfg)
    defects = L.read_defects(cfg.paths.oracle).astype(
        {"source": str, "month": str, "file": str, "kind": str, "column": str}
    )
    return cfg, res, defects


@pytest.fixture(scope="module")
def tables(loaded):
    cfg, _, _ = loaded
    with connect_warehouse(cfg) as con:
        return {n: con.execute(f"SELECT * FROM {n}").df() for n in staging.table_columns()}


# --- reconciliation ---------------------------------------------------------------------------------------------

def test_reconciliation_holds_on_a_defect_laden_lake(loaded, tables):
    cfg, res, _ = loaded
    rec = tables["meta.reconciliation"]
    assert len(rec) == 7 * 6 and rec.balanced.all()
    assert (rec.rows_read == rec.rows_loaded + rec.rows_quarantined + rec.rows_duplicate).all()
    manifest = {
        (f["source"], f["month"]): f["rows"]
        for f in json.loads((cfg.paths.lake / "_manifest.json").read_text())["files"]
    }
    # every physical record counted
    assert {(r.source, r.month): r.rows_read for r in rec.itertuples()} == manifest
    # the counts are the tables' own
    for t in staging.TABLES.values():
        got = tables[f"staging.{t.table}"].groupby("arrival_month").size()
        want = rec[rec.source == t.source].set_index("month").rows_loaded
        assert got.reindex(want.index, fill_value=0).tolist() == want.tolist(), t.source
    q = tables["quarantine.records"].groupby(["source", "month"]).size()
    assert q.reindex(pd.MultiIndex.from_frame(rec[["source", "month"]]),
                     fill_value=0).tolist() == rec.rows_quarantined.tolist()


def test_a_mismatch_fails_naming_source_and_month_and_rolls_back(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, lake_customers=200)
    L.generate_lake(cfg)
    W.load_warehouse(cfg, months=MONTHS[:2])
    before = digest(cfg)
    real = cleaning.reconcile
    def lossy(con, data, written):
        if (data.part.source, data.part.month) == ("billing", "2025-04"):
            written = {**written, "rows_loaded": written["rows_loaded"] - 1}
        return real(con, data, written)
    monkeypatch.setattr(cleaning, "reconcile", lossy)
    with pytest.raises(staging.ReconciliationError, match=r"billing 2025-04 .*read \d+; loaded"):
        W.load_warehouse(cfg)
    assert digest(cfg) == before


# --- quarantine reasons, per defect kind, against the oracle -----------------------------------------------------

def _merged(defects, quarantine, kind):
    d = defects[defects.kind == kind]
    return d.merge(quarantine, left_on=["source", "month", "row"], right_on=["source", "month", "record"], how="left")


def test_corrupt_lines_and_invalid_cpfs_are_quarantined_with_that_reason(loaded, tables):
    _, _, defects = loaded
    q = tables["quarantine.records"]
    corrupt = _merged(defects, q, "corrupt_line")
    assert len(corrupt) > 20 and (corrupt.reason == "corrupt_line").all()
    # the physical line is right too
    assert (corrupt.line_x.astype(int) == corrupt.line_y.astype(int)).all()
    cpf = _merged(defects, q, "invalid_cpf")
    also_corrupt = cpf.set_index(["source", "month", "row"]).index.isin(
        corrupt.set_index(["source", "month", "row"]).index
    )
    assert (
        len(cpf) > 5
        and (cpf.reason[~also_corrupt] == "invalid_cpf").all()
        and (cpf.reason[also_corrupt] == "corrupt_line").all()
    )
    # and nothing else is rejected as corrupt or invalid
    assert (q.reason == "corrupt_line").sum() == len(corrupt)
    assert (q.reason == "invalid_cpf").sum() == (~also_corrupt).sum()
    assert not q.detail.str.contains(r"\d{3}\.\d{3}\.\d{3}", regex=True).any()                   # details are masked


def test_duplicates_are_removed_and_counted(loaded, tables):
    _, _, defects = loaded
    rec = tables["meta.reconciliation"].set_index(["source", "month"])
    dup = defects[defects.kind == "duplicate"].groupby(["source", "month"]).size()
    corrupt = defects[defects.kind == "corrupt_line"].groupby(["source", "month"]).size()
    for (s, m), n in dup.items():
        removed = rec.loc[(s, m), "rows_duplicate"]
        # a re-sent copy whose original line was corrupted is the only readable version: it is loaded, not removed
        assert n - corrupt.get((s, m), 0) <= removed <= n, (s, m)
    assert rec.rows_duplicate.sum() > 0.8 * dup.sum()
    staged = tables["staging.billing"]
    assert not staged.duplicated(["invoice_id"]).any()


def test_spelling_variants_and_date_formats_are_mapped_not_rejected(loaded, tables):
    _, _, defects = loaded
    q = tables["quarantine.records"]
    rejecting = set(
        map(
            tuple,
            defects[defects.kind.isin(["corrupt_line", "invalid_cpf", "outlier", "cents_amount"])][
                ["source", "month", "row"]
            ].to_numpy(),
        )
    )
    for kind in ("spelling", "date_format", "missing", "late"):
        hit = _merged(defects, q, kind).dropna(subset=["reason"])
        unexplained = [k for k in map(tuple, hit[["source", "month", "row"]].to_numpy()) if k not in rejecting]
        assert not unexplained, (kind, unexplained[:5])
    c = tables["staging.contracts"]
    for col, values in (("product", sources.PRODUCTS), ("plan", sources.PLAN_NAMES),
                        ("contract_type", sources.CONTRACT_TYPES)):
        assert c[col].isin(values).all(), col
    assert (
        tables["staging.customers"].city.isin(sources.CITIES).all()
        and tables["staging.customers"].state.isin(sources.UF_CODES).all()
    )
    sp = defects[(defects.kind == "spelling") & (defects.source == "contracts") & (defects.column == "product")]
    loaded_rows = c.merge(sp.rename(columns={"month": "partition"}), left_on=["arrival_month", "record"],
                          right_on=["partition", "row"])
    assert len(loaded_rows) > 0 and loaded_rows["product"].isin(sources.PRODUCTS).all()


def test_outliers_follow_the_policy(loaded, tables):
    _, _, defects = loaded
    q, flagged = tables["quarantine.records"], tables["quarantine.flagged_values"]
    out = defects[defects.kind == "outlier"]
    policy = {f.raw: f.on_outlier for t in staging.TABLES.values() for f in t.fields if f.valid}
    for col, d in out.groupby("column"):
        d = d.merge(q, left_on=["source", "month", "row"], right_on=["source", "month", "record"], how="left")
        if policy[col] == "quarantine":
            assert d.reason.isin([f"out_of_range:{col}", "corrupt_line"]).all(), col
        else:
            kept = d[d.reason.isna()]
            f = flagged[flagged.column_name == col]
            got = set(zip(f.source, f.month, f.record))
            assert all((s, m, r) in got for s, m, r in zip(kept.source, kept.month, kept.row)), col
    assert tables["staging.usage"].voice_minutes.dropna().between(0, 50_000).all()
    assert tables["staging.tickets"].satisfaction.dropna().between(1, 5).all()


def test_late_records_land_in_their_true_month(loaded, tables):
    _, _, defects = loaded
    for source, table, date in (("billing", "billing", "issue_date"), ("tickets", "tickets", "opened_at"),
                                ("cancellations", "cancellations", "request_date")):
        s = tables[f"staging.{table}"]
        late = defects[(defects.kind == "late") & (defects.source == source)].rename(columns={"month": "partition"})
        got = s.merge(late, left_on=["arrival_month", "record"], right_on=["partition", "row"])
        # (a few are also corrupt)
        assert len(got) >= 0.8 * len(late), source
        assert (got.month < got.arrival_month).all() and (
            pd.to_datetime(got[date]).dt.strftime("%Y-%m") == got.month
        ).all(), source
        # and nothing else is "late"
        assert ((s.month < s.arrival_month).sum()) == len(got), source


def test_the_cents_month_is_not_fixed_by_the_etl(loaded, tables):
    cfg, _, _ = loaded
    b = tables["staging.billing"]
    med = b.groupby("month").amount.median().astype(float)
    bug = people.month_labels(cfg.lake.start_month, cfg.lake.months)[cfg.lake.drift_month - 1]
    assert med[bug] > 40 * med.drop(bug).median()


def test_schema_rename_is_unified(loaded, tables):
    u = tables["staging.usage"]
    assert u.data_gb.notna().all() and set(u.month) == set(MONTHS)


def test_mart_one_row_per_active_customer_month_point_in_time(loaded, tables):
    mart, b = tables["mart.customer_month"], tables["staging.billing"]
    assert not mart.duplicated(["customer_key", "month"]).any()
    assert set(mart.month) == set(MONTHS)
    assert set(c for c, _, _ in staging.MART_COLUMNS) == set(mart.columns)
    # an invoice that arrived after its month is not in that month's row (as known at the month's end)
    late = b[(b.arrival_month > b.reference_month)][["customer_key", "reference_month"]]
    m = mart.merge(late, left_on=["customer_key", "month"], right_on=["customer_key", "reference_month"])
    assert len(m) > 0 and m.invoice_amount.isna().all()
    assert mart.age_band.dropna().isin([b for _, _, b in privacy.AGE_BANDS]).all()


def test_ids_are_stored_plain_and_categories_in_dictionaries(loaded):
    """Pseudonyms and record ids (all distinct) skip the dictionary a write would build in vain; categories get one."""
    cfg, _, _ = loaded
    with connect_warehouse(cfg) as con:
        def methods(table: str, column: str) -> set[str]:
            return set(con.execute(f"SELECT DISTINCT compression FROM pragma_storage_info('{table}') WHERE "
                                   "column_name = ? AND segment_type = 'VARCHAR'",
                                   [column]).fetchnumpy()["compression"])
        for table, column in [("staging.contracts", "customer_key"), ("staging.contracts", "contract_id"),
                              ("staging.billing", "invoice_id"),
                              ("staging.tickets", "ticket_id"), ("mart.customer_month", "customer_key")]:
            assert methods(table, column) == {"Uncompressed"}, (table, column)
        for table, column in [("staging.contracts", "plan"), ("mart.customer_month", "month"),
                              ("quarantine.records", "reason")]:
            got = methods(table, column)
            assert got and "Uncompressed" not in got, (table, column, got)
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                                 "'mart' AND table_name = 'customer_month'").fetchall())
    # the mart's categories: one byte a row
    assert {c for c, ty in types.items() if ty.startswith("ENUM")} == set(staging.MART_CATEGORIES)


def test_a_changed_category_set_rebuilds_the_warehouse(tmp_path, monkeypatch):
    import duckdb
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        staging.ensure_tables(con)
        con.execute("INSERT INTO mart.customer_month (customer_key, month, plan) VALUES ('p_x', '2025-01', 'Pós 50GB')")
        with pytest.raises(duckdb.ConversionException):    # a value outside the set is refused, not stored
            con.execute("INSERT INTO mart.customer_month (customer_key, month, plan) VALUES ('p_y', '2025-01', 'Pós "
                        "5TB')")
        staging.ensure_tables(con)                                # same layout: kept
        assert con.execute("SELECT count(*) FROM mart.customer_month").fetchall() == [(1,)]
        monkeypatch.setitem(staging.MART_CATEGORIES, "plan", (*staging.MART_CATEGORIES["plan"], "Pós 5TB"))
        staging.ensure_tables(con)                                # a new plan: rebuilt, and the new value fits
        assert con.execute("SELECT count(*) FROM mart.customer_month").fetchall() == [(0,)]
        con.execute("INSERT INTO mart.customer_month (customer_key, month, plan) VALUES ('p_y', '2025-01', 'Pós 5TB')")


# --- incremental, idempotent, atomic -----------------------------------------------------------------------------

def test_rerun_is_idempotent(loaded):
    cfg, res, _ = loaded
    before = digest(cfg)
    again = W.load_warehouse(cfg)
    # nothing changed: nothing loaded
    assert again.loaded == [] and again.content_hash == res.content_hash
    forced = W.load_warehouse(cfg, force=True)
    assert len(forced.loaded) == 42 and forced.content_hash == res.content_hash and digest(cfg) == before
    one = W.load_warehouse(cfg, months=["2025-03"], force=True)
    assert len(one.loaded) == 7 and digest(cfg) == before
    # the recorded hash is the scan's, after each kind of load
    assert one.content_hash == res.content_hash == scanned_hash(cfg)


def test_a_month_the_lake_lost_is_removed_and_the_warehouse_equals_a_load_of_the_shorter_lake(loaded, tmp_path):
    cfg, _, _ = loaded
    short = sandbox_settings(tmp_path / "short", **{k: v for k, v in cfg.flat().items() if k.startswith("lake_")},
                             privacy_key_file=str(cfg.privacy.key_file))
    shutil.copytree(cfg.paths.lake, short.paths.lake)
    shutil.copy(cfg.paths.warehouse, short.paths.warehouse)              # the warehouse of the full lake
    manifest = json.loads((short.paths.lake / "_manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["month"] != MONTHS[-1]]
    (short.paths.lake / "_manifest.json").write_text(json.dumps(manifest))
    res = W.load_warehouse(short)
    assert (
        res.loaded == []
        and sorted(res.removed) == sorted((s, MONTHS[-1]) for s in staging.TABLES)
        and res.mart_months == []
    )  # nothing to rebuild: the month is gone
    assert res.content_hash == scanned_hash(short)
    fresh = sandbox_settings(tmp_path / "fresh", **{k: v for k, v in short.flat().items() if k.startswith("lake_")},
                             paths_lake=str(short.paths.lake), privacy_key_file=str(cfg.privacy.key_file))
    assert W.load_warehouse(fresh).content_hash == res.content_hash and digest(fresh) == digest(short)


CHILD = """
import sys, time
from mlops_nb.settings import load_settings
from mlops_nb.warehouse import load_warehouse
cfg = load_settings(sys.argv[1])
def progress(line):
    print(line, flush=True)
    if line.startswith("loaded 2025-05"): time.sleep(60)   # hold the transaction open: the test kills us here
load_warehouse(cfg, progress=progress)
print("finished", flush=True)
"""


def test_kill_9_midway_leaves_the_warehouse_as_it_was_and_the_rerun_completes_it(tmp_path):
    cfg = make_cfg(tmp_path / "a", lake_customers=300)
    L.generate_lake(cfg)
    W.load_warehouse(cfg, months=MONTHS[:3])                        # the previous state: three months loaded
    before = digest(cfg)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg.source)], stdout=subprocess.PIPE, text=True)
    seen = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line: break
            seen.append(line.strip())
            if line.startswith("loaded 2025-05"): break
        assert seen and seen[-1].startswith("loaded 2025-05"), seen
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert digest(cfg) == before                                      # nothing of the killed run is visible
    rerun = W.load_warehouse(cfg)                                     # the rerun ...
    # ... equals an uninterrupted load of the same lake (same key) into a fresh warehouse
    fresh = sandbox_settings(tmp_path / "b", **{k: v for k, v in cfg.flat().items() if k.startswith("lake_")},
                             paths_lake=str(cfg.paths.lake), paths_oracle=str(cfg.paths.oracle),
                             privacy_key_file=str(cfg.privacy.key_file))
    assert W.load_warehouse(fresh).content_hash == rerun.content_hash == scanned_hash(cfg)
    assert digest(cfg) == digest(fresh)


# --- no clear personal data ---------------------------------------------------------------------------------------

def clear_values(cfg) -> set[str]:
    """Every clear direct identifier the lake holds: names, CPFs (as written and as digits), e-mails, phones,
    addresses."""
    vals: set[str] = set()
    for m in MONTHS:
        crm = L.read_raw(cfg.paths.lake, "crm_customers", m)
        for col in ("nome", "cpf", "email", "telefone", "endereco"):
            vals |= set(crm[col].dropna())
        vals |= set(crm.cpf.dropna().str.replace(r"\D", "", regex=True))
    return {v for v in vals if len(v) >= 8}


def test_no_clear_personal_data_in_the_warehouse(loaded):
    cfg, _, _ = loaded
    needles = clear_values(cfg)
    assert len(needles) > 1000
    files = [p for p in cfg.paths.warehouse.parent.glob(cfg.paths.warehouse.name + "*")]
    # the file's bytes (and any WAL)
    assert scan_for_values(files, needles) == []
    with connect_warehouse(cfg) as con:
        names = [f"{s}.{t}" for s, t in con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT "
                                                    "temporary").fetchall()]
        names += [f"raw.{v}" for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = "
                                                     "'raw'").fetchall()]
        found = [f for n in names for f in scan_frame(con.execute(f"SELECT * FROM {n}").df(), needles, n)]
    # decoded tables and raw views
    assert found == []
    # ... they are in the vault
    with open_vault(cfg, read_only=True) as v:
        fields = dict(v.execute("SELECT field, count(*) FROM subjects GROUP BY 1").fetchall())
    assert {"name", "cpf", "email", "phone", "address", "postal_code", "birth_date"} <= set(fields)
    assert oct(cfg.privacy.vault.stat().st_mode & 0o777) == "0o600"


def test_run_etl_logs_to_mlflow_without_personal_data(tmp_path):
    from mlflow.tracking import MlflowClient
    cfg = make_cfg(tmp_path, lake_customers=150)
    L.generate_lake(cfg)
    res = W.run_etl(cfg)
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(cfg.mlflow.experiment).experiment_id])[0]
    assert (
        run.data.tags["mlops_nb.warehouse.content_hash"] == res.content_hash
        and run.data.tags["mlops_nb.lake.manifest_sha256"] == res.lake_digest
    )
    assert run.data.metrics["rows_read"] == res.reconciliation.rows_read.sum()
    assert any(k.startswith("quarantine_corrupt_line") for k in run.data.metrics)
    arts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "etl")}
    assert {"etl/reconciliation.json", "etl/quarantine_by_reason.json", "etl/summary.json"} <= arts
    mlflow_files = [cfg.paths.warehouse.parent / "mlflow.db", cfg.mlflow.artifacts]
    assert scan_for_values(mlflow_files, clear_values(cfg)) == []


# --- broken inputs give clear errors ------------------------------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    cfg = make_cfg(tmp_path, lake_customers=120, **{k: 0.01 for k in RATES})
    L.generate_lake(cfg)
    return cfg


def test_the_trace_mode_prints_timed_statements_and_loads_the_same_content(small, tmp_path, monkeypatch, capsys):
    plain = W.load_warehouse(small)
    # every statement, on the warehouse's and the preparer's connections
    monkeypatch.setenv("MLOPS_ETL_TRACE", "0")
    traced = sandbox_settings(tmp_path / "traced", **{k: v for k, v in small.flat().items() if k.startswith("lake_")},
                              paths_lake=str(small.paths.lake), privacy_key_file=str(small.privacy.key_file))
    res = W.load_warehouse(traced)
    out = capsys.readouterr().out
    assert "[etl trace]" in out and "[prep trace]" in out and "INSERT INTO staging.billing" in out
    assert "[etl trace] total" in out and "[prep trace] total" in out     # the per-kind totals at the end
    assert res.content_hash == plain.content_hash


def test_missing_lake(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(staging.EtlError, match="no lake at .*run the lake phase first"):
        W.load_warehouse(cfg)


def test_garbage_csv_partition_names_the_file(small):
    (small.paths.lake / "billing/month=2025-02/billing.csv").write_bytes(os.urandom(5000))
    with pytest.raises(staging.EtlError,
                       match=r"billing/month=2025-02/billing.csv: (not utf-8 text|the first line is not the expected "
                             r"header)"):
        W.load_warehouse(small)
    with connect_warehouse(small) as con:                                                          # nothing half-loaded
        assert con.execute("SELECT count(*) FROM meta.partitions").fetchone()[0] == 0


def test_headerless_crm_file_names_the_file_without_echoing_personal_data(small):
    p = small.paths.lake / "crm_customers/month=2025-03/clientes.csv"
    lines = p.read_bytes().split(b"\r\n")
    p.write_bytes(b"\r\n".join(lines[1:]))
    with pytest.raises(staging.EtlError) as e:
        W.load_warehouse(small)
    msg = str(e.value)
    assert "crm_customers/month=2025-03/clientes.csv: the first line is not the expected header" in msg
    # no name in the message
    assert lines[1].decode("latin-1").split(";")[1] not in msg


def test_unparseable_jsonl_and_parquet_name_the_file(small):
    (small.paths.lake / "tickets/month=2025-02/tickets.jsonl").write_text("not json\n" * 50)
    with pytest.raises(staging.EtlError,
                       match="tickets/month=2025-02/tickets.jsonl: none of its 50 records could be parsed"):
        W.load_warehouse(small)
    L.generate_lake(small)
    (small.paths.lake / "usage/month=2025-04/usage.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(staging.EtlError, match="usage/month=2025-04/usage.parquet: not a readable Parquet file"):
        W.load_warehouse(small)


def test_missing_partition_file_or_source_folder(small):
    (small.paths.lake / "cancellations/month=2025-05/cancelamentos.csv").unlink()
    with pytest.raises(staging.EtlError,
                       match=r"cancellations/month=2025-05/cancelamentos.csv: partition file missing"):
        W.load_warehouse(small)
    L.generate_lake(small)
    shutil.rmtree(small.paths.lake / "tickets")
    with pytest.raises(staging.EtlError, match=r"tickets/month=2025-01/tickets.jsonl: partition file missing"):
        W.load_warehouse(small)


def test_bad_settings(small, tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text(small.source.read_text().replace("customers = 120", "customers = lots"))
    with pytest.raises(SettingsError, match=r"\[lake\] customers: expected a whole number"):
        load_settings(bad)
    small.paths.warehouse.mkdir(parents=True)
    with pytest.raises(staging.EtlError, match=r"\[paths\] warehouse: .* is a folder"):
        W.load_warehouse(small)


def test_warehouse_connections_print_no_progress_bar(small):
    """A query past two seconds draws DuckDB's progress bar into a script's output (and a notebook's) by default: not
    ours."""
    W.load_warehouse(small)
    code = ("import sys; from mlops_nb.settings import load_settings; from mlops_nb.contracts import "
            "connect_warehouse, duckdb_connect\nfor con in (connect_warehouse(load_settings(sys.argv[1])), "
            "duckdb_connect()):   # the warehouse's, and the log readers' in memory\n"
            # 2.4 s, sleeping: DuckDB's bar starts at 2 s
            "    print(con.execute('SELECT sum(sleep_ms(300)) FROM range(8)').fetchall())")
    r = subprocess.run([sys.executable, "-c", code, str(small.source)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["[(None,)]"] * 2, (r.stdout + r.stderr)[-500:]
    assert "▕" not in r.stdout + r.stderr


def test_a_project_path_with_an_apostrophe_loads(tmp_path):
    """Paths reach DuckDB inside SQL text (SET temp_directory, the raw views' read_csv): one quoting rule,
    `contracts.sql_literal`."""
    cfg = make_cfg(tmp_path / "d'Ávila project", lake_customers=300)
    L.generate_lake(cfg)
    res = W.load_warehouse(cfg)
    with connect_warehouse(cfg) as con:
        assert con.execute("SELECT count(*) FROM raw.billing").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM staging.usage").fetchone()[0] == res.tables["staging.usage"]


HOLD_FILE = ("import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\n"
             "con.execute('CREATE OR REPLACE TABLE t AS SELECT 1 AS x')\nprint('held', flush=True)\n"
             "time.sleep(float(sys.argv[2]))\ncon.close()\n")


def test_a_writer_waits_for_another_process_holding_the_warehouse_then_gives_a_clear_error(tmp_path, capfd):
    """DuckDB has one writer per file: a second process (an erasure during an operated month's step) waits for the
    first to close it, saying so once; past [compute] pipeline_wait_minutes, a WarehouseBusy naming the holder."""
    from mlops_nb.contracts import WarehouseBusy, connect_waiting, connect_warehouse
    cfg = sandbox_settings(tmp_path / "p")
    cfg.paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    hold = subprocess.Popen([sys.executable, "-c", HOLD_FILE, str(cfg.paths.warehouse), "2"], stdout=subprocess.PIPE,
                            text=True)
    assert hold.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with connect_warehouse(cfg, read_only=False) as con: assert con.execute("SELECT x FROM t").fetchone() == (1,)
    assert time.monotonic() - t0 > 1 and hold.wait() == 0
    assert "another process has it open" in capfd.readouterr().err
    hold = subprocess.Popen([sys.executable, "-c", HOLD_FILE, str(cfg.paths.warehouse), "60"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert hold.stdout.readline().strip() == "held"
        with pytest.raises(WarehouseBusy, match=rf"held by another process \(.*PID {hold.pid}"):
            connect_waiting(cfg.paths.warehouse, read_only=True, threads=1, wait_seconds=0)
    finally:
        hold.kill(); hold.wait()
