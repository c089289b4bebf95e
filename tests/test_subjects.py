"""Data-subject rights on a small operated world: an access export that holds everything, an erasure that leaves the
stores as if the person had never been in the lake (and a scan that finds nothing), a refusal while a contract is
active, and a retention purge that erases only who is due."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from conftest import make_project, run_cli
from mlops_nb.settings import load_settings

WORLD = dict(lake_customers=500, lake_months=7, lake_history_months=5, lake_drift_month=7,
             lake_schema_drift_month=0, gate_n_boot=50)


def clear_ids(cfg) -> dict[str, str]:
    """pseudonym → clear customer id, from the CRM's files (what the person would say when they ask)."""
    from mlops_nb.privacy import load_key, pseudonymise
    out = {}
    for f in sorted((cfg.paths.lake / "crm_customers").glob("month=*/clientes.csv")):
        ids = pd.read_csv(f, sep=";", encoding="latin-1", dtype=str, on_bad_lines="skip").id_cliente.dropna()
        ids = ids.str.strip().str.upper()
        out.update(zip(pseudonymise(ids.tolist(), load_key(cfg), "customer"), ids))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """History loaded and featured, a sandbox champion, one operated month; the ids of a departed and an active
    customer who were both scored."""
    from mlops_nb.erasure import departures
    from mlops_nb.features import write_features
    from mlops_nb.lake import generate_lake
    from mlops_nb.operate import operate
    from mlops_nb.sandbox import sandbox_champion
    from mlops_nb.subjects import logged_predictions
    from mlops_nb.warehouse import load_warehouse
    settings = make_project(tmp_path_factory.mktemp("subjects") / "p", **WORLD)
    cfg = load_settings(settings, env={})
    generate_lake(cfg); load_warehouse(cfg); write_features(cfg)
    v = sandbox_champion(cfg, params={"max_iter": 40}, threshold=0.05)
    operate(cfg, through="2025-06", say=lambda s: None)
    ids = clear_ids(cfg)
    dep = departures(cfg, sorted(ids))
    scored = set(logged_predictions(cfg, sorted(ids)).customer_key)
    from mlops_nb.train import load_training_keys
    from mlops_nb.tracking import configure_mlflow
    configure_mlflow(cfg)
    trained_on = load_training_keys(v.run_id)
    gone = next(k for k, m in dep.items() if m and k in trained_on and m < "2025-06")
    active = next(k for k, m in dep.items() if m is None and k in scored and k in trained_on)
    return settings, cfg, v.version, ids, gone, active


def test_access_export_holds_everything_about_the_person(world):
    from mlops_nb.subjects import logged_predictions, vault_record
    settings, cfg, version, ids, _, active = world
    r = run_cli("--settings", str(settings), "subject", "export", ids[active])
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.split("answered: ")[1].split(" (mode")[0])
    doc = json.loads(path.read_text())
    assert doc["pseudonym"] == active and doc["personal_data"] == vault_record(cfg, active)
    assert {"name", "cpf", "email"} <= set(doc["personal_data"])
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        for t in ("staging.customers", "staging.usage", "mart.customer_month", "features.customer_month",
                  "ops.actions"):
            n = con.execute(f"SELECT count(*) FROM {t} WHERE customer_key = ?", [active]).fetchone()[0]
            assert len(doc["warehouse"].get(t, [])) == n > 0, t
    log = logged_predictions(cfg, [active])
    assert len(doc["predictions"]) == len(log) > 0
    assert all(p["explanation"]["contributions"] and p["model_version"] == version for p in doc["predictions"])
    assert [v["version"] for v in doc["trained_model_versions"]] == [version]
    assert path.stat().st_mode & 0o777 == 0o600 and not path.is_relative_to(cfg.mlflow.artifacts)
    shown = [json.loads(x) for x in run_cli("--settings", str(settings), "audit", "show", "--kind", "subject",
                                            "--json").stdout.splitlines()]
    answer = next(e for e in shown if e["kind"] == "subject.exported")
    assert answer["subject"] == active and doc["personal_data"]["cpf"] not in json.dumps(answer)


def test_erasure_is_refused_while_the_contract_is_active(world):
    from mlops_nb.subjects import vault_record
    settings, cfg, _, ids, _, active = world
    r = run_cli("--settings", str(settings), "subject", "erase", ids[active], "--reason", "asked by e-mail")
    assert r.returncode == 1 and "active contract" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert vault_record(cfg, active)
    listed = [json.loads(x) for x in run_cli("--settings", str(settings), "subject", "requests", "--json")
              .stdout.splitlines()]
    assert any(q["kind"] == "erasure" and q["subject"] == active and q["status"] == "refused" for q in listed)


