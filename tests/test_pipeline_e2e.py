"""The whole lifecycle through `mlops-nb run` on a small synthetic world: every phase leaves its records,
the gate-approved model reaches production, and no clear personal data reaches anything downstream."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import background_result, in_background, make_project, run_cli
from mlops_nb.runner import PHASES
from mlops_nb.settings import load_settings

pytestmark = pytest.mark.slow


@in_background("pipeline")
def _small_world(root: Path) -> tuple[list[str], Path]:
    """One full run on 3,000 customers x 8 months (stable scenario), shared by the checks below."""
    settings = make_project(root / "proj", lake_customers=3000, lake_months=8, lake_scenario="stable",
                            lake_drift_month=6, lake_schema_drift_month=5, train_trials=1,
                            # their blend too, so a blend may be what serves
                            train_candidates="logreg, hgb", train_blend_within=1.0,
                            # the fairness mitigation ships with the model: the lifecycle carries it to the API
                            gate_mitigation="group_thresholds")
    return ["--settings", str(settings), "run", "--no-progress"], settings


@pytest.fixture(scope="module")
def pipeline():
    """(settings path, the finished `mlops-nb run`), run in the background while the rest of the suite runs."""
    settings, r = background_result("pipeline")
    return settings, r


def test_every_phase_finishes_and_is_recorded(pipeline):
    settings, r = pipeline
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    run_dir = next((settings.parent / "reports/runs").iterdir())
    record = json.loads((run_dir / "manifest.json").read_text())
    assert [p["phase"] for p in record["phases"]] == [p.name for p in PHASES]
    assert all(p["status"] == "FINISHED" for p in record["phases"])
    # what each phase cost: CPU seconds of its kernel (at least its start-up) and its peak memory (a kernel with pandas
    # and MLflow loaded is well over 100 MB), within its wall time on two cores
    assert all(0.5 < p["cpu_seconds"] <= 2.2 * p["seconds"] + 1 and p["peak_rss_mb"] > 100 for p in record["phases"])
    for p in PHASES:
        assert (run_dir / p.notebook).exists() and not ((run_dir / p.notebook).stat().st_mode & 0o222)


def test_the_runs_audit_trail_verifies_and_reads_by_kind(pipeline):
    settings, _ = pipeline
    r = run_cli("--settings", str(settings), "audit", "verify")
    assert r.returncode == 0 and "audit trail intact" in r.stdout, (r.stdout, r.stderr)
    shown = run_cli("--settings", str(settings), "audit", "show", "--kind", "gate", "--json")
    kinds = {json.loads(line)["kind"] for line in shown.stdout.splitlines()}
    assert kinds == {"gate.decided"}, shown.stdout
    every = [json.loads(line) for line in run_cli("--settings", str(settings), "audit", "show", "--json").stdout
             .splitlines()]
    assert {"etl.loaded", "quality.verdict", "train.finished", "gate.decided", "model.status",
            "pipeline.run"} <= {e["kind"] for e in every}
    run = [e for e in every if e["kind"] == "pipeline.run"][-1]             # the run itself, last, with its phases
    assert run["details"]["status"] == "FINISHED" and set(run["details"]["phases"]) == {p.name for p in PHASES}
    load = next(e for e in every if e["kind"] == "etl.loaded")["details"]
    assert load["rows_loaded"] > 0 and len(load["content_hash"]) == 64   # aggregates and digests, no record


def test_the_pii_scan_finds_nothing_after_a_run_and_names_a_planted_canary(pipeline):
    settings, _ = pipeline
    cfg = load_settings(settings, env={})
    r = run_cli("--settings", str(settings), "pii", "scan")
    assert r.returncode == 0 and "no clear personal data" in r.stdout, (r.stdout, r.stderr[-3000:])
    email = next(v for v in _clear_pii_values(cfg) if "@" in v)
    # in the monitor's folder: a place this scan searches and the other tests of this module do not
    canary = cfg.paths.monitor / "canary-notes.txt"
    canary.parent.mkdir(parents=True, exist_ok=True)
    canary.write_text(f"to call back: {email}, cpf 123.456.789-09\n")
    try:
        r = run_cli("--settings", str(settings), "pii", "scan")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"{canary}: email (vault value)" in r.stderr and f"{canary}: cpf (pattern)" in r.stderr, r.stderr
        assert email not in r.stderr and "456.789" not in r.stderr                      # named, masked
    finally: canary.unlink()


def test_every_registered_version_has_its_documents_in_reports_and_mlflow(pipeline):
    from mlops_nb.tracking import MlflowClient, configure_mlflow
    settings, _ = pipeline
    cfg = load_settings(settings, env={})
    configure_mlflow(cfg)
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{cfg.mlflow.registered_model}'")
    assert versions
    for v in versions:
        folder = cfg.paths.reports / "documents" / f"v{v.version}"
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["impact_report.html", "impact_report.md", "record_of_processing.html",
                         "record_of_processing.md"], names
        ropa, dpia = (folder / "record_of_processing.md").read_text(), (folder / "impact_report.md").read_text()
        assert "## Legal basis" in ropa and "## Retention" in ropa and cfg.charter.objective in ropa
        assert "## Fairness" in dpia and "gap low" in dpia                  # the evaluated version's intervals
        logged = {a.path for a in client.list_artifacts(v.run_id, "documents")}
        assert logged == {f"documents/{n}" for n in names}


def test_the_records_show_figures_as_images(pipeline):
    "A run executes only the phase sections: their figures must still display as images, not as `<Figure size ...>`."
    import nbformat
    settings, _ = pipeline
    run_dir = next((settings.parent / "reports/runs").iterdir())
    outputs = {
        p.notebook: [
            o
            for c in nbformat.read(run_dir / p.notebook, as_version=4).cells
            if c.cell_type == "code"
            for o in c.outputs
        ]
        for p in PHASES
    }
    as_text = {
        nb: [
            o["data"]["text/plain"][:40]
            for o in outs
            if o.get("data", {}).get("text/plain", "").startswith("<Figure") and "image/png" not in o["data"]
        ]
        for nb, outs in outputs.items()
    }
    assert not any(as_text.values()), as_text
    # the profit curve and the importances
    assert sum("image/png" in o.get("data", {}) for o in outputs["46_evaluate.ipynb"]) >= 2


def test_the_gate_approved_model_is_in_production(pipeline):
    from mlops_nb import registry as R
    settings, r = pipeline
    cfg = load_settings(settings, env={})
    prod = R.version_with_status(cfg, "production")
    gate = R.latest_gate_run(cfg)
    assert gate is not None
    if gate.data.tags["mlops_nb.gate.approved"] == "true":
        assert prod is not None and prod.gate_approved and "champion" in prod.aliases
    else:  # a refusal is a legitimate outcome, but then nothing may serve
        assert prod is None, "a refused model must not reach production"
        pytest.fail(f"the gate refused the model on the default world: {gate.data.tags.get('mlops_nb.gate.failed')}")


def test_training_names_the_exact_dataset_it_used(pipeline):
    from mlops_nb.tracking import MlflowClient, configure_mlflow
    settings, _ = pipeline
    cfg = load_settings(settings, env={})
    configure_mlflow(cfg)
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"     # the UI opens on the runs
    feats = client.search_runs([exp.experiment_id], "tags.`mlops_nb.phase` = 'features'")[0]
    train = client.search_runs([exp.experiment_id], "tags.`mlops_nb.phase` = 'train'")[0]
    f_digests = {d.dataset.digest for d in feats.inputs.dataset_inputs}
    t_digests = {d.dataset.digest for d in train.inputs.dataset_inputs}
    assert f_digests and t_digests, "both phases log their datasets"
    assert train.data.tags.get("mlflow.source.git.commit"), "the code version is recorded"
    # lineage to the load: training names the warehouse content its features came from, and the gate judged the
    # data-quality run of exactly that content (not merely the latest run)
    from mlops_nb.catalog import TAG_FEATURES_SOURCE
    from mlops_nb.contracts import connect_warehouse, warehouse_content_hash
    with connect_warehouse(cfg) as con: loaded = warehouse_content_hash(con)
    assert loaded and train.data.tags.get(TAG_FEATURES_SOURCE) == loaded
    gate = client.search_runs([exp.experiment_id], "tags.`mlops_nb.phase` = 'gate'")[0]
    assert gate.data.tags["mlops_nb.gate.data_quality"] == "pass"
    assert f"training data's warehouse content ({loaded[:16]}" in gate.data.tags["mlops_nb.gate.data_quality.message"]


def _clear_pii_values(cfg) -> list[str]:
    """Every name, CPF, e-mail, phone and street address the lake's CRM holds (the needles)."""
    from mlops_nb.lake import read_raw
    months = sorted(p.name.split("=")[1] for p in (cfg.paths.lake / "crm_customers").iterdir())
    vals: set[str] = set()
    for m in months:
        crm = read_raw(cfg.paths.lake, "crm_customers", m)
        for col in ("nome", "cpf", "email", "telefone", "endereco"):
            vals |= set(crm[col].dropna().astype(str))
    return sorted(v for v in vals if len(v) >= 8)


