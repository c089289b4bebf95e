"""Bring your own data: a generated public-style table loaded end to end into the feature table, with bad rows
quarantined by reason, counts that reconcile, no clear personal data in the warehouse, and clear errors."""
from __future__ import annotations

import stat
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from mlops_nb import byod as B
from mlops_nb import sandbox
from mlops_nb.contracts import load_feature_table
from mlops_nb.privacy import scan_for_values, scan_frame
from mlops_nb.settings import SettingsError, sandbox_settings

TELCO = dict(lake_source="byod", byod_id_column="customerID", byod_target_column="Churn", byod_positive_value="Yes",
             byod_sensitive_columns="gender, SeniorCitizen", byod_pii_columns="name")


def project(tmp: Path, path: str = "data/telco.csv", **kw):
    return sandbox_settings(tmp / "p", **{**TELCO, "byod_path": path, **kw})


def warehouse_tables(cfg) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        names = con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
        return {f"{s}.{t}": con.execute(f'SELECT * FROM "{s}"."{t}"').df() for s, t in names}


def check_no_pii(cfg, table: pd.DataFrame) -> None:
    clear = [*table["customerID"].dropna(), *table["name"].dropna(), *table["email"].dropna()]
    files = list(cfg.paths.warehouse.parent.glob(cfg.paths.warehouse.name + "*"))
    assert files and scan_for_values(files, clear) == []
    for name, df in warehouse_tables(cfg).items():
        assert scan_frame(df, clear, name) == [], name
    # the vault has them, readable by the owner only
    assert stat.S_IMODE(cfg.privacy.vault.stat().st_mode) == 0o600
    with duckdb.connect(str(cfg.privacy.vault), read_only=True) as v:
        fields = dict(v.execute("SELECT field, count(*) FROM subjects GROUP BY field").fetchall())
    assert {"customerID", "name", "email"} <= set(fields)


@pytest.mark.parametrize("fmt,parts,sep,encoding",
                         [("csv", 1, ",", "utf-8"), ("csv", 1, ";", "latin-1"), ("parquet", 3, ",", "utf-8")])
def test_flat_table_end_to_end(tmp_path, fmt, parts, sep, encoding):
    path = "data/telco" if parts > 1 else f"data/telco.{fmt}"
    cfg = project(tmp_path, path)
    table, expected = sandbox.telco_table(400, seed=1)
    sandbox.write_table(table, cfg.byod.path, parts=parts, fmt=fmt, sep=sep, encoding=encoding,
                        truncated_lines=3 if fmt == "csv" else 0)
    df, spec, res = B.byod_features(cfg)
    # reconciliation and reasons
    unreadable = 3 if fmt == "csv" else 0
    assert res.rows_read == len(table) + unreadable and res.reconciles
    assert res.rows_duplicate == expected["duplicate"]
    assert res.reasons == {**{k: v for k, v in expected.items() if k != "duplicate"},
                           **({"unreadable_line": unreadable} if unreadable else {})}
    q = warehouse_tables(cfg)["quarantine.byod"]
    assert len(q) == res.rows_quarantined and q["reason"].value_counts().to_dict() == res.reasons
    assert q.loc[q.reason == "missing_target", "detail"].tolist() == ["Churn"]
    assert q.loc[q.reason == "unreadable_line", "record"].isna().all()
    # the hand-over
    back, spec2 = load_feature_table(cfg)
    assert spec2 == spec and spec.time_column is None and spec.source == "byod" and spec.target == "churn"
    assert len(back) == res.rows_loaded == len(df) and back["customer_key"].is_unique
    assert set(back["churn"].unique()) == {0, 1}
    assert {"tenure", "monthly_charges", "total_charges"} <= set(spec.numeric)
    assert {"contract", "internet_service", "payment_method"} <= set(spec.categorical)
    assert set(spec.sensitive) == {"gender", "senior_citizen"} and not set(spec.sensitive) & set(spec.features)
    assert sorted(back["internet_service"].unique()) == ["DSL", "Fiber optic", "No"]   # messy spellings merged
    assert back["total_charges"].dtype == "float64" and back.loc[back.tenure == 0, "total_charges"].isna().all()
    check_no_pii(cfg, table)


