"""The retention campaign (63_campaign): a random control group that is never contacted, an exact budget cap, the
exploration campaign left alone, re-identification that the simulated world confirms, an idempotent action log and
clear errors."""
from __future__ import annotations

import dataclasses
import re
import stat
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_nb.campaign import (
    ACTIONS,
    CampaignError,
    exploration_keys,
    plan_campaign,
    reidentify,
    run_campaign,
    selection_size,
)
from mlops_nb.catalog import AUDIT_CAMPAIGN_SENT, TABLE_ACTIONS
from mlops_nb.contracts import connect_warehouse
from mlops_nb.settings import CharterSettings
from mlops_nb.value import cost_per_contact

CHARTER = CharterSettings()
MONTH = "2025-04"


def charter_for(contacts: int | None) -> CharterSettings:
    "The default charter with a budget paying for exactly `contacts` contacts (None: contacts cost nothing)."
    if contacts is None: return dataclasses.replace(CHARTER, contact_cost=0.0, offer_cost=0.0)
    return dataclasses.replace(CHARTER, monthly_budget=contacts * cost_per_contact(CHARTER))


# ---- the plan: a large synthetic month -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def month_200k() -> pd.DataFrame:
    "200,000 scored customers: a feature the model saw (x), one it did not (z), and the probability from both."
    rng = np.random.default_rng(2025)
    n = 200_000
    x, z = rng.normal(size=n), rng.normal(size=n)
    p = 1 / (1 + np.exp(-(-2.5 + 1.2 * x + 0.8 * z)))
    return pd.DataFrame({"customer_key": [f"p_{i:08x}" for i in rng.permutation(n)], "p": p, "x": x, "z": z})


def balanced(a: np.ndarray, b: np.ndarray, sds: float = 4.0) -> bool:
    "The two groups' means differ by less than `sds` standard errors of the difference."
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return abs(a.mean() - b.mean()) < sds * se


def test_the_control_group_is_random_balanced_and_never_contacted(month_200k):
    m = month_200k
    plan = plan_campaign(m.customer_key, m.p, 0.1, charter_for(None), 0.1, seed=(0, 202504))
    f = m.assign(action=plan.action)
    control, contact = f[f.action == "control"], f[f.action == "contact"]
    assert len(control) > 5_000 and len(contact) > 9 * len(control) - 10
    assert not set(control.customer_key) & set(contact.customer_key)
    for col in ("p", "x", "z"):                       # the score, a feature and an unseen cause: balanced
        assert balanced(control[col].to_numpy(), contact[col].to_numpy()), col
    # the check has teeth: holding out the selected's least risky tenth instead is far from balanced
    sel = f[f.action.isin(["contact", "control"])].sort_values("p")
    worst = sel.iloc[: len(control)]
    assert not balanced(worst.p.to_numpy(), sel.iloc[len(control):].p.to_numpy())


def test_the_control_draw_is_seeded_by_the_month(month_200k):
    m = month_200k
    def draw(seed, rows=m):
        plan = plan_campaign(rows.customer_key, rows.p, 0.1, charter_for(None), 0.1, seed=seed)
        return set(plan.customer_key[plan.action == "control"])
    a = draw((0, 202504))
    assert draw((0, 202504), m.iloc[::-1]) == a                   # same seed, rows in another order: same group
    b = draw((0, 202505))
    assert len(b) == len(a) and len(a & b) < 0.2 * len(a)          # another month: another group, overlap ≈ 10%


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("budget", [0, 1, 37, 1000])
def test_the_budget_cap_is_exact(month_200k, budget, share):
    m = month_200k
    plan = plan_campaign(m.customer_key, m.p, 0.1, charter_for(budget), share, seed=1)
    n = plan.action.value_counts()
    assert n.get("contact", 0) == budget                          # enough candidates: the budget spent exactly
    assert n.get("control", 0) == selection_size(10**6, budget, share)[1]   # control on top: it costs nothing
    assert plan.attrs["capped"]
    # the highest expected profit first: no one left out is riskier than anyone selected
    sel = plan.action.isin(["contact", "control"])
    if sel.any(): assert plan.expected_profit[sel].min() >= plan.expected_profit[~sel].max()


def test_few_candidates_are_all_selected_within_the_budget():
    p = np.r_[np.full(30, 0.5), np.full(70, 0.01)]
    plan = plan_campaign([f"k{i}" for i in range(100)], p, 0.1, charter_for(1000), 0.1, seed=0)
    n = plan.action.value_counts()
    assert (n["contact"], n["control"], n["not_selected"]) == (27, 3, 70) and not plan.attrs["capped"]
    assert set(plan.action[30:]) == {"not_selected"}