def _table_hashes(path: Path) -> dict[str, str]:
    from mlops_nb.warehouse import HASHED_TABLES, _table_hash
    with duckdb.connect(str(path), read_only=True) as con: return {t: _table_hash(con, t) for t in HASHED_TABLES}


def test_erasure_leaves_the_stores_as_if_the_person_had_never_been_in_the_lake(world, tmp_path):
    from mlops_nb.erasure import subject_needles
    from mlops_nb.privacy import NeedleSet
    from mlops_nb.subjects import request_status, warehouse_record
    from mlops_nb.tracking import MlflowClient, configure_mlflow
    from mlops_nb.warehouse import content_hash, load_warehouse, stored_content_hash
    settings, cfg, version, ids, gone, active = world
    needles = subject_needles(cfg, [gone], [ids[gone]])
    assert any("@" in n for n in needles) and warehouse_record(cfg, [gone])
    r = run_cli("--settings", str(settings), "subject", "erase", ids[gone], "--reason", "asked by e-mail")
    assert r.returncode == 0 and r.stdout.startswith("done"), (r.stdout, r.stderr)
    # nowhere outside the trail: every file, the lake, the databases (as bytes, after the rewrite)
    ns, lake_ns = NeedleSet(needles), NeedleSet([gone, ids[gone]])   # (the lake: namesakes share names and streets)
    places = [cfg.paths.lake, cfg.mlflow.artifacts, cfg.paths.reports, cfg.paths.prediction_log, cfg.paths.monitor,
              cfg.paths.outbox, cfg.paths.warehouse, cfg.privacy.vault]
    hits = [str(f) for p in places for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()
            and (lake_ns if f.is_relative_to(cfg.paths.lake) else ns).find(f.read_bytes())]
    assert hits == [], hits
    assert warehouse_record(cfg, [gone]) == {} and warehouse_record(cfg, [active])
    # the warehouse is what a fresh load of the erased lake gives, and its content hash is current
    fresh = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, warehouse=tmp_path / "fresh.duckdb"),
                                privacy=dataclasses.replace(cfg.privacy, vault=tmp_path / "vault.duckdb"))
    load_warehouse(fresh)
    assert _table_hashes(cfg.paths.warehouse) == _table_hashes(fresh.paths.warehouse)
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        assert content_hash(con) == stored_content_hash(con)
    # the trail holds the erasure (by pseudonym), still verifies; the version trained on them is flagged
    assert run_cli("--settings", str(settings), "audit", "verify").returncode == 0
    erased = [json.loads(x) for x in run_cli("--settings", str(settings), "audit", "show", "--kind",
                                             "subject.erased", "--json").stdout.splitlines()]
    assert erased[-1]["subject"] == gone and erased[-1]["details"]["status"] == "done"
    configure_mlflow(cfg)
    tag = MlflowClient().get_model_version(cfg.mlflow.registered_model, version).tags.get("mlops_nb.erased_subjects")
    assert tag == "1"
    assert request_status(cfg).query("subject == @gone and kind == 'erasure'").status.tolist() == ["done"]
    assert run_cli("--settings", str(settings), "pii", "scan").returncode == 0


def test_the_next_month_operates_after_an_erasure_without_reloading_the_past(world):
    from mlops_nb.operate import operate
    _, cfg, _, _, gone, _ = world
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con: loads = con.execute(
        "SELECT count(*) FROM meta.loads").fetchone()[0]
    res = operate(cfg, month="2025-07", say=lambda s: None)
    assert res[0].status == "ok", res[0]
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        last = con.execute("SELECT partitions_loaded FROM meta.loads ORDER BY finished_at DESC LIMIT 1").fetchone()[0]
        n = con.execute("SELECT count(*) FROM meta.loads").fetchone()[0]
        assert con.execute("SELECT count(*) FROM staging.usage WHERE customer_key = ?", [gone]).fetchone()[0] == 0
    assert n == loads + 1 and last == 7          # only the new month's seven partitions