def test_no_clear_personal_data_downstream(pipeline):
    from mlops_nb.contracts import connect_warehouse
    from mlops_nb.privacy import scan_for_values, scan_frame
    settings, _ = pipeline
    cfg = load_settings(settings, env={})
    needles = _clear_pii_values(cfg)
    assert len(needles) > 1000
    root = settings.parent
    # bytes of everything the run wrote except the lake itself, its oracle and the vault (the one allowed place)
    places = [cfg.paths.warehouse, root / "reports", cfg.mlflow.artifacts,
              Path(cfg.mlflow.tracking_uri[len("sqlite:///"):]),
              cfg.paths.audit.parent]
    found = scan_for_values([p for p in places if p.exists()], needles)
    assert found == [], found[:5]
    # and the decoded warehouse tables (compressed pages could hide text from a byte scan)
    with connect_warehouse(cfg) as con:
        tables = con.execute("select table_schema, table_name from information_schema.tables").fetchall()
        hits = []
        for schema, table in tables:
            df = con.execute(f'select * from "{schema}"."{table}" limit 200000').df()
            hits += scan_frame(df, needles, f"{schema}.{table}")
    assert hits == [], hits[:5]
    assert cfg.privacy.vault.exists() and oct(cfg.privacy.vault.stat().st_mode & 0o777) == "0o600"