def test_panel_with_time_column(tmp_path):
    cfg = project(tmp_path, "data/panel.parquet", byod_time_column="snapshot_date")
    table, expected = sandbox.telco_table(150, months=4, seed=2)
    sandbox.write_table(table, cfg.byod.path, fmt="parquet")
    df, spec, res = B.byod_features(cfg)
    assert res.reconciles and res.rows_duplicate == 2
    assert res.reasons == {k: v for k, v in expected.items() if k != "duplicate"}
    assert spec.time_column == "month" and spec.horizon_months == cfg.features.horizon_months
    # ISO and day-first dates alike
    assert sorted(df["month"].unique()) == ["2024-01", "2024-02", "2024-03", "2024-04"]
    assert not df.duplicated(["customer_key", "month"]).any()
    assert "snapshot_date" not in df.columns and "snapshot_date" not in spec.features
    # a customer's rows stop after the month they churned
    last = df.sort_values("month").groupby("customer_key").tail(1)
    churned = df[df.churn == 1]
    assert churned.merge(last, on=["customer_key", "month"]).shape[0] == len(churned)
    check_no_pii(cfg, table)


def test_reload_only_when_stale(tmp_path):
    cfg = project(tmp_path)
    table, _ = sandbox.telco_table(120, bad_rows=False)
    sandbox.write_table(table, cfg.byod.path)
    _, _, first = B.byod_features(cfg)
    assert B.staged_load(cfg).fingerprint == first.fingerprint
    _, _, again = B.byod_features(cfg)
    assert again.fingerprint == first.fingerprint
    sandbox.write_table(table.iloc[:100], cfg.byod.path)
    df, _, third = B.byod_features(cfg)
    assert third.fingerprint != first.fingerprint and len(df) == 100


def test_column_spellings_across_files_and_age_band(tmp_path):
    cfg = project(tmp_path, "data/parts", byod_sensitive_columns="gender, age")
    table, _ = sandbox.telco_table(200, bad_rows=False, seed=3)
    table["age"] = [str(18 + (i * 7) % 60) for i in range(len(table))]
    a, b = (
        table.iloc[:100],
        table.iloc[100:].rename(columns={"customerID": "customer_id", "MonthlyCharges": "monthly charges"}),
    )
    sandbox.write_table(a, cfg.byod.path / "a.csv"); sandbox.write_table(b, cfg.byod.path / "b.parquet", fmt="parquet")
    df, spec, res = B.byod_features(cfg)
    assert res.rows_loaded == 200 and df["monthly_charges"].notna().all()
    assert set(df["age"].dropna()) <= {"18-24", "25-34", "35-44", "45-54", "55-64", "65+"} and "age" in spec.sensitive


@pytest.mark.parametrize("path,setup,message", [
    ("data/telco.csv", lambda p: None, "does not exist"),
    ("data/telco.xlsx", lambda p: (p.parent.mkdir(parents=True), p.write_text("x")), "is not a CSV or Parquet file"),
    ("data/telco", lambda p: (p.mkdir(parents=True), (p / "readme.md").write_text("x")),
     "holds no CSV or Parquet file (found: readme.md)"),
    ("data/empty.csv", lambda p: (p.parent.mkdir(parents=True), p.write_text("")), "has fewer than two columns"),
])
def test_clear_errors_for_missing_files(tmp_path, path, setup, message):
    cfg = project(tmp_path, path)
    setup(cfg.byod.path)
    with pytest.raises(SettingsError) as e:
        B.load_byod(cfg)
    assert message in str(e.value) and str(cfg.byod.path) in str(e.value)


def test_clear_errors_for_bad_contents(tmp_path):
    table, _ = sandbox.telco_table(80, bad_rows=False)
    cfg = project(tmp_path)
    sandbox.write_table(table.drop(columns=["customerID"]), cfg.byod.path)
    with pytest.raises(SettingsError,
                       match=r"id_column = 'customerID': no such column in .*telco.csv \(columns found: gender, "
                             r"SeniorCitizen"):
        B.load_byod(cfg)
    sandbox.write_table(table.drop(columns=["Churn"]), cfg.byod.path)
    with pytest.raises(SettingsError, match="target_column = 'Churn': no such column"):
        B.load_byod(cfg)
    multi = table.assign(Churn=["Yes", "No", "Later", "Never"] * 20)
    sandbox.write_table(multi, cfg.byod.path)
    with pytest.raises(SettingsError, match="label column 'Churn' of .* has more than two values"):
        B.load_byod(cfg)
    sandbox.write_table(table, cfg.byod.path)
    with pytest.raises(SettingsError, match="positive_value = 'True' never occurs .*values found: 'no'"):
        B.load_byod(project(tmp_path, byod_positive_value="True"))
    with pytest.raises(SettingsError, match="cannot be in both pii_columns and sensitive_columns"):
        B.load_byod(project(tmp_path, byod_pii_columns="name, gender"))
    with pytest.raises(SettingsError, match="time_column = 'month_ref': no such column"):
        B.load_byod(project(tmp_path, byod_time_column="month_ref"))
    bad = cfg.byod.path.with_name("broken.parquet")
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SettingsError, match=r"cannot read .*broken.parquet"):
        B.load_byod(project(tmp_path, byod_path="data/broken.parquet"))
    sandbox.write_table(table.assign(Churn="Maybe"), cfg.byod.path)
    with pytest.raises(SettingsError, match="never occurs"):
        B.load_byod(cfg)