def test_under_a_fairness_policy_the_logged_decisions_select_and_a_short_budget_keeps_each_groups_share(month_200k):
    """The logged decisions (a per-group policy's) are the candidates, not p >= threshold; when the budget cannot pay
    for all of them, ranking by risk would undo the policy (the riskier group would take the budget): the keyed order
    keeps each group's share, and the same salt gives the same selection."""
    from mlops_nb.decisions import DecisionPolicy, GroupRule, month_salt
    m = month_200k
    group = np.where(m.x > 0.5, "A", "B")                 # A is the riskier group
    policy = DecisionPolicy("g", 0.1, {"A": GroupRule(1.0, ">", 0.2, 0.0, ">", 0.2),
                                       "B": GroupRule(0.5, ">", 0.05, 0.5, ">", 0.1)})
    decision = policy.decide(m.p.to_numpy(), group, m.customer_key.tolist())
    assert (decision != (m.p >= 0.1)).any()
    salt = month_salt(policy.salt, MONTH)
    plan = plan_campaign(m.customer_key, m.p, 0.1, charter_for(2000), 0.0, seed=0, decision=decision, cap_salt=salt)
    chosen = plan.action == "contact"
    assert chosen.sum() == 2000 and not (chosen & ~decision).any()
    share = lambda mask: (group[mask] == "A").mean()
    assert abs(share(chosen.to_numpy()) - share(decision)) < 0.04          # the groups' shares kept
    by_risk = plan_campaign(m.customer_key, m.p, 0.1, charter_for(2000), 0.0, seed=0, decision=decision)
    assert share((by_risk.action == "contact").to_numpy()) > share(decision) + 0.1    # ranking by risk would not
    again = plan_campaign(m.customer_key[::-1], m.p[::-1], 0.1, charter_for(2000), 0.0, seed=0,
                          decision=decision[::-1], cap_salt=salt)
    assert set(again.customer_key[again.action == "contact"]) == set(plan.customer_key[chosen])


def test_exploration_customers_are_never_in_the_policy(month_200k):
    m = month_200k
    riskiest = set(m.nlargest(500, "p").customer_key[::2])          # half of the riskiest are in the experiment
    plan = plan_campaign(m.customer_key, m.p, 0.1, charter_for(400), 0.1, exploration_keys=riskiest, seed=0)
    assert set(plan.customer_key[plan.action == "exploration"]) == riskiest
    assert not riskiest & set(plan.customer_key[plan.action.isin(["contact", "control"])])
    assert (plan.action == "contact").sum() == 400
    assert set(plan.action) <= set(ACTIONS)


def test_a_plan_refuses_duplicate_or_missing_keys():
    with pytest.raises(ValueError, match="scored twice"): plan_campaign(["a", "a"], [0.5, 0.5], 0.1, CHARTER, 0.1)
    with pytest.raises(ValueError, match="missing"): plan_campaign(["a", None], [0.5, 0.5], 0.1, CHARTER, 0.1)


# ---- one month of a simulated world ----------------------------------------------------------------------------------
def fake_scores(cfg, month: str, version: str = "1", threshold: float = 0.1, seed: int = 0) -> str:
    "A batch-scored month in the prediction log's schema: the mart's customers, Beta(1, 8) probabilities; request id."
    from mlops_nb.prediction_log import LOG_SCHEMA, new_request_id, write_log_table
    with connect_warehouse(cfg) as con:
        keys = [r[0] for r in con.execute("SELECT customer_key FROM mart.customer_month WHERE month = ? ORDER BY 1",
                                          [month]).fetchall()]
    n, t = len(keys), time.time()
    rid, p = new_request_id(t), np.random.default_rng(seed).beta(1, 8, n)
    const = lambda v: pa.array([v] * n, pa.string())
    cols = dict(request_id=const(rid), row=pa.array(np.arange(n, dtype=np.int32)),
                time=pa.array(np.full(n, int(t * 1e6))).cast(pa.timestamp("us", tz="UTC")), source=const("batch"),
                customer_key=pa.array(keys, pa.string()), month=const(month), model_name=const("churn"),
                model_version=const(version), churn_probability=p, decision=p >= threshold,
                threshold=np.full(n, threshold), latency_ms=pa.nulls(n, pa.float64()),
                training_run_id=const("test"), dataset_digest=const("test"), git_commit=const("test"))
    # a log file as written before the offer policies (no policy columns): the campaign still reads it
    old_schema = pa.schema([f for f in LOG_SCHEMA if f.name in cols])
    write_log_table(cfg.paths.prediction_log, pa.table(cols, schema=old_schema),
                    time.strftime("%Y-%m-%d", time.gmtime(t)), 1)
    return rid


@pytest.fixture(scope="module")
def operated(tmp_path_factory):
    "A 400-customer world with April 2025 observed, loaded, scored (fabricated), campaigned (budget: 25) and resolved."
    from mlops_nb.lake import generate_lake, observe_month, resolve_month
    from mlops_nb.settings import sandbox_settings
    from mlops_nb.warehouse import load_warehouse
    cfg = sandbox_settings(tmp_path_factory.mktemp("campaign"), lake_customers=400, lake_months=5,
                           lake_history_months=3, charter_monthly_budget=25 * cost_per_contact(CHARTER))
    generate_lake(cfg); observe_month(cfg, MONTH); load_warehouse(cfg)
    rid = fake_scores(cfg, MONTH)
    res = run_campaign(cfg, MONTH, rid, "1")
    truth = resolve_month(cfg, MONTH).to_pandas()
    return cfg, rid, res, truth