def test_the_shipped_fairness_policy_decides_as_the_gate_judged_it(pipeline):
    """With [gate] mitigation = group_thresholds the evaluation's per-group policy is in the package: the packaged model
    and the API's fast path decide the test rows exactly as the evaluation (which the gate judged) did; without the
    attribute the plain threshold decides; the gate and the record of processing say so."""
    from mlops_nb.contracts import load_feature_table
    from mlops_nb.fairness import decisions_digest
    from mlops_nb.gate import find_evaluate_run, load_evaluation
    from mlops_nb.served import load_served_model
    from mlops_nb.split import training_split
    from mlops_nb.tracking import configure_mlflow, mlflow
    from mlops_nb import registry as R
    settings, _ = pipeline
    cfg = load_settings(settings, env={})
    configure_mlflow(cfg)
    doc, _ = load_evaluation(find_evaluate_run(cfg).info.run_id)
    m = doc["candidates"][doc["selected"]["index"]]["mitigation"]
    assert m and m["deployed"] and m["policy"]["rules"], m
    pyfunc = mlflow.pyfunc.load_model(doc["selected"]["model_uri"])
    policy = pyfunc.unwrap_python_model().policy
    assert policy.to_dict() == m["policy"]
    df, spec = load_feature_table(cfg)
    test = training_split(df, spec, cfg.train).test.reset_index(drop=True)
    assert policy.attribute in spec.sensitive and policy.attribute not in spec.features
    keys = test[spec.id_column].astype(str).tolist()
    out = pyfunc.predict(test[[*spec.features, policy.attribute, spec.id_column]])
    assert decisions_digest(keys, out.decision.to_numpy()) == m["decisions_digest"]
    assert int(out.decision.sum()) == m["decided"]
    plain = pyfunc.predict(test[list(spec.features)])
    assert (plain.decision == (plain.churn_probability >= plain.threshold)).all()
    assert (out.decision != plain.decision).any(), "the policy changes some decisions"
    # the served version: its fast path (what the API runs) decides the same rows the same way
    prod = R.version_with_status(cfg, "production")
    served = load_served_model(cfg, prod.version)
    assert served.policy is not None and served.policy.salt == policy.salt     # production is this evaluation's pick
    p = served.scorer.probabilities(served.scorer.encode_frame(test))
    d = served.decide(p, keys, [{policy.attribute: a} for a in test[policy.attribute].astype(object)], [])
    assert decisions_digest(keys, d) == m["decisions_digest"]
    # the gate names the mitigation and its price; the record of processing names the attribute's use
    gate = R.latest_gate_run(cfg)
    assert "mitigation in force" in gate.data.tags["mlops_nb.gate.fairness.message"]
    assert "mitigation costs R$" in gate.data.tags["mlops_nb.gate.profit.message"]
    ropa = (settings.parent / "reports" / "documents" / f"v{prod.version}" / "record_of_processing.md").read_text()
    assert f"per-group thresholds on {policy.attribute}" in ropa
    print(f"shipped: {policy.describe()}; {m['metric']} gap {m['before'][m['metric'] + '_gap']:.3f} -> "
          f"{m['after'][m['metric'] + '_gap']:.3f}, profit/month {m['before']['profit_per_month']:,.0f} -> "
          f"{m['after']['profit_per_month']:,.0f}")


