"""The features phase: point-in-time features (no leakage, proved by changing the future), labels checked against
the simulator's oracle, the MLflow dataset, and the byod delegation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mlops_nb import features as F
from mlops_nb import sandbox
from mlops_nb.catalog import TABLE_FEATURES
from mlops_nb.contracts import connect_warehouse, frame_digest, load_feature_table
from mlops_nb.lake import generate_lake, read_truth
from mlops_nb.privacy import load_key, pseudonymise
from mlops_nb.settings import sandbox_settings

LATE = dict(lake_customers=600, lake_months=6, lake_drift_month=4, lake_schema_drift_month=4, lake_late_rate=0.15,
            lake_campaign_share=0.2)
CUT = "2025-03"   # the month whose features must not move


def run_etl(cfg) -> None:
    from mlops_nb.warehouse import load_warehouse
    load_warehouse(cfg)


def features_of(cfg) -> pd.DataFrame:
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{cfg.paths.warehouse}' AS w (READ_ONLY)")
        con.execute("USE w")
        table = F.build_features(con, cfg.features.horizon_months)
        return con.execute(f"SELECT * FROM {table}").df()


def upto(df: pd.DataFrame, month: str, label: bool = False) -> pd.DataFrame:
    cols = [c for c in df.columns if label or c != "churned_next"]
    return df.loc[df["month"] <= month, cols].sort_values(["month", "customer_key"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    cfg = sandbox_settings(root / "full", privacy_key_file=str(root / "secrets" / "key"), **LATE)
    generate_lake(cfg)
    run_etl(cfg)
    return root, cfg, features_of(cfg)


def test_labels_and_rows_match_the_oracle(world):
    _, cfg, df = world
    truth = read_truth(cfg.paths.oracle)
    truth["customer_key"] = pseudonymise(truth["customer_id"], load_key(cfg), "customer")
    m = truth.merge(df, on=["customer_key", "month"], how="outer", indicator=True, suffixes=("_true", ""))
    # rows: the active customer-months (the ETL may quarantine a few)
    assert (m["_merge"] == "both").mean() > 0.99
    both = m[m["_merge"] == "both"]
    assert both["churned_next"].isna().equals(both["churned_next_true"].isna())
    lab = both.dropna(subset=["churned_next"])
    assert (lab["churned_next"].astype(int) == lab["churned_next_true"].astype(int)).mean() > 0.995
    assert df.loc[df.month == df.month.max(), "churned_next"].isna().all()
    assert not df.duplicated(["customer_key", "month"]).any()
    # the rows are the ETL mart's active customer-months
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        mart = con.execute("SELECT customer_key, month FROM mart.customer_month").df()
    rows = df[["customer_key", "month"]].merge(mart, how="outer", indicator=True)["_merge"]
    assert (rows != "left_only").all() and (rows == "both").mean() > 0.999


def lake_as_of(root: Path, full, last: str):
    """A copy of the full lake as it stood at the end of `last` (later partitions removed), loaded by the ETL."""
    cut = sandbox_settings(root / f"as-of-{last}", privacy_key_file=str(root / "secrets" / "key"), **LATE)
    shutil.copytree(full.paths.lake, cut.paths.lake)
    for p in list(cut.paths.lake.glob("*/month=*")):
        if p.name.split("=")[1] > last: shutil.rmtree(p)
    manifest = json.loads((cut.paths.lake / "_manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["month"] <= last]
    (cut.paths.lake / "_manifest.json").write_text(json.dumps(manifest))
    run_etl(cut)
    return cut


def test_no_leakage_when_the_lake_stops_at_month_m(world):
    """The lake as it stood at the end of CUT (later partitions, with their late arrivals about CUT, not there yet)
    gives exactly the same features for every month up to CUT as the full lake."""
    root, full, df = world
    cut = lake_as_of(root, full, CUT)
    early = features_of(cut)
    pd.testing.assert_frame_equal(upto(early, CUT), upto(df, CUT), check_exact=True)
    assert early["month"].max() == CUT and early.loc[early.month == CUT, "churned_next"].isna().all()


def test_label_grace_waits_for_late_cancellations(world):
    """Read at the end of 2025-05, the last labelled months miss churners whose cancellation records arrive later
    (the world's late rate is 15%, delays of one or two months): those labels say 0 where the full lake says 1. Each
    month of grace leaves fewer such labels, two leave none, and the phase's estimate of the share still missing
    falls to zero with them."""
    root, full, df = world
    cut = lake_as_of(root, full, "2025-05")
    final = df.set_index(["customer_key", "month"])["churned_next"].rename("final")
    premature, missing, labelled = {}, {}, {}
    for grace in (0, 1, 2):
        with duckdb.connect() as con:
            con.execute(f"ATTACH '{cut.paths.warehouse}' AS w (READ_ONLY)"); con.execute("USE w")
            got = con.execute("SELECT customer_key, month, churned_next FROM "
                              f"{F.build_features(con, 1, grace_months=grace)}").df()
            missing[grace] = F.unlabelled_churn_share(F.cancellation_lateness(con), grace)
        lab = got.dropna(subset=["churned_next"]).join(final, on=["customer_key", "month"], how="inner")
        labelled[grace] = sorted(lab.month.unique())
        assert ((lab.churned_next == 1) <= (lab.final == 1)).all(), (
            "a label read early can only miss a churner, never invent one"
        )
        premature[grace] = int(((lab.churned_next == 0) & (lab.final == 1)).sum())
    assert labelled[0][-1] == "2025-04" and labelled[2][-1] == "2025-02" and len(labelled[2]) == 2
    assert premature[0] > premature[2] == 0 and premature[0] >= premature[1] >= premature[2]
    assert missing[0] > 0.05 and missing[0] >= missing[1] >= missing[2] == 0.0


def perturb_future(con, cut: str) -> list[str]:
    """Change and add staging records that were not known by the end of `cut`: later events, later states of
    earlier records, and late arrivals about `cut` that arrived after it. Column names come from the features'
    own mapping of the ETL's staging tables; returns the customers whose (late-known or later) cancellation
    requests end them after `cut`."""
    cmap = F.staging_columns(con)
    types = {t: dict(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                                 f"'staging' AND table_name = '{t}'").fetchall())
             for t in cmap}
    nxt = (pd.Period(cut, "M") + 1).strftime("%Y-%m")
    def col(t: str, c: str) -> str: return f'"{cmap[t][c]}"'
    def month(t: str, c: str, ym: str) -> str:   # a month literal in the column's own type
        return f"'{ym}'" if types[t][cmap[t][c]] == "VARCHAR" else f"CAST(DATE '{ym}-01' AS {types[t][cmap[t][c]]})"
    def day(t: str, c: str, d: str) -> str: return f"CAST(TIMESTAMP '{d}' AS {types[t][cmap[t][c]]})"
    key = lambda t: col(t, "customer_key")  # noqa: E731
    who = lambda n, off: (
        f"(SELECT {key('usage')} AS k FROM staging.usage WHERE {col('usage', 'month')} = "
        f"{month('usage', 'month', cut)} ORDER BY 1 LIMIT {n} OFFSET {off})"
    )  # noqa: E731
    ended = [r[0] for r in con.execute(f"SELECT k FROM {who(40, 40)}").fetchall()]
    after = lambda t, c: f"{col(t, c)} >= {day(t, c, nxt + '-01')}"  # noqa: E731
    con.execute(f"UPDATE staging.usage SET {col('usage', 'data_gb')} = {col('usage', 'data_gb')} * 3 + 1, "
                f"{col('usage', 'dropped_call_rate')} = 0.4 WHERE {col('usage', 'month')} > "
                f"{month('usage', 'month', cut)}")
    con.execute(f"UPDATE staging.billing SET {col('billing', 'amount')} = {col('billing', 'amount')} + 1000, "
                f"{col('billing', 'paid_date')} = NULL WHERE {col('billing', 'reference_month')} > "
                f"{month('billing', 'reference_month', cut)}")
    con.execute(f"UPDATE staging.billing SET {col('billing', 'paid_date')} = {col('billing', 'paid_date')} + INTERVAL "
                f"5 DAY WHERE {after('billing', 'paid_date')}")
    con.execute(f"UPDATE staging.tickets SET {col('tickets', 'satisfaction')} = 1, {col('tickets', 'resolved')} = NOT "
                f"{col('tickets', 'resolved')} WHERE {after('tickets', 'closed_at')}")
    con.execute(f"UPDATE staging.customers SET {col('customers', 'gender')} = 'O' WHERE {col('customers', 'arrival')} "
                f"> {month('customers', 'arrival', cut)}")
    con.execute(f"UPDATE staging.contracts SET {col('contracts', 'monthly_fee')} = 999 WHERE "
                f"{after('contracts', 'event_date')}")
    def insert(t: str, values: dict, rows: str) -> None:
        vals = {cmap[t][c]: v for c, v in values.items()}
        sel = ", ".join(f"{vals.get(c, 'NULL')} AS \"{c}\"" for c in types[t])
        con.execute(f"INSERT INTO staging.{t} SELECT {sel} FROM {rows} w")
    arrive = lambda t: {"customer_key": "w.k", "arrival": month(t, "arrival", nxt)}  # noqa: E731
    # late arrivals about `cut`, arriving in the next partition
    insert("tickets",
           arrive("tickets") | dict(opened_at=day("tickets", "opened_at", f"{cut}-20 10:00:00"), resolved="false",
                                    satisfaction="1"), who(40, 0))
    insert("billing",
           arrive("billing") | dict(reference_month=month("billing", "reference_month", cut),
                                    issue_date=day("billing", "issue_date", f"{cut}-20"),
                                               due_date=day("billing", "due_date", f"{cut}-21"), amount="5000"),
                                               who(40, 0))
    insert("contracts",
           arrive("contracts") | dict(event_type="'plan_change'",
                                      event_date=day("contracts", "event_date", f"{cut}-20"), product="'fibre'",
                                                   plan="'Fibra 1GB'", contract_type="'two_year'", monthly_fee="1.0",
                                                   payment_method="'pix'"), who(40, 0))
    insert("campaigns", arrive("campaigns") | dict(month=month("campaigns", "month", cut), contacted="true"),
           who(40, 0))
    insert("cancellations",
           arrive("cancellations") | dict(request_date=day("cancellations", "request_date", f"{cut}-20")), who(20, 40))
    # later events
    insert("cancellations",
           arrive("cancellations") | dict(request_date=day("cancellations", "request_date", f"{nxt}-15")), who(20, 60))
    insert("customers",
           arrive("customers") | dict(gender="'N'", signup_date=day("customers", "signup_date", "2000-01-01")),
           who(40, 0))
    insert("usage",
           arrive("usage") | dict(customer_key="'p_newcomer_' || w.k", month=month("usage", "month", cut), data_gb="1"),
           who(40, 0))
    return ended


def test_no_leakage_when_the_future_changes(world, tmp_path):
    """Editing and adding staging records of later months — including late arrivals about CUT — leaves every
    month up to CUT exactly as it was, while later months and CUT's label do change."""
    _, cfg, before = world
    copy = sandbox_settings(tmp_path, privacy_key_file=str(cfg.privacy.key_file), **LATE)
    copy.paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(cfg.paths.warehouse, copy.paths.warehouse)
    with duckdb.connect(str(copy.paths.warehouse)) as con:
        gone = perturb_future(con, CUT)
    after = features_of(copy)
    pd.testing.assert_frame_equal(upto(after, CUT), upto(before, CUT), check_exact=True)
    nxt = (pd.Period(CUT, "M") + 1).strftime("%Y-%m")
    assert not upto(after, nxt).equals(upto(before, nxt))                       # the perturbation is real ...
    assert not upto(after, CUT, label=True).equals(upto(before, CUT, label=True))   # ... and labels may look ahead
    b, a = (x[x.month == nxt].set_index("customer_key") for x in (before, after))
    # a late-known or next-month request ends a customer
    assert set(b.index) - set(a.index) == set(gone) & set(b.index) and len(gone) == 40
    # a late usage record is no activity in its month
    assert not after["customer_key"].str.startswith("p_newcomer_").any()
    hit = a.index.intersection(b.index)
    assert (a.loc[hit, "tickets_3m"] >= b.loc[hit, "tickets_3m"]).all() and a.loc[hit, "tickets_3m"].sum() > b.loc[
        hit, "tickets_3m"
    ].sum()


def test_history_windows_on_the_tiny_world():
    con = duckdb.connect()
    sandbox.tiny_staging(con)
    f = con.execute(f"SELECT * FROM {F.build_features(con, 2)}").df().set_index(["customer_key", "month"])
    # horizon 2: a request in April labels February (and would label March, but March + 2 is not loaded yet)
    assert f.loc["p_b", "churned_next"].fillna(-1).tolist() == [0, 1, -1]
    assert f.loc["p_a", "churned_next"].isna().tolist() == [False, False, True, True]


def test_run_features_logs_a_dataset(world, tmp_path):
    _, cfg, df = world
    res = F.run_features(cfg)
    table, spec = load_feature_table(cfg, untreated=False)   # every row written
    assert res.rows == len(table) and spec == F.feature_spec(cfg.features.horizon_months)
    assert set(spec.sensitive) == {"gender", "age_band"} and not set(spec.sensitive) & set(spec.features)
    pd.testing.assert_frame_equal(table.sort_values(["month", "customer_key"]).reset_index(drop=True),
                                  df.sort_values(["month", "customer_key"]).reset_index(drop=True), check_dtype=False)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
                                     "tags.`mlops_nb.phase` = 'features'")[0]
    ds = run.inputs.dataset_inputs[0].dataset
    # the digest the train phase records for this table
    assert ds.name == TABLE_FEATURES and ds.digest == frame_digest(table) == res.summary["digest"]
    assert str(cfg.paths.warehouse) in ds.source and "churned_next" in ds.schema
    # the schema (read from a sample) is MLflow's own reading of every row
    from mlflow.types.utils import _infer_schema
    from mlops_nb.tracking import quiet_dataset_warnings
    with quiet_dataset_warnings(): whole = _infer_schema(table)
    assert json.loads(ds.schema)["mlflow_colspec"] == whole.to_dict()
    # columns with missing values are optional
    assert any(not c["required"] for c in json.loads(ds.schema)["mlflow_colspec"])
    assert "features/spec.json" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "features")]
    assert run.data.metrics["rows"] == len(table)
    assert run.data.params["features_label_grace_months"] == "0"
    # late rate 15%
    assert 0.05 < run.data.metrics["cancellations_late_share"] == run.data.metrics["label_missing_churn_share"] < 0.3


def test_byod_source_delegates(tmp_path):
    from mlops_nb import sandbox
    cfg = sandbox_settings(tmp_path, lake_source="byod", byod_path="data/t.csv", byod_id_column="customerID",
                           byod_target_column="Churn",
                           byod_positive_value="Yes", byod_sensitive_columns="gender", byod_pii_columns="name")
    sandbox.write_table(sandbox.telco_table(150)[0], cfg.byod.path)
    assert not sandbox.ensure_upstream(cfg)
    res = F.run_features(cfg)
    table, spec = load_feature_table(cfg)
    assert spec.source == "byod" and res.rows == len(table) and spec.time_column is None


def test_missing_staging_is_a_clear_error(tmp_path):
    cfg = sandbox_settings(tmp_path)
    with connect_warehouse(cfg, read_only=False) as con:
        con.execute("CREATE SCHEMA staging"); con.execute("CREATE TABLE staging.usage AS SELECT 1 AS x")
    with pytest.raises(Exception,
                       match=r"staging.customers does not exist[\s\S]*staging.usage has no customer_key column"):
        F.write_features(cfg)
