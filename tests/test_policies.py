"""Offer policies (37_offer_policy, 59_policies): a planted effect found by the offset learner, the judgement that
approves only a policy better beyond doubt, the risk policy registered first, a promotion and a rollback in the audit
trail, and an uplift policy in production deciding batch scoring and the campaign."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import exploration_world, run_cli
from mlops_nb.contracts import FeatureSpec
from mlops_nb.offer_policy import POLICY_UPLIFT, OfferPolicy, explain_offer, judge_policy
from mlops_nb.settings import CharterSettings
from mlops_nb.uplift import RISK_COLUMN, fit_offset_uplift, qini_coefficient

SPEC = FeatureSpec(id_column="customer_key", time_column="month", target="churned_next", numeric=("x", "z"),
                   categorical=("plan",))
CHARTER = CharterSettings()


def planted(n: int, seed: int, bias: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Randomised rows whose offer keeps customers with x > 0 and provokes those with x < 0, with a risk model's
    probability (off by `bias` in log-odds); the true uplift returned."""
    r = np.random.default_rng(seed)
    x, z = r.normal(size=n), r.normal(size=n)
    t = (r.random(n) < 0.5).astype(int)
    base = 1 / (1 + np.exp(-(-1.5 + 0.8 * z)))
    offered = 1 / (1 + np.exp(-(-1.5 + 0.8 * z - 1.2 * x)))
    y = (r.random(n) < np.where(t == 1, offered, base)).astype(int)
    risk = 1 / (1 + np.exp(-(-1.5 + 0.8 * z + bias)))
    return pd.DataFrame({"customer_key": [f"k{i}" for i in range(n)], "month": "2025-01", "x": x, "z": z,
                         "plan": r.choice(["a", "b"], n), "churned_next": y, "t": t, "e": 0.5,
                         "accepted": t * (r.random(n) < 0.2 + 0.3 * (x > 0)), RISK_COLUMN: risk}), base - offered


def test_the_offset_learner_recovers_a_planted_effect_even_from_a_biased_risk_model():
    test, true = planted(20_000, 2)
    for bias in (0.0, 0.7):                     # a risk model 0.7 log-odds too high: its recalibration absorbs it
        m = fit_offset_uplift(planted(8000, 1, bias)[0], SPEC)
        u = m.uplift(test.assign(**{RISK_COLUMN: planted(20_000, 2, bias)[0][RISK_COLUMN]}))
        assert np.corrcoef(u, true)[0, 1] > 0.9, bias
        assert abs(m.recalibration + bias) < 0.25, (bias, m.recalibration)
        assert qini_coefficient(u, test.churned_next, test.t) > 0.8 * qini_coefficient(true, test.churned_next,
                                                                                         test.t)
    # acceptance, learnt on the offered rows, follows x as planted (20 % below 0, 50 % above)
    acc = m.acceptance(test)
    assert abs(acc[test.x < -0.5].mean() - 0.2) < 0.05 and abs(acc[test.x > 0.5].mean() - 0.5) < 0.05


def test_the_judgement_approves_only_a_policy_better_beyond_doubt_and_explains_an_offer():
    learn, held = planted(8000, 1)[0], planted(8000, 2)[0]
    policy = OfferPolicy(POLICY_UPLIFT, CHARTER, fit_offset_uplift(learn, SPEC))
    offer = policy.decide(held, held[RISK_COLUMN].to_numpy()).offer.to_numpy()
    by_risk = held[RISK_COLUMN].to_numpy() > 0.3
    assert judge_policy(offer, by_risk, held, "churned_next", CHARTER, n_boot=200).approved
    assert not judge_policy(held.x.to_numpy() < 0, by_risk, held, "churned_next", CHARTER, n_boot=200).approved
    # against itself the difference is exactly 0: never "better beyond doubt"
    same = judge_policy(offer, offer, held, "churned_next", CHARTER, n_boot=200)
    assert not same.approved and same.difference["value_per_customer"] == 0
    why = explain_offer(policy, held.iloc[:50], held[RISK_COLUMN].to_numpy()[:50])
    for w, o in zip(why, offer[:50]):
        assert w["offered"] == bool(o) and (w["net_value"] > 0) == bool(o)
        assert "R$" in w["reason"] and set(w["effect_by_feature"]) <= {"x", "z", "plan"}
    # the feature the effect depends on moves it most, and an offered customer's effect is a cut in churn
    top = [max(w["effect_by_feature"], key=lambda k: abs(w["effect_by_feature"][k])) for w in why]
    assert top.count("x") > 40
    assert all(w["churn_with_offer"] < w["churn_without_offer"] for w in why if w["offered"])


