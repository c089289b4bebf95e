"""The quality phase: rules parse from YAML (clear errors naming the rule), the drift scenario's billing bug is caught
with
rule, column and example rows, the stable scenario passes, warning rules do not stop, results and runs are stored, and
an
HTML report is produced.

Real lakes (small), real warehouses, real MLflow stores.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlops_nb import quality as Q
from mlops_nb import staging as C
from mlops_nb import rules as R
from mlops_nb.contracts import connect_warehouse
from mlops_nb.lake import generate_lake
from mlops_nb.people import month_labels
from mlops_nb.settings import sandbox_settings
from mlops_nb.warehouse import load_warehouse

REPO = Path(__file__).resolve().parents[1]


def build(root: Path, scenario: str, **kw):
    cfg = sandbox_settings(root, lake_customers=1500, lake_months=6, lake_drift_month=4, lake_scenario=scenario, **kw)
    generate_lake(cfg)
    load_warehouse(cfg)
    return cfg


@pytest.fixture(scope="module")
def stable(tmp_path_factory):
    return build(tmp_path_factory.mktemp("stable"), "stable")


@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    return build(tmp_path_factory.mktemp("drift"), "drift")


# --- rules as data ---------------------------------------------------------------------------------------------------

def test_packaged_rules_and_the_repository_file_agree_and_parse():
    assert (REPO / "quality_rules.yaml").read_text(encoding="utf-8") == R.DEFAULT_RULES
    rules = R.parse_rules(R.DEFAULT_RULES)
    kinds = {r.kind for r in rules}
    assert {"completeness", "range", "allowed_values", "unique", "referential", "freshness", "volume",
            "distribution"} <= kinds
    assert {r.severity for r in rules} == {"blocking", "warning"}


@pytest.mark.parametrize("body, expected", [
    ("rules:\n  - {name: r1, kind: completenes, table: staging.usage, column: data_gb}",
     "rule 'r1': unknown kind 'completenes'"),
    ("rules:\n  - {name: r2, kind: range, table: staging.usage, column: data_gb}",
     "rule 'r2': a range needs min, max or both"),
    ("rules:\n  - {name: r3, kind: range, table: staging.usage, column: data_gb, max: lots}",
     "rule 'r3': max must be a number"),
    ("rules:\n  - {name: r4, kind: unique, table: staging.usage, columns: [a], severity: fatal}",
     "rule 'r4': severity must be blocking or warning"),
    ("rules:\n  - {name: r5, kind: completeness, table: usage, column: data_gb}",
     "rule 'r5': `table` must be schema.table"),
    ("rules:\n  - {name: r6, kind: completeness, table: staging.usage, column: data_gb, max_null_share: 2}",
     "rule 'r6': max_null_share must be between 0 and 1"),
    ("rules:\n  - {name: r7, kind: referential, table: staging.usage, column: customer_key}",
     "rule 'r7': missing ref_table"),
    ("rules:\n  - {name: r8, kind: unique, table: staging.usage, columns: [a], colour: red}",
     "rule 'r8': unknown key 'colour'"),
    ("rules:\n  - {name: r9, kind: unique, table: staging.usage, columns: [a]}\n  - {name: r9, kind: unique, table: "
     "staging.usage, columns: [b]}", "rule 'r9' is declared twice"),
    ("rules:\n  - {kind: unique, table: staging.usage, columns: [a]}", "rule #1: `name` must be"),
    ("rules:\n  - name: r10\n    kind: [unclosed\n", "not valid YAML (line"),
    ("checks: []", "expected a mapping with a `rules:` list"),
])
def test_malformed_rules_give_clear_errors(tmp_path, body, expected):
    cfg = sandbox_settings(tmp_path)
    cfg.quality.rules_file.write_text(body, encoding="utf-8")
    with pytest.raises(R.QualityRulesError) as e:
        R.load_rules(cfg)
    assert expected in str(e.value) and str(cfg.quality.rules_file) in str(e.value)


def test_missing_rules_file_falls_back_to_the_packaged_defaults_and_says_so(tmp_path):
    cfg = sandbox_settings(tmp_path)
    said = []
    rules, source = R.load_rules(cfg, say=said.append)
    assert source == "packaged defaults" and len(rules) == len(R.parse_rules(R.DEFAULT_RULES))
    assert "no rules file" in said[0] and "packaged default rules" in said[0]


# --- the gate
# ----------------------------------------------------------------------------------------------------------

def test_the_drift_scenarios_billing_bug_is_caught(drift, capsys):
    bug_month = month_labels(drift.lake.start_month, drift.lake.months)[drift.lake.drift_month - 1]
    with pytest.raises(R.QualityGateFailed) as e:
        Q.run_quality(drift)
    msg = str(e.value)
    assert "rule billing_amount_median_shift (distribution) on staging.billing.amount" in msg
    assert f"month {bug_month}" in msg and "e.g. {" in msg and '"invoice_id"' in msg and '"amount"' in msg
    assert "x the previous months'" in msg
    with connect_warehouse(drift) as con:
        run = con.execute("SELECT run_id, passed, failed_blocking FROM quality.runs ORDER BY finished_at DESC LIMIT "
                          "1").fetchone()
        failed = con.execute("SELECT rule, month FROM quality.results WHERE run_id = ? AND NOT passed AND severity = "
                             "'blocking'", [run[0]]).fetchall()
    assert run[1] is False and run[2] >= 1
    assert ("billing_amount_median_shift", bug_month) in failed
    assert all(rule == "billing_amount_median_shift" for rule, _ in failed)    # the bug, and nothing else, blocks


def test_the_stable_scenario_passes_and_results_are_stored(stable):
    report = Q.run_quality(stable)
    assert report.passed and not report.blocking
    with connect_warehouse(stable) as con:
        run = con.execute("SELECT run_id, passed, rules, checks, failed_blocking FROM quality.runs WHERE run_id = ?",
                          [report.run_id]).fetchone()
        n = con.execute("SELECT count(*), count(DISTINCT rule) FROM quality.results WHERE run_id = ?",
                        [report.run_id]).fetchone()
    assert run[1] is True and run[2] == len(report.rules) and run[3] == n[0] == len(report.checks) and run[4] == 0
    assert n[1] == len(report.rules)


def test_the_promotion_gate_reads_the_latest_quality_run(stable, drift):
    gate = pytest.importorskip("mlops_nb.gate")
    Q.run_quality(stable)
    assert gate.quality_status(stable)["status"] == "passed"
    with pytest.raises(R.QualityGateFailed): Q.run_quality(drift)
    assert gate.quality_status(drift)["status"] == "failed"


def test_warning_rules_only_warn(stable):
    rules = R.DEFAULT_RULES + """  - name: voice_minutes_never_missing
    kind: completeness
    table: staging.usage
    column: voice_minutes
    max_null_share: 0
    severity: warning
