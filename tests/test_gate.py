"""The promotion gate: worse, unfair and unservable candidates are refused for the right reason; overrides need a
written reason and are recorded."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd
import pytest

from mlops_nb.audit import read_events, verify_chain
from mlops_nb.scorecard import evaluate_scores
from mlops_nb.gate import (GATE_CHECKS, Evidence, GateDecision, GateOverrideError, candidate_evidence, decide,
                           override_gate,
                           quality_status, record_decision, reference_evidence, run_gate)
from mlops_nb.settings import CharterSettings, GateSettings, sandbox_settings
from mlops_nb.tracking import MlflowClient, mlflow, phase_run

CHARTER = CharterSettings()
GATE = GateSettings(mitigation="none", n_boot=200, min_group_rows=50)


def world(n: int, seed: int):
    "Labels from a latent risk; models are noisy views of it (more noise = worse ranking)."
    r = np.random.default_rng(seed)
    z = r.normal(0, 1, n)
    y = (r.random(n) < 1 / (1 + np.exp(-(-2.2 + 1.6 * z)))).astype(int)
    group = r.choice(["A", "B"], n)
    def model(noise: float, s: int, bias_b: float = 0.0):
        zz = z + np.random.default_rng([s, 999]).normal(0, noise, n) - bias_b * (group == "B")
        return 1 / (1 + np.exp(-(-2.2 + 1.6 * zz / np.sqrt(1 + noise ** 2))))
    return y, group, model


def evidence_for(name: str, seed_valid: int, seed_test: int, noise: float, bias_b: float = 0.0) -> Evidence:
    """Evaluate a model the way the evaluate phase does, then read its evidence back the way the gate does (a fresh copy
    each call)."""
    return dataclasses.replace(_evidence(name, seed_valid, seed_test, noise, bias_b))


@functools.lru_cache(maxsize=None)
def _evidence(name: str, seed_valid: int, seed_test: int, noise: float, bias_b: float = 0.0) -> Evidence:
    yv, gv, mv = world(20_000, seed_valid)
    yt, gt, mt = world(20_000, seed_test)
    pv, pt = mv(noise, 1, bias_b), mt(noise, 1, bias_b)
    ev = evaluate_scores(name, yv, pv, yt, pt, CHARTER, GATE, months=np.repeat("2025-12", len(yt)),
                         sensitive=pd.DataFrame({"group": gt}), sensitive_valid=pd.DataFrame({"group": gv}), seed=0)
    ev.info.update(scores_column="p", run_id=f"run-{name}", model_uri=f"models:/{name}")
    scores = pd.DataFrame({"y": yt, "p": ev.calibrator(pt) if ev.calibrator else pt})
    e = candidate_evidence(dict(candidates=[ev.to_dict()], selected=dict(index=0), rows_digest="rows-1"), scores)
    e.quality = dict(status="passed", detail="quality run q1")
    e.servability = dict(ok=True, p50_ms=2.0, p99_ms=6.0)
    return e


def champion_for(seed_test: int, noise: float) -> Evidence:
    yt, _, mt = world(20_000, seed_test)
    return Evidence("champion v1", "champion", yt, mt(noise, 2), "rows-1")


def test_a_good_candidate_passes_with_every_reason_listed():
    d = decide(evidence_for("good", 1, 2, noise=0.5), champion_for(2, noise=0.6), GATE, CHARTER)
    assert d.approved, d.summary()
    assert [r.check for r in d.reasons] == list(GATE_CHECKS) and all(r.passed and r.message for r in d.reasons)
    perf = d.reason("performance")
    assert perf.limit == -GATE.auc_tolerance and perf.value > perf.limit and "CI" in perf.message


def test_a_candidate_worse_than_the_champion_is_refused_for_performance():
    d = decide(evidence_for("worse", 1, 2, noise=1.2), champion_for(2, noise=0.5), GATE, CHARTER)
    assert not d.approved
    assert [r.check for r in d.failed] == ["performance"]
    assert "may be worse than champion v1" in d.reason("performance").message
    # the decision rests on the interval, not the point: a tie within noise passes non-inferiority
    tie = decide(evidence_for("tie", 1, 2, noise=0.5), champion_for(2, noise=0.5), GATE, CHARTER).reason("performance")
    assert tie.passed and tie.value < 0 < tie.value + 0.03
    # with no champion the naive baseline is the comparison
    e = evidence_for("good", 1, 2, noise=0.5)
    base = reference_evidence(dict(rows_digest="rows-1", baseline=dict(name="baseline: tenure")),
                              pd.DataFrame({"y": e.y, "baseline": e.y * 0.1 + 0.5}), None)
    assert base.kind == "baseline" and base.name == "baseline: tenure"
    # scores of other rows cannot be compared
    stale = dataclasses.replace(champion_for(2, 0.6), rows_digest="rows-2")
    assert "other test rows" in decide(e, stale, GATE, CHARTER).reason("performance").message


def test_an_unfair_candidate_is_refused_for_fairness():
    # group B's risk under-estimated: B's churners less often offered
    e = evidence_for("unfair", 1, 2, noise=0.5, bias_b=1.5)
    d = decide(e, champion_for(2, noise=0.9), GATE, CHARTER)
    assert not d.approved and "fairness" in [r.check for r in d.failed]
    f = d.reason("fairness")
    assert f.value > CHARTER.max_fairness_gap == f.limit and "by group" in f.message
    # the same gaps pass a laxer charter
    lax = decide(e, champion_for(2, noise=0.9), GATE, dataclasses.replace(CHARTER, max_fairness_gap=0.9))
    assert lax.reason("fairness").passed


def test_a_challenger_over_the_fairness_limit_passes_only_if_no_wider_than_the_champions_own_gap():
    """Where the champion itself breaches the limit on the same rows, a challenger no worse on each gap over it is not
    refused for fairness (keeping the worse model would not make the service fairer); a wider gap is, and so is any
    gap over the limit when [gate] fairness_vs_champion is off."""
    e = evidence_for("unfair", 1, 2, noise=0.5, bias_b=1.5)
    over = [g for g in e.fairness_gaps if g.get("gated") and g["difference"] > CHARTER.max_fairness_gap]
    assert over
    def champion_with(extra: float) -> Evidence:
        return dataclasses.replace(champion_for(2, noise=0.9), fairness_gaps=[
            dict(attribute=g["attribute"], metric=g["metric"], difference=g["difference"] + extra) for g in over])
    wider = decide(e, champion_with(+0.05), GATE, CHARTER).reason("fairness")
    assert wider.passed and "no wider than champion v1's own gap" in wider.message
    assert wider.value > CHARTER.max_fairness_gap                       # the breach is still reported as it is
    narrower = decide(e, champion_with(-0.05), GATE, CHARTER).reason("fairness")
    assert not narrower.passed and "wider than champion v1's own on the same rows" in narrower.message
    strict = dataclasses.replace(GATE, fairness_vs_champion=False)
    assert not decide(e, champion_with(+0.05), strict, CHARTER).reason("fairness").passed


def test_calibration_profit_quality_and_servability_each_refuse():
    e, ch = evidence_for("good", 1, 2, noise=0.5), champion_for(2, noise=0.6)
    assert decide(dataclasses.replace(e, ece=0.2), ch, GATE, CHARTER).reason("calibration").passed is False
    assert decide(e, ch, dataclasses.replace(GATE, min_profit=1e9), CHARTER).reason("profit").passed is False
    q = decide(dataclasses.replace(e, quality=dict(status="failed", detail="run q2")), ch, GATE,
               CHARTER).reason("data_quality")
    assert not q.passed and "failed" in q.message
    u = decide(dataclasses.replace(e, quality=dict(status="unknown", detail="no quality.runs table")), ch, GATE,
               CHARTER).reason("data_quality")
    assert u.passed and u.message.startswith("UNKNOWN") and "quality.runs" in u.message
    slow = decide(dataclasses.replace(e, servability=dict(ok=True, p50_ms=40, p99_ms=120)), ch, GATE,
                  CHARTER).reason("servability")
    assert not slow.passed and slow.value == 120 and slow.limit == GATE.max_latency_ms
    broken = decide(dataclasses.replace(e, servability=dict(ok=False, error="ModuleNotFoundError: torch")), ch, GATE,
                    CHARTER)
    assert "does not serve: ModuleNotFoundError" in broken.reason("servability").message


def test_quality_status_reads_the_warehouse(tmp_path):
    import duckdb
    cfg = sandbox_settings(tmp_path / "p")
    assert quality_status(cfg)["status"] == "unknown"                      # no warehouse yet
    cfg.paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(cfg.paths.warehouse)) as con: con.execute("CREATE TABLE t (x INT)")
    assert "no quality.runs table" in quality_status(cfg)["detail"]
    with duckdb.connect(str(cfg.paths.warehouse)) as con:
        con.execute("CREATE SCHEMA quality; CREATE TABLE quality.runs (run_id VARCHAR, finished_at TIMESTAMP, passed "
                    "BOOLEAN)")
        con.execute("INSERT INTO quality.runs VALUES ('q2', '2025-06-02 10:00', false), ('q1', '2025-06-01 10:00', "
                    "true)")
    # the latest run counts
    assert quality_status(cfg) | {"detail": ""} == dict(status="failed", run_id="q2", detail="")


def test_quality_status_judges_the_load_the_model_was_trained_on(tmp_path):
    """A later load that passed does not vouch for a model trained on an earlier load that failed — nor the reverse."""
    import duckdb
    cfg = sandbox_settings(tmp_path / "p")
    cfg.paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(cfg.paths.warehouse)) as con:
        con.execute("CREATE SCHEMA quality; CREATE TABLE quality.runs (run_id VARCHAR, finished_at TIMESTAMP, passed "
                    "BOOLEAN, warehouse_content_hash VARCHAR)")
        con.execute("INSERT INTO quality.runs VALUES ('q1', '2025-06-01 10:00', false, 'load-A'), ('q2', '2025-06-02 "
                    "10:00', true, 'load-B'), ('q3', '2025-06-03 10:00', true, 'load-A')")
    assert quality_status(cfg)["run_id"] == "q3"                                    # no lineage: the latest run
    assert quality_status(cfg, "load-B") | {"detail": ""} == dict(status="passed", run_id="q2", detail="")
    # re-checked after a fix: the latest check of A
    a = quality_status(cfg, "load-A")
    assert (a["status"], a["run_id"]) == ("passed", "q3") and "load-A" in a["detail"]
    with duckdb.connect(str(cfg.paths.warehouse)) as con: con.execute("DELETE FROM quality.runs WHERE run_id = 'q3'")
    assert quality_status(cfg, "load-A")["status"] == "failed"                        # B passing does not vouch for A
    u = quality_status(cfg, "load-C")
    assert u["status"] == "unknown" and "no quality run checked" in u["detail"]


def test_quality_status_judges_the_months_the_training_used(tmp_path):
    """A run that failed in a month the training did not use (or only on a held-back partition) vouches for it; a
    failure in a month it used, or on a whole table, does not."""
    import duckdb
    cfg = sandbox_settings(tmp_path / "p")
    cfg.paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(cfg.paths.warehouse)) as con:
        con.execute("CREATE SCHEMA quality; CREATE TABLE quality.runs (run_id VARCHAR, finished_at TIMESTAMP, passed "
                    "BOOLEAN); CREATE TABLE quality.results (run_id VARCHAR, severity VARCHAR, month VARCHAR, passed "
                    "BOOLEAN, held BOOLEAN)")
        con.execute("INSERT INTO quality.runs VALUES ('q1', '2025-09-01 10:00', false)")
        con.execute("INSERT INTO quality.results VALUES ('q1', 'blocking', '2025-08', false, false), ('q1', "
                    "'warning', '2025-09', false, false), ('q1', 'blocking', '2025-07', false, true), ('q1', "
                    "'blocking', '2025-09', true, false)")
    used_after = quality_status(cfg, months=["2025-09", "2025-10"])
    assert used_after["status"] == "passed" and "failures only in 2025-08" in used_after["detail"]
    # a held-back partition's failure does not count: its month is left out of the training data
    assert quality_status(cfg, months=["2025-07"])["status"] == "passed"
    assert quality_status(cfg, months=["2025-08", "2025-09"])["status"] == "failed"
    assert quality_status(cfg)["status"] == "failed"                                  # months unknown: every one
    with duckdb.connect(str(cfg.paths.warehouse)) as con:
        con.execute("INSERT INTO quality.results VALUES ('q1', 'blocking', NULL, false, false)")
    assert quality_status(cfg, months=["2025-10"])["status"] == "failed"             # a whole-table failure


@pytest.fixture
def refused(tmp_path):
    "A refusal recorded on a real gate run (real MLflow store, real audit trail)."
    cfg = sandbox_settings(tmp_path / "p")
    with phase_run(cfg, "train") as cand: pass                                # stands for the candidate's run
    e = dataclasses.replace(evidence_for("worse", 1, 2, noise=1.2), run_id=cand.info.run_id,
                            model_uri="models:/m-worse")
    ref = champion_for(2, noise=0.5)
    with phase_run(cfg, "gate") as run: pass
    d = dataclasses.replace(decide(e, ref, GATE, CHARTER), run_id=run.info.run_id)
    record_decision(cfg, run.info.run_id, d, e, ref, "eval-run-1", actor="scheduler")
    return cfg, run.info.run_id, cand.info.run_id


def test_a_decision_is_recorded_on_the_run_and_in_the_audit_trail(refused):
    cfg, gate_run, cand_run = refused
    tags = MlflowClient().get_run(gate_run).data.tags
    assert tags["mlops_nb.gate.approved"] == "false" and tags["mlops_nb.gate.failed"] == "performance"
    assert tags["mlops_nb.gate.performance"] == "fail" and tags["mlops_nb.gate.fairness"] == "pass"
    assert (
        "may be worse" in tags["mlops_nb.gate.performance.message"]
        and tags["mlops_nb.gate.compared_with"] == "champion v1"
    )
    recorded = mlflow.artifacts.load_dict(f"runs:/{gate_run}/gate/decision.json")
    assert GateDecision.from_dict(recorded["decision"]).reason("performance").passed is False
    assert MlflowClient().get_run(cand_run).data.tags["mlops_nb.gate.approved"] == "false"
    (event,) = read_events(cfg, "gate.decided")
    assert event.subject == "models:/m-worse" and not event.details["approved"] and event.actor == "scheduler"
    assert [r["check"] for r in event.details["reasons"]] == list(GATE_CHECKS)


def test_an_override_needs_a_written_reason_and_is_recorded(refused):
    cfg, gate_run, cand_run = refused
    for bad in ("", "   ", "ok ship it"):
        with pytest.raises(GateOverrideError, match="written reason of at least 20 characters"):
            override_gate(cfg, gate_run, bad, actor="ana")
    assert MlflowClient().get_run(gate_run).data.tags["mlops_nb.gate.approved"] == "false"   # nothing changed
    assert not list(read_events(cfg, "gate.override"))
    with pytest.raises(GateOverrideError):                      # the phase refuses a bad reason before doing anything
        run_gate(cfg, override_reason="because")
    reason = "Champion v1 mis-scores the new fibre plans (INC-2291); accepted by the model owner until retraining."
    d = override_gate(cfg, gate_run, reason, actor="ana")
    assert d.approved and d.overridden and d.override_actor == "ana" and not d.reason("performance").passed
    tags = MlflowClient().get_run(gate_run).data.tags
    assert (tags["mlops_nb.gate.approved"], tags["mlops_nb.gate.overridden"], tags["mlops_nb.gate.override_reason"],
            tags["mlops_nb.gate.override_actor"], tags["mlops_nb.gate.decision"]) == ("true", "true", reason, "ana",
                                                                                      "refused")
    (event,) = read_events(cfg, "gate.override")
    assert (event.actor, event.details["reason"], event.details["overridden_checks"]) == ("ana", reason,
                                                                                          ["performance"])
    assert MlflowClient().get_run(cand_run).data.tags["mlops_nb.gate.approved"] == "true"
    assert verify_chain(cfg) == (True, None)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    "A sandbox where the demo table, one training run and one evaluate run stand in for the earlier phases."
    from mlops_nb.evaluate import run_evaluate
    from mlops_nb.sandbox import ensure_demo_features
    from mlops_nb.train import run_train
    cfg = sandbox_settings(tmp_path_factory.mktemp("gate") / "p", train_candidates="logreg", train_trials=1,
                           gate_n_boot=100,
                           gate_fairness_bound="point")
    ensure_demo_features(cfg, n_customers=800, n_months=5)
    run_train(cfg)
    return cfg, run_evaluate(cfg)


def test_an_unservable_candidate_is_refused_end_to_end(pipeline):
    cfg, _ = pipeline
    d = run_gate(dataclasses.replace(cfg, gate=dataclasses.replace(cfg.gate, max_latency_ms=0.1)))
    s = d.reason("servability")
    assert (
        not d.approved
        and not s.passed
        and s.value > 0.1
        and "loads in a fresh process" in s.message
        and "> 0.1 ms" in s.message
    )
    assert [r.check for r in d.reasons] == list(GATE_CHECKS)
    # the sandbox warehouse has no quality.runs table
    assert d.reason("data_quality").message.startswith("UNKNOWN")
    assert d.reason("performance").message.startswith("AUC difference vs baseline: ")
    tags = MlflowClient().get_run(d.run_id).data.tags
    assert tags["mlops_nb.gate.servability"] == "fail" and tags["mlops_nb.gate.approved"] == "false"
    assert list(read_events(cfg, "gate.decided"))[-1].details["gate_run_id"] == d.run_id


def test_the_champion_is_the_comparison_once_there_is_one(pipeline):
    from mlops_nb.evaluate import run_evaluate
    cfg, res = pipeline
    client = MlflowClient()
    mv = mlflow.register_model(res.evaluations[0].info["model_uri"], cfg.mlflow.registered_model)
    client.set_registered_model_alias(cfg.mlflow.registered_model, "champion", mv.version)
    again = run_evaluate(cfg)                                   # the champion is scored on the same test rows
    assert again.document["champion"]["version"] == str(mv.version)
    d = run_gate(cfg, evaluate_run_id=again.run_id)
    perf = d.reason("performance")
    # the same model: no difference
    assert perf.message.startswith(f"AUC difference vs champion v{mv.version} +0.0000") and perf.passed
    mv2 = mlflow.register_model(res.evaluations[0].info["model_uri"], cfg.mlflow.registered_model)
    # the alias moves after the evaluation
    client.set_registered_model_alias(cfg.mlflow.registered_model, "champion", mv2.version)
    stale = run_gate(cfg, evaluate_run_id=again.run_id).reason("performance")
    assert not stale.passed and "re-run the evaluation" in stale.message
    assert f"the champion changed since the evaluation (it scored v{mv.version})" in stale.message


def test_a_champion_the_evaluation_could_not_score_is_named_with_the_error():
    "Seen for real: a champion pickled by an older package version failed to load; the gate said only 'not scored'."
    doc = dict(rows_digest="rows-1", champion=dict(version="2", model_uri="models:/m/2",
                                                   error="could not score the test rows: AttributeError: no attribute "
                                                         "'numeric_basis'"))
    ref = reference_evidence(doc, pd.DataFrame({"y": [0, 1]}), dict(version="2", model_uri="models:/m/2"))
    cand = Evidence("hgb", "candidate", np.array([0, 1]), np.array([0.2, 0.8]), "rows-1")
    perf = decide(cand, ref, GATE, CHARTER).reason("performance")
    assert (
        not perf.passed
        and "AttributeError: no attribute 'numeric_basis'" in perf.message
        and perf.message.startswith("champion v2 was not scored")
    )