def con_actions_arm(cfg, month: str) -> pd.DataFrame:
    "customer_key and arm of month `month`'s action log."
    from mlops_nb.contracts import connect_warehouse
    with connect_warehouse(cfg) as con:
        return con.execute("SELECT customer_key, arm FROM ops.actions WHERE month = ?", [month]).df()


def in_production(cfg, kind: str) -> str:
    "Put the newest offer policy of `kind` in production (the phase first, if it never ran); its version."
    from mlops_nb.catalog import STATUS_PRODUCTION
    from mlops_nb.policies import policy_table, run_policy
    from mlops_nb.registry import policy_settings, promote, version_with_status
    pcfg = policy_settings(cfg)
    if not len(policy_table(cfg)): run_policy(cfg)
    v = policy_table(cfg).query(f"kind == '{kind}'").version.iloc[0]
    if version_with_status(pcfg, STATUS_PRODUCTION).version != v:
        promote(pcfg, v, "test", "test", override_reason=f"the test of a {kind} policy in production")
    return v


def uplift_in_production(cfg) -> str:
    "Put an uplift policy of the world in production (the phase first, if it never ran); its version."
    return in_production(cfg, "uplift")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """2,000 customers x 7 months, 40 % of them in each month's exploration campaign, and a champion."""
    from mlops_nb.sandbox import sandbox_champion
    settings, cfg = exploration_world(tmp_path_factory.mktemp("policies") / "p")
    sandbox_champion(cfg, params={"max_iter": 60})
    return settings, cfg