"""
    stable.quality.rules_file.write_text(rules, encoding="utf-8")
    try:
        with pytest.warns(UserWarning,
                          match="data quality warning: rule voice_minutes_never_missing on "
                                "staging.usage.voice_minutes"):
            report = Q.run_quality(stable)
    finally:
        stable.quality.rules_file.unlink()
    assert report.passed and any(c.rule == "voice_minutes_never_missing" and not c.passed for c in report.checks)
    assert report.rules_source == str(stable.quality.rules_file)


def test_a_rule_on_a_missing_table_fails_saying_why(stable):
    stable.quality.rules_file.write_text("rules:\n  - {name: ghost, kind: completeness, table: staging.ghost, column: "
                                         "x}\n", encoding="utf-8")
    try:
        with pytest.raises(R.QualityGateFailed, match="rule ghost .*cannot evaluate: .*ghost"):
            Q.run_quality(stable)
    finally:
        stable.quality.rules_file.unlink()


def test_html_report_and_mlflow_logging(drift, tmp_path):
    from mlflow.tracking import MlflowClient
    with pytest.raises(R.QualityGateFailed):
        Q.run_quality(drift)
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name(drift.mlflow.experiment).experiment_id],
                             order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FAILED" and run.data.tags["mlops_nb.phase"] == "quality"
    assert run.data.metrics["rule_billing_amount_median_shift"] == 0.0 and run.data.metrics["rule_usage_fresh"] == 1.0
    rid, here = run.info.run_id, str(tmp_path)
    page = Path(client.download_artifacts(rid, "quality/report.html", here)).read_text(encoding="utf-8")
    assert (
        "Data quality report" in page
        and "FAILED" in page
        and "billing_amount_median_shift" in page
        and "<table>" in page
    )
    local = drift.paths.reports / "quality" / f"quality-{run.info.run_id}.html"
    assert local.read_text(encoding="utf-8") == page
    results = json.loads(Path(client.download_artifacts(rid, "quality/results.json", here)).read_text())
    assert any(r["rule"] == "billing_amount_median_shift" and not r["passed"] for r in results)


def test_corrections_are_declared_beside_the_rules_and_refused_when_malformed():
    doc = R.read_rules_doc(R.DEFAULT_RULES + """corrections:
  - {name: usage_in_mb, source: usage, column: data_gb, from_month: 2025-03, multiply: 0.001, reason: sent in MB}
""")
    (fix,) = C.corrections_from_doc(doc)
    assert C.partition_scale([fix], "usage", "2026-01") == {"data_gb": 0.001}     # open-ended: from its month on
    assert C.partition_scale([fix], "usage", "2025-02") == {}
    assert C.corrections_digest([fix], "billing", "2025-03") == ""
    bad = {"name": "x", "source": "usage", "column": "data_gb", "from_month": "2025-03", "multiply": 0.001,
           "reason": "r"}
    for change, message in ((dict(multiply=0), "multiply must be a finite number other than 0"),
                            (dict(source="bills"), "unknown source 'bills'"),
                            (dict(column="customer_key"), "usage has no numeric column 'customer_key'"),
                            (dict(through_month="2025-01"), "through_month is before from_month"),
                            (dict(reason=""), "missing reason"),
                            (dict(why="typo"), "unknown key 'why'")):
        with pytest.raises(C.CorrectionsError, match=message):
            C.corrections_from_doc({"corrections": [{**bad, **change}]}, "quality_rules.yaml")
    # a malformed correction is refused with the rules, before anything runs
    with pytest.raises(R.QualityRulesError, match="unknown source 'bills'"):
        R.parse_rules(R.DEFAULT_RULES + "corrections:\n  - " + str({**bad, "source": "bills"}) + "\n", "q.yaml")