def test_failed_load_leaves_warehouse_as_it_was(tmp_path):
    cfg = project(tmp_path)
    table, _ = sandbox.telco_table(100, bad_rows=False)
    sandbox.write_table(table, cfg.byod.path)
    B.byod_features(cfg)
    before = warehouse_tables(cfg)
    sandbox.write_table(table.drop(columns=["Churn"]), cfg.byod.path)
    with pytest.raises(SettingsError):
        B.byod_features(cfg)
    after = warehouse_tables(cfg)
    assert before.keys() == after.keys() and all(before[k].equals(after[k]) for k in before)


OUR_RULES = """# rules only the team knows, named as in its own CSV
rules:
  - name: charges_not_negative
    kind: range
    column: MonthlyCharges
    min: 0
  - name: charges_within_price_list
    kind: range
    column: MonthlyCharges
    max: {top}
    show: [customerID, MonthlyCharges]
  - name: tenure_mostly_known
    kind: completeness
    column: tenure
    max_null_share: 0.0
    severity: warning
"""


def test_a_teams_own_quality_rules_run_with_the_generated_ones(tmp_path):
    from mlops_nb import quality as Q
    from mlops_nb import rules
    cfg = project(tmp_path, byod_rules_file="rules/ours.yaml")
    assert cfg.byod.rules_file == str(tmp_path / "p" / "rules" / "ours.yaml")   # relative to the settings folder
    table, _ = sandbox.telco_table(300, seed=3)
    sandbox.write_table(table, cfg.byod.path)
    B.byod_features(cfg)
    rules_file = Path(cfg.byod.rules_file)
    rules_file.parent.mkdir()
    # a price list that every charge respects: the gate passes, with the team's rules on record
    rules_file.write_text(OUR_RULES.format(top=200), encoding="utf-8")
    report = Q.run_quality(cfg)
    assert report.passed and str(rules_file) in report.rules_source
    ours = [
        c
        for c in report.checks
        if c.rule in ("charges_not_negative", "charges_within_price_list", "tenure_mostly_known")
    ]
    assert {c.rule for c in ours} == {"charges_not_negative", "charges_within_price_list", "tenure_mostly_known"}
    assert all(c.table_name == "staging.byod" and c.column_name in ("monthly_charges", "tenure") for c in ours)
    assert {c.rule for c in report.checks} > {c.rule for c in ours}   # the generated rules still run
    # a tighter one: the phase stops, naming the rule, the warehouse column and example rows (pseudonymised)
    rules_file.write_text(OUR_RULES.format(top=80), encoding="utf-8")
    with pytest.raises(rules.QualityGateFailed) as e:
        Q.run_quality(cfg)
    msg = str(e.value)
    assert (
        "rule charges_within_price_list (range) on staging.byod.monthly_charges" in msg and '"customer_key": "p_' in msg
    )
    assert not any(cid in msg for cid in table["customerID"].dropna() if cid.strip())


@pytest.mark.parametrize("rules,message", [
    ("rules:\n  - {name: names_present, kind: completeness, column: name}\n", "'name' is personal data"),
    # found by the load, not declared
    ("rules:\n  - {name: emails_present, kind: completeness, column: email}\n", "'email' is personal data"),
    ("rules:\n  - {name: plan_known, kind: completeness, column: Plan}\n",
     "no column 'Plan' in staging.byod (columns: churn, contract"),
    ("rules:\n  - {name: byod_key_unique, kind: unique, columns: [customerID]}\n",
     "'byod_key_unique' is taken by a generated rule"),
    ("rules:\n  - {name: x, kind: range, column: tenure, mx: 3}\n", "rule 'x': unknown key 'mx'"),
    ("defaults:\n  severity: warning\n  tables: staging.byod\nrules: []\n", "unknown key 'tables' under defaults"),
    (None, "does not exist"),
])
def test_bad_team_rules_are_refused_naming_file_and_rule(tmp_path, rules, message):
    from mlops_nb.rules import QualityRulesError, load_rules
    cfg = project(tmp_path, byod_rules_file="ours.yaml", byod_pii_columns="name")
    sandbox.write_table(sandbox.telco_table(120, bad_rows=False)[0], cfg.byod.path)
    B.byod_features(cfg)
    if rules is not None: Path(cfg.byod.rules_file).write_text(rules, encoding="utf-8")
    with pytest.raises(QualityRulesError) as e:
        load_rules(cfg, say=lambda _: None)
    assert message in str(e.value) and "ours.yaml" in str(e.value)