def test_the_readme_curl_example_scores_with_the_served_champion(pipeline):
    """The README's serve command and curl example work against the model this run promoted."""
    import re
    import httpx
    from conftest import REPO, stop
    from serving_fixtures import start_api
    from mlops_nb import registry as R
    settings, _ = pipeline
    cfg = load_settings(settings, env={})
    prod = R.version_with_status(cfg, "production")
    assert prod is not None
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/mlops-nb serve" in readme
    m = re.search(r"curl -s -X POST '(http://127\.0\.0\.1:8000[^']+)' -H 'Content-Type: application/json' -d "
                  r"'(\{.*?\})'\n", readme, re.S)
    assert m, "the README has a curl example"
    url, body = m.group(1), json.loads(m.group(2))
    proc, base = start_api(settings, timeout=120)
    try:
        r = httpx.post(url.replace("http://127.0.0.1:8000", base), json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"]["version"] == prod.version and 0 <= out["churn_probability"] <= 1
        assert out["customer_key"].startswith("p_") and body["customer_id"] not in r.text
        assert {c["feature"] for c in out["explanation"]["contributions"]} == set(body["features"])
        served_policy = httpx.get(f"{base}/v1/model", timeout=30).json()["decision_policy"]
        assert served_policy, "this run ships a fairness policy ([gate] mitigation = group_thresholds)"
        # the policy decides over HTTP as the packaged model does, by the customer's pseudonym
        _api_decides_like_the_package(cfg, base, prod.version, served_policy["attribute"])
    finally:
        stop(proc)


def _api_decides_like_the_package(cfg, base: str, version: str, attribute: str) -> None:
    """80 feature-table rows sent with made-up customer ids and their group: the API's decisions equal the packaged
    model's on the same rows keyed by the pseudonyms the API returned; a record without the group gets the
    threshold's."""
    import httpx
    import pandas as pd
    from mlops_nb.contracts import load_feature_table
    from mlops_nb.encoder import json_records
    from mlops_nb.tracking import configure_mlflow, mlflow
    configure_mlflow(cfg)
    df, spec = load_feature_table(cfg)
    rows = df.sample(80, random_state=3).reset_index(drop=True)
    feats = json_records(rows, list(spec.features))
    groups = rows[attribute].astype(object).where(rows[attribute].notna(), None).tolist()
    records = [{"customer_id": f"TESTE{i:05d}", "features": f, "attributes": {attribute: g}}
               for i, (f, g) in enumerate(zip(feats, groups))] + [{"customer_id": "TESTE99999", "features": feats[0]}]
    r = httpx.post(f"{base}/v1/score/batch", json={"records": records}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model}/{version}")
    frame = rows[list(spec.features)].assign(**{attribute: rows[attribute],
                                                spec.id_column: [g["customer_key"] for g in got[:-1]]})
    ref = pyfunc.predict(frame)
    assert [g["decision"] for g in got[:-1]] == ref.decision.tolist()
    assert pd.Series([g["churn_probability"] for g in got[:-1]]).sub(ref.churn_probability).abs().max() < 1e-9
    assert got[-1]["decision"] == (got[-1]["churn_probability"] >= r.json()["threshold"])