def test_the_phase_registers_the_risk_policy_then_judges_an_uplift_policy_and_a_switch_is_audited(world):
    from mlops_nb.audit import read_events
    from mlops_nb.catalog import AUDIT_MODEL_STATUS, STATUS_PRODUCTION
    from mlops_nb.policies import policy_table, run_policy
    from mlops_nb.registry import policy_settings, version_with_status
    from mlops_nb.served import load_offer_policy
    settings, cfg = world
    res = run_policy(cfg)
    pcfg = policy_settings(cfg)
    t = policy_table(cfg).set_index("version")
    assert t.loc["1", "kind"] == "risk" and t.loc["1", "status"] == STATUS_PRODUCTION and t.loc["1", "approved"]
    assert res.version == "2" and t.loc["2", "kind"] == "uplift" and res.family in res.qini_by_family
    assert t.loc["2", "approved"] == res.approved and t.loc["2", "reason"].startswith("value per customer")
    assert res.verdict["difference"]["lower"] <= res.verdict["difference"]["value_per_customer"]
    assert "candidate_share_captured" in res.oracle                      # the simulator's value beside the estimate
    # proposing again (a person, through the command line) registers no second risk policy: it judges a new uplift
    # policy against the one in force, as a tracked phase run
    r = run_cli("--settings", str(settings), "policy", "propose", "--actor", "ana")
    assert r.returncode == 0 and "uplift policy version 3" in r.stdout, r.stderr[-2000:]
    assert (policy_table(cfg).kind == "risk").sum() == 1
    assert [e.actor for e in read_events(cfg, AUDIT_MODEL_STATUS) if e.details["model"] == pcfg.mlflow.registered_model
            and e.details["version"] == "3"][0] == "ana"
    # a refused proposal the new one supersedes is archived (audited, not deleted); an approved one is left alone
    t = policy_table(cfg).set_index("version")
    archived = [e for e in read_events(cfg, AUDIT_MODEL_STATUS) if e.details["model"] == pcfg.mlflow.registered_model
                and e.details["version"] == "2" and e.details["to_status"] == "archived"]
    if res.approved: assert t.loc["2", "status"] != "archived" and not archived
    else:
        assert t.loc["2", "status"] == "archived" and "refused earlier proposals archived: v2" in r.stdout
        assert archived[0].actor == "ana" and archived[0].details["reason"].startswith("superseded by uplift policy v3")
    # a person switches to the uplift policy (with a written reason when the gate refused it) and rolls back: both
    # are promotions in the audit trail, through the command line
    args = ["--settings", str(settings), "policy", "promote", "2", "--reason", "trial month", "--actor", "ana"]
    if not res.approved: args += ["--override-reason", "a trial month of the uplift policy"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_offer_policy(cfg).uses_uplift and version_with_status(pcfg, STATUS_PRODUCTION).version == "2"
    r = run_cli("--settings", str(settings), "policy", "rollback", "--reason", "trial over", "--actor", "ana")
    assert r.returncode == 0 and "version 1" in r.stdout, r.stderr[-2000:]
    assert not load_offer_policy(cfg).uses_uplift
    ev = [e for e in read_events(cfg, AUDIT_MODEL_STATUS) if e.details["model"] == pcfg.mlflow.registered_model]
    promoted = [e for e in ev if e.details["to_status"] == STATUS_PRODUCTION]
    assert [(e.details["version"], e.actor) for e in promoted[-2:]] == [("2", "ana"), ("1", "ana")]
    assert promoted[-1].details["reason"].startswith("rollback: trial over")
    assert promoted[-2].details.get("override") == (not res.approved)
    listed = run_cli("--settings", str(settings), "policy", "list")
    assert listed.returncode == 0 and "uplift" in listed.stdout and "risk" in listed.stdout, listed.stderr[-2000:]
    # the model's own registry is untouched by the policy's promotions
    assert version_with_status(cfg, STATUS_PRODUCTION).version == "1"


def test_an_uplift_policy_in_production_decides_batch_scoring_and_the_campaign(world):
    from mlops_nb.campaign import month_scores, run_campaign
    from mlops_nb.contracts import connect_warehouse
    from mlops_nb.prediction_log import read_prediction_log
    from mlops_nb.score import score_month
    settings, cfg = world
    v = uplift_in_production(cfg)
    res = score_month(cfg, "2025-07")
    log = read_prediction_log(cfg, source="batch")
    log = log[log.request_id == res.request_id]
    assert len(log) == res.rows and (log.policy_version == v).all()
    assert log.expected_uplift.notna().all() and log.net_value.notna().all()
    assert (log.decision == (log.net_value > 0)).all() and res.contacts == int(log.decision.sum())
    scores = month_scores(cfg, "2025-07", res.request_id)
    assert scores.net_value.notna().all()
    camp = run_campaign(cfg, "2025-07", res.request_id, res.model_version)
    with connect_warehouse(cfg) as con:
        acts = con.execute("SELECT customer_key, action, policy, model_version, p, expected_profit, expected_uplift "
                           "FROM ops.actions WHERE month = '2025-07'").df()
    assert set(acts.policy) == {f"uplift@{v}", "charter-rule"}     # the risk policy decides the challenger's arm
    assert camp.challenger == "risk@1" and camp.challenger_customers > 0
    acts = acts.merge(con_actions_arm(cfg, "2025-07"), on="customer_key")
    theirs = acts[acts.arm == "challenger"]
    assert (theirs.policy == "charter-rule").all() and theirs.expected_uplift.isna().all()
    picked = theirs[theirs.action.isin(["contact", "control"])]
    assert (picked.p >= scores.threshold.iloc[0]).all()              # the risk policy's decision: the threshold
    acts = acts[acts.arm == "champion"]
    assert set(acts.policy) == {f"uplift@{v}"}
    chosen = acts[acts.action.isin(["contact", "control"])]
    assert len(chosen) + len(picked) == camp.selected and (chosen.expected_profit > 0).all()
    # each action carries the uplift the policy expected of it, and the ROI's expectation is that promise
    logged = chosen.merge(log[["customer_key", "expected_uplift"]], on="customer_key", suffixes=("", "_logged"))
    assert len(logged) == len(chosen) and np.allclose(logged.expected_uplift, logged.expected_uplift_logged)
    from mlops_nb.roi import month_roi
    g = acts.assign(month="2025-07", y=0.0, accepted=None)
    expected = month_roi(g, cfg.charter)["expected_retained"]
    listed = acts[acts.action == "contact"]
    assert expected == pytest.approx(listed.expected_uplift.sum())
    assert expected != pytest.approx((listed.p * cfg.charter.save_rate).sum())
    if camp.capped:                              # a short budget goes to the highest net values
        left = acts[(acts.action == "not_selected") & (acts.expected_profit > 0)]
        assert chosen.expected_profit.min() >= left.expected_profit.max()


def test_the_api_answers_with_the_uplift_policys_figures_and_logs_them(world, tmp_path):
    import httpx
    from conftest import stop
    from serving_fixtures import latest_records, start_api
    from mlops_nb.prediction_log import read_prediction_log
    from mlops_nb.served import load_offer_policy
    settings, cfg = world
    v = uplift_in_production(cfg)
    records, keys = latest_records(cfg, limit=40)
    log = tmp_path / "api.log"
    proc, url = start_api(settings, env={"MLOPS_API__LOG_FLUSH_SECONDS": "0.3"}, log=log)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            info = c.get("/v1/model").json()["offer_policy"]
            assert info["kind"] == "uplift" and info["version"] == v
            one = c.post("/v1/score", json={"features": records[0], "customer_id": "C-1"}).json()
            batch = c.post("/v1/score/batch", json={"records": [{"features": r} for r in records]}).json()
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    # the answers are the policy's, on the same values the batch path would decide on
    from mlops_nb.contracts import load_feature_table
    df, spec = load_feature_table(cfg)
    df = df[df[spec.time_column] == df[spec.time_column].max()].head(40)
    want = load_offer_policy(cfg).policy.decide(df, np.array([p["churn_probability"] for p in batch["predictions"]]))
    got = pd.DataFrame(batch["predictions"])
    assert np.allclose(got.expected_uplift, want.expected_uplift, atol=1e-6)
    assert np.allclose(got.net_value, want.net_value, atol=0.01)
    assert (got.decision == (got.net_value > 0)).all() and one["decision"] == (one["net_value"] > 0)
    logged = read_prediction_log(cfg, source="api")
    logged = logged[logged.request_id.isin({one["request_id"], batch["request_id"]})]
    assert len(logged) == 41 and (logged.policy_version == v).all() and logged.net_value.notna().all()
    # the art. 20 review of an uplift decision says why the policy offered, with its own figures
    from mlops_nb.review import review_decision, review_html
    rv = review_decision(cfg, one["request_id"], actor="dpo")
    assert rv.offer["policy_version"] == v and rv.offer["offered"] == one["decision"]
    assert abs(rv.offer["net_value"] - one["net_value"]) < 0.01
    page = review_html(rv)
    assert f"offer policy (version {v})" in page and f"política de oferta (versão {v})" in page


def test_the_pages_say_which_offer_policy_decides_and_keep_it_apart_from_the_models_versions(world):
    from mlops_nb.dashboards import blocks_html, page_blocks, production_version
    from mlops_nb.policies import policy_table
    from mlops_nb.registry import policy_settings, rollback
    settings, cfg = world
    v = uplift_in_production(cfg)
    roi = blocks_html(page_blocks("roi", cfg, "en"))
    assert f"In force: the uplift policy (version {v})" in roi and "risk" in roi
    assert production_version(cfg) == "1"                       # the model's version, not the policy's
    gov = blocks_html(page_blocks("governance", cfg, "en"))
    assert f"{cfg.mlflow.registered_policy} v{v}" in gov and f"{cfg.mlflow.registered_model} v1" in gov
    rollback(policy_settings(cfg), "test", "back to the risk policy")
    assert "In force: the risk policy (version 1)" in blocks_html(page_blocks("roi", cfg, "en"))
    assert "Em vigor: a política risk (versão 1)" in blocks_html(page_blocks("roi", cfg, "pt"))
    assert len(policy_table(cfg)) >= 2


def test_each_labelled_month_values_the_policy_in_force_and_the_newest_of_each_kind(world):
    from mlops_nb.catalog import TABLE_POLICY_VALUES
    from mlops_nb.contracts import connect_warehouse
    from mlops_nb.operate import MonthResult, policy_values_step
    from mlops_nb.policies import policy_table
    settings, cfg = world
    v = uplift_in_production(cfg)
    res = MonthResult("2025-07", "ok", labelled=["2025-05", "2025-06"])
    policy_values_step(cfg, res)
    with connect_warehouse(cfg) as con:
        pv = con.execute(f"SELECT * FROM {TABLE_POLICY_VALUES} ORDER BY month, policy_version").df()
    t = policy_table(cfg)
    newest = {k: g.version.iloc[0] for k, g in t.groupby("kind")}         # policy_table lists the newest first
    assert list(pv.month.unique()) == ["2025-05", "2025-06"] and not res.note
    for _, g in pv.groupby("month"):
        assert set(g.policy_version) == {v, *newest.values()} and set(g.kind) == {"risk", "uplift"}
        assert list(g[g.in_force].policy_version) == [v] and (g.rows > 300).all()
        assert ((g.lower <= g.value_per_customer) & (g.value_per_customer <= g.upper)).all()
        assert g.simulated.notna().all() and (g.oracle >= g.simulated).all()   # the best list bounds every policy
        # expected beside realised: an uplift policy offers only where its own net value is positive
        assert g.expected_per_customer.notna().all()
        up = g[g.kind == "uplift"]
        assert ((up.expected_per_customer > 0) == (up.offered_share > 0)).all()
    assert res.metrics[f"policy.v{v}.value_per_customer"] == pytest.approx(pv[pv.policy_version == v]
                                                                           .value_per_customer.iloc[-1])
    assert res.metrics[f"policy.v{v}.expected_per_customer"] == pytest.approx(pv[pv.policy_version == v]
                                                                              .expected_per_customer.iloc[-1])
    policy_values_step(cfg, res)                                    # a month valued again replaces its rows
    with connect_warehouse(cfg) as con:
        assert con.execute(f"SELECT count(*) FROM {TABLE_POLICY_VALUES}").fetchone()[0] == len(pv)


def test_a_challenger_arm_is_decided_by_the_other_policy_with_its_own_budget_and_control_and_the_roi_compares_the_arms(
        world):
    """Risk policy in force, the newest uplift policy as challenger: a keyed fifth of the month's customers (outside
    the exploration) is decided by the uplift policy — exactly its offers on their features — with its share of the
    budget and its own control group; roi.arms measures each arm against its own control, per customer, and the
    difference with its interval; the audit event names the challenger."""
    import dataclasses

    from mlops_nb.audit import read_events
    from mlops_nb.campaign import arm_features, find_challenger, judged_difference, run_campaign
    from mlops_nb.catalog import AUDIT_CAMPAIGN_SENT, TABLE_ROI_ARMS
    from mlops_nb.contracts import connect_warehouse
    from mlops_nb.policies import policy_table
    from mlops_nb.roi import arms_text, measure_arms
    from mlops_nb.score import score_month
    from mlops_nb.served import mlflow_for
    settings, cfg = world
    in_production(cfg, "risk")
    up = policy_table(cfg).query("kind == 'uplift'").version.iloc[0]
    # a policy the gate judged worse beyond doubt is not tried on customers unless [operate] challenger_worse says so
    lo, hi = judged_difference(cfg, up)
    found, why = find_challenger(cfg)
    if hi < 0: assert found is None and "worse than the policy in force beyond doubt" in why
    else: assert found.version == up and not why
    cfg = dataclasses.replace(cfg, operate=dataclasses.replace(cfg.operate, challenger_worse=True))
    month = "2025-05"                                                  # a month whose labels are in the warehouse
    res = score_month(cfg, month)
    camp = run_campaign(cfg, month, res.request_id, res.model_version)
    with connect_warehouse(cfg) as con:
        acts = con.execute("SELECT * FROM ops.actions WHERE month = ?", [month]).df()
    free = acts[acts.action != "exploration"]
    theirs, ours = free[free.arm == "challenger"], free[free.arm == "champion"]
    assert camp.challenger == f"uplift@{up}" and camp.challenger_customers == len(theirs)
    assert 0.14 < len(theirs) / len(free) < 0.26                        # [operate] challenger_share = 0.2
    assert set(theirs.policy) == {f"uplift@{up}"} and set(ours.policy) == {"charter-rule"}
    # the challenger's offers are the uplift policy's own on its customers' features
    ml, _ = mlflow_for(cfg)
    policy = ml.pyfunc.load_model(f"models:/{cfg.mlflow.registered_policy}/{up}").unwrap_python_model()
    d = policy.decide(arm_features(cfg, month, theirs.customer_key.tolist()), theirs.p.to_numpy())
    picked = theirs.action.isin(["contact", "control"]).to_numpy()
    assert (picked <= d.offer.to_numpy()).all()                        # selected only where it offers
    assert np.allclose(theirs.expected_uplift[picked], d.expected_uplift[picked])
    assert camp.challenger_contacted == int((theirs.action == "contact").sum())
    # each arm holds out its own control group, at the control share
    for arm in (theirs, ours):
        sel = arm[arm.action.isin(["contact", "control"])]
        if len(sel) >= 10: assert abs((sel.action == "control").mean() - cfg.operate.control_share) < 0.05
    ev = [e for e in read_events(cfg, AUDIT_CAMPAIGN_SENT) if e.subject == month][-1]
    assert ev.details["challenger"] == f"uplift@{up}" and ev.details["challenger_share"] == 0.2
    # roi.arms: each arm against its own control group, per customer of the arm, and the difference
    with connect_warehouse(cfg, read_only=False) as con:
        arms = measure_arms(cfg, con, month)
        stored = con.execute(f"SELECT * FROM {TABLE_ROI_ARMS} WHERE month = ?", [month]).df()
    assert len(stored) == len(arms[arms.month == month]) == 4
    m = arms[(arms.month == month) & (arms.scope == "month")].set_index("arm")
    for arm, rows in (("champion", ours), ("challenger", theirs)):
        assert m.loc[arm, "customers"] == len(rows)
        assert (m.loc[arm, "contacted"], m.loc[arm, "control"]) == ((rows.action == "contact").sum(),
                                                                   (rows.action == "control").sum())
        assert m.loc[arm, "net_per_customer"] == pytest.approx(m.loc[arm, "net_value"] / len(rows))
    c = m.loc["challenger"]
    assert c.difference == pytest.approx(c.net_per_customer - m.loc["champion", "net_per_customer"])
    assert c.difference_lower < c.difference < c.difference_upper
    assert np.isnan(m.loc["champion", "difference"])
    assert "challenger" in arms_text(arms) and f"uplift@{up}" in arms_text(arms)
    # the operate loop's ROI step logs the comparison; `mlops-nb roi` prints the arms beside the campaign
    from mlops_nb.operate import MonthResult, publish_snapshots, roi_step
    step = MonthResult("2025-06", "ok", labelled=[month])
    roi_step(cfg, step)
    assert step.metrics["roi.challenger.difference"] == pytest.approx(c.difference)
    from mlops_nb.operate import ensure_monitor_tables
    with connect_warehouse(cfg, read_only=False) as con: ensure_monitor_tables(con); publish_snapshots(cfg, con)
    out = run_cli("--settings", str(settings), "roi")
    assert out.returncode == 0 and "challenger − champion" in out.stdout and f"uplift@{up}" in out.stdout, out.stderr
    from mlops_nb.dashboards import blocks_html, page_blocks
    page = blocks_html(page_blocks("roi", cfg, "en"))                  # the ROI page shows the two arms too
    assert "The policy in force and the challenger" in page and f"uplift@{up}" in page
    # the art. 20 review of a customer the challenger decided explains the challenger's offer, and says why it decided
    from mlops_nb.campaign import reidentify
    from mlops_nb.review import review_decision, review_html
    key = theirs.customer_key[theirs.action == "contact"].iloc[0]
    rv = review_decision(cfg, res.request_id, reidentify(cfg, month, [key])[0], actor="dpo")
    assert rv.arm == {"arm": "challenger", "policy": f"uplift@{up}"} and rv.action == "contact"
    assert rv.offer["policy_version"] == up and rv.offer["offered"] and rv.decision
    assert "política desafiante" in review_html(rv) and "challenger policy decides" in review_html(rv)


def test_a_policy_judged_worse_beyond_doubt_is_not_tried_on_customers_unless_asked(world):
    """The challenger rule on a real registry: an uplift policy whose proposal run judged it worse than the policy in
    force beyond doubt is left out, with the reason; [operate] challenger_worse tries it."""
    import dataclasses

    from mlops_nb.campaign import find_challenger, judged_difference
    from mlops_nb.policies import policy_table, register_policy
    from mlops_nb.served import mlflow_for
    from mlops_nb.tracking import mlflow
    from mlops_nb.uplift import randomised_rows
    settings, cfg = world
    in_production(cfg, "risk")
    ml, _ = mlflow_for(cfg)
    up = policy_table(cfg).query("kind == 'uplift'").version.iloc[0]
    policy = ml.pyfunc.load_model(f"models:/{cfg.mlflow.registered_policy}/{up}").unwrap_python_model()
    with mlflow.start_run(run_name="policy: uplift judged worse"):
        mlflow.log_metrics({"policy.difference.lower": -5.0, "policy.difference.upper": -1.0})
        rows, _ = randomised_rows(cfg)                                     # the input example's distribution
        worse = register_policy(cfg, policy, False, "worse beyond doubt (the test's judgement)", rows=rows).version
    assert judged_difference(cfg, worse) == (-5.0, -1.0)
    found, why = find_challenger(cfg)
    assert found is None and f"v{worse} is not tried" in why and "challenger_worse" in why
    asked = dataclasses.replace(cfg, operate=dataclasses.replace(cfg.operate, challenger_worse=True))
    found, why = find_challenger(asked)
    assert found.version == worse and found.kind == "uplift" and not why
    off = dataclasses.replace(cfg, operate=dataclasses.replace(cfg.operate, challenger_share=0.0))
    assert find_challenger(off) == (None, "")