def test_retention_purges_only_those_due(world):
    from mlops_nb.erasure import departures, purge_expired, retention_due
    from mlops_nb.subjects import vault_record, warehouse_record
    settings, cfg, _, ids, _, active = world
    short = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, retention_months=3))
    due = retention_due(short)
    dep = departures(cfg, sorted(ids))
    left_recently = [k for k, m in dep.items() if m and m >= "2025-05" and vault_record(cfg, k)]
    assert due and left_recently and not set(due) & set(left_recently) and active not in due
    assert all(m and m <= "2025-04" for m in departures(cfg, due).values())
    res = purge_expired(short, actor="scheduler")
    assert res.status == "done" and res.people == len(due), res
    assert warehouse_record(cfg, due) == {} and all(vault_record(cfg, k) for k in left_recently[:5])
    assert vault_record(cfg, active) and retention_due(short) == []


def test_a_review_names_the_deciding_version_and_its_explanation(world):
    from mlops_nb.served import load_served_model
    from mlops_nb.subjects import logged_predictions
    settings, cfg, version, ids, _, active = world
    row = logged_predictions(cfg, [active]).iloc[[0]]
    rid = str(row.request_id.iloc[0])
    r = run_cli("--settings", str(settings), "review", rid)               # a batch request: which customer?
    assert r.returncode == 2 and "--customer" in r.stderr, r.stderr
    r = run_cli("--settings", str(settings), "review", rid, "--customer", ids[active])
    assert r.returncode == 0 and f"version {version}" in r.stdout, (r.stdout, r.stderr)
    page = Path(next(ln.strip() for ln in r.stdout.splitlines() if ln.strip().endswith(".html")))
    doc = json.loads(page.with_suffix(".json").read_text())
    assert doc["decision_request_id"] == rid and doc["model"]["version"] == version
    assert abs(doc["churn_probability"] - float(row.churn_probability.iloc[0])) < 1e-12
    model = load_served_model(cfg, version)                              # the deciding version, loaded afresh
    vals = row[model.features].astype(object).where(row[model.features].notna(), None).values.tolist()
    expected = model.scorer.explain(model.scorer.records.encode_values(vals), vals)[0]
    assert [c["feature"] for c in doc["explanation"]["contributions"]] == \
        [c["feature"] for c in expected["contributions"]]
    text = page.read_text()
    assert "art. 20" in text and cfg.privacy.dpo_contact in text and doc["reasons"]["pt"][0].split(":")[0] in text
    assert page.stat().st_mode & 0o777 == 0o600


def test_fairness_is_judged_on_the_sensitive_attributes_the_settings_name(world):
    from mlops_nb.contracts import connect_warehouse, read_feature_spec
    from mlops_nb.features import write_features
    from mlops_nb.settings import SettingsError
    _, cfg, *_ = world
    gender = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, sensitive_attributes=("gender",)))
    with connect_warehouse(cfg) as con:
        assert read_feature_spec(con, cfg).sensitive == ("gender", "age_band")
        assert read_feature_spec(con, gender).sensitive == ("gender",)
    wrong = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, sensitive_attributes=("race",)))
    with pytest.raises(SettingsError, match="no race"): write_features(wrong)


def test_a_correction_reaches_the_warehouse_at_the_next_load(world):
    from mlops_nb.subjects import vault_record
    from mlops_nb.warehouse import content_hash, load_warehouse, stored_content_hash
    settings, cfg, _, ids, _, active = world
    bad = run_cli("--settings", str(settings), "subject", "correct", ids[active], "--field", "birth_date",
                  "--value", "15/01/1950")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr and "Traceback" not in bad.stderr
    r = run_cli("--settings", str(settings), "subject", "correct", ids[active], "--field", "birth_date",
                "--value", "1950-01-15")
    assert r.returncode == 0, r.stderr
    assert vault_record(cfg, active)["birth_date"] == "1950-01-15"
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        before = set(con.execute("SELECT birth_year FROM staging.customers WHERE customer_key = ?", [active])
                     .df().birth_year)
    assert before and before != {1950}
    res = load_warehouse(cfg)
    assert 0 < len(res.loaded) <= 7 and {s for s, _ in res.loaded} == {"crm_customers"}   # what it covers
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        assert set(con.execute("SELECT birth_year FROM staging.customers WHERE customer_key = ?", [active])
                   .df().birth_year) == {1950}
        assert set(con.execute("SELECT age_band FROM mart.customer_month WHERE customer_key = ?", [active])
                   .df().age_band) == {"65+"}
        assert content_hash(con) == stored_content_hash(con)
    assert load_warehouse(cfg).loaded == []                               # applied once, not at every load
    shown = run_cli("--settings", str(settings), "audit", "show", "--kind", "subject.corrected", "--json").stdout
    assert '"field": "birth_date"' in shown and "1950" not in shown