def actions(cfg) -> pd.DataFrame:
    with connect_warehouse(cfg) as con: return con.execute(f"SELECT * FROM {TABLE_ACTIONS}").df()


def test_the_contact_list_reidentifies_the_contacted_and_the_world_calls_exactly_them(operated):
    from mlops_nb.lake import read_contacts
    from mlops_nb.privacy import load_key, pseudonymise
    cfg, _, res, truth = operated
    a = actions(cfg)
    contacted = set(a.customer_key[a.action == "contact"])
    ids = read_contacts(cfg, MONTH)
    assert res.contacted == len(ids) == len(contacted) == 25 and res.control == 3 and res.capped
    assert set(pseudonymise(ids, load_key(cfg), "customer")) == contacted          # the round trip
    assert set(truth.customer_id[truth.policy_listed]) == set(ids)               # what the world saw on the list
    control_ids = reidentify(cfg, MONTH, a.customer_key[a.action == "control"].tolist())
    assert len(control_ids) == 3 and not set(control_ids) & set(ids)
    assert not truth.policy_listed[truth.in_campaign].any()                     # the exploration was left alone
    with connect_warehouse(cfg) as con: explored = exploration_keys(con, MONTH)
    assert explored == set(a.customer_key[a.action == "exploration"]) and len(explored) == res.exploration > 0
    path = cfg.paths.outbox / f"month={MONTH}" / "contacts.parquet"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and res.files == [str(path)]


def test_no_id_leaves_for_the_warehouse_or_the_audit_trail(operated):
    from mlops_nb.audit import read_events
    from mlops_nb.lake import read_contacts
    cfg, rid, res, _ = operated
    ids = read_contacts(cfg, MONTH)
    events = [e for e in read_events(cfg, AUDIT_CAMPAIGN_SENT)]
    assert events and events[0].details["contacted"] == res.contacted and events[0].details["request_id"] == rid
    trail = cfg.paths.audit.read_text()
    assert not any(i in trail for i in ids) and not re.search(r"p_[0-9a-f]{24}", trail)   # no ids, no pseudonyms
    a = actions(cfg)
    assert a.customer_key.str.fullmatch(r"p_[0-9a-f]{24}").all()


def test_the_action_log_is_idempotent_per_month(operated):
    from mlops_nb.lake import read_contacts
    cfg, rid, res, _ = operated
    before, ids = actions(cfg), read_contacts(cfg, MONTH)
    again = run_campaign(cfg, MONTH, rid, "1")
    after = actions(cfg)
    assert dataclasses.asdict(again) == dataclasses.asdict(res) and read_contacts(cfg, MONTH) == ids
    assert len(after) == len(before) == res.scored and after.customer_key.is_unique
    cols = ["customer_key", "action", "p", "threshold", "request_id", "model_version"]
    pd.testing.assert_frame_equal(after[cols].sort_values("customer_key").reset_index(drop=True),
                                  before[cols].sort_values("customer_key").reset_index(drop=True))
    assert (after.recorded_at >= before.recorded_at.max()).all()        # rewritten, not kept


def test_an_unknown_request_or_a_wrong_version_is_a_clear_error(operated):
    from mlops_nb.prediction_log import new_request_id
    cfg, rid, _, _ = operated
    unknown = new_request_id()
    with pytest.raises(CampaignError, match=f"no scores for month {MONTH} under request id '{unknown}'"):
        run_campaign(cfg, MONTH, unknown, "1")
    with pytest.raises(CampaignError, match="scored month.* 2025-04, not 2025-05"):
        run_campaign(cfg, "2025-05", rid, "1")
    with pytest.raises(CampaignError, match="model version.* 1, not 7"): run_campaign(cfg, MONTH, rid, "7")


def test_a_customer_who_cannot_be_reidentified_stops_the_month_before_anything_is_written(operated, monkeypatch):
    from mlops_nb.catalog import ENV_PSEUDONYM_KEY
    cfg, rid, _, _ = operated
    before = actions(cfg)
    contacts = cfg.paths.outbox / f"month={MONTH}" / "contacts.parquet"
    stamp = contacts.stat().st_mtime_ns
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, "ab" * 32)                      # not the key the warehouse was loaded with
    with pytest.raises(CampaignError, match=r"25 of 25 customers to contact cannot be re-identified"):
        run_campaign(cfg, MONTH, rid, "1")
    after = actions(cfg)
    assert after.recorded_at.max() == before.recorded_at.max() and contacts.stat().st_mtime_ns == stamp
