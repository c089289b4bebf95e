"""The alerts room: rules as data with errors that name the file, the rule and the field; one incident per rule
(raised once, continued, resolved); state replayed from the alert log, across processes; delivery to a real webhook
receiver and a real SMTP server, and a clear, logged failure when either is down."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlops_nb import alerts as A
from mlops_nb.audit import read_events, verify_chain
from mlops_nb.catalog import AUDIT_ALERT_RAISED, AUDIT_ALERT_RESOLVED
from mlops_nb.settings import sandbox_settings

REPO = Path(__file__).resolve().parents[1]
RULES = """\
rules:
  - {name: share, metric: drift.share_drifted, condition: ">= 0.3", retrain: true, description: many inputs moved}
  - {name: twice, metric: "drift.feature.*", condition: ">= 0.1", severity: info, for_months: 2}
  - {name: concept, metric: performance.concept_drift_p, condition: "< 0.01", severity: critical}
"""
PAYLOAD_KEYS = {"source", "alert", "incident", "rule", "severity", "month", "opened", "months", "metric", "condition",
                "metrics", "hits", "retrain", "description"}


def quiet(_: str) -> None: pass


def free_port() -> int:
    "A port nothing listens on (bound, then released)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cfg(root: Path, rules: str = RULES, **values):
    cfg = sandbox_settings(root, **values)
    cfg.alerts.rules_file.write_text(rules, encoding="utf-8")
    return cfg


def run(cfg, months: dict[str, dict]) -> dict[str, A.AlertOutcome]:
    return {m: A.process_alerts(cfg, m, v, say=quiet) for m, v in months.items()}


def ids(incidents) -> list[str]: return [i.id for i in incidents]


def log_kinds(cfg) -> list[str]: return [json.loads(line)["kind"] for line in cfg.paths.alerts.read_text().splitlines()]


# --- real receivers ---------------------------------------------------------------------------------------------------
class Receiver:
    "A webhook receiver on 127.0.0.1 (http.server in a thread) that records every POST and answers `status`."
    def __init__(self, status: int = 204, delay: float = 0.0):
        self.posts: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append(dict(path=self.path, type=self.headers["Content-Type"], json=json.loads(body)))
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args): pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0KEN-secret"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []
    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]
    yield make
    for r in made: r.close()


class Inbox:
    "An aiosmtpd handler keeping every message it is given."
    def __init__(self): self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


class Refuser:
    "An aiosmtpd handler refusing every recipient."
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "550 5.1.1 mailbox unavailable"


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller
    made: list = []
    def make(handler) -> int:
        c = Controller(handler, hostname="127.0.0.1", port=free_port())
        c.start()
        made.append(c)
        return c.port
    yield make
    for c in made: c.stop()


# --- rules as data ----------------------------------------------------------------------------------------------------
def test_packaged_rules_and_the_repository_file_agree_and_fit_the_monitor():
    from mlops_nb.drift import DRIFT_THRESHOLD
    from mlops_nb.sections import CharterSettings
    assert (REPO / "alert_rules.yaml").read_text(encoding="utf-8") == A.DEFAULT_ALERT_RULES
    rules = {r.name: r for r in A.load_alert_rules(REPO / "alert_rules.yaml")}
    metrics = {r.metric for r in rules.values()}
    assert {"drift.share_drifted", "drift.feature.*", "drift.new_category.*", "drift.score", "drift.multivariate",
            "performance.concept_drift_p", "performance.auc_drop", "fairness.max_gap",
            "quality.blocking_failures", "quality.held_back"} == metrics
    # the monitor reports each drift as a share of its threshold (DRIFT_THRESHOLD at least): 1 = past it
    assert DRIFT_THRESHOLD > 0 and rules["input_drifted"].threshold == rules["scores_drifted"].threshold == 1
    assert rules["fairness_gap"].threshold == CharterSettings().max_fairness_gap and rules["fairness_gap"].op == ">"
    assert all(r.description for r in rules.values())
    assert not rules["quality_blocked"].retrain and not rules["data_held_back"].retrain
    assert rules["concept_drift"].retrain
    # the rule fires at the monitor's own test level: the p-value it reads is Holm's over that test's family
    from mlops_nb.monitor import ALPHA
    assert (rules["concept_drift"].op, rules["concept_drift"].threshold) == ("<", ALPHA)


@pytest.mark.parametrize("body, expected", [
    ('- {name: a, metric: drift.score, condition: ">= 0.1", colour: red}', "rule 'a': unknown field 'colour'"),
    ('- {name: b, metric: drift.score, condition: "=> 0.1"}', "rule 'b': condition must be an operator"),
    ('- {name: c, metric: drift.score, condition: "0.1"}', "rule 'c': condition must be an operator"),
    ('- {name: d, condition: ">= 0.1"}', "rule 'd': missing metric"),
    ("- {name: e, metric: drift.score}", "rule 'e': missing condition"),
    ('- {name: f, metric: drift.score, condition: "> 1", severity: urgent}', "rule 'f': severity must be info, warn"),
    ('- {name: g, metric: drift.score, condition: "> 1", for_months: 0}', "rule 'g': for_months must be a whole"),
    ('- {name: h, metric: drift.score, condition: "> 1", for_months: two}', "rule 'h': for_months must be a whole"),
    ('- {name: i, metric: drift.score, condition: "> 1", retrain: "maybe"}', "rule 'i': retrain must be true or"),
    ('- {name: j, metric: "drift score", condition: "> 1"}', "rule 'j': metric must be a metric name or a glob"),
    ('- {name: K, metric: drift.score, condition: "> 1"}', "rule #1: `name` must be a lower-case identifier"),
    ('- {name: k, metric: a, condition: "> 1"}\n  - {name: k, metric: b, condition: "> 1"}',
     "rule 'k' is declared twice"),
    ("- name: l\n    metric: [unclosed\n", "not valid YAML (line"),
])
def test_malformed_rules_give_errors_naming_the_file_the_rule_and_the_field(tmp_path, body, expected):
    path = tmp_path / "alert_rules.yaml"
    path.write_text("rules:\n  " + body + "\n", encoding="utf-8")
    with pytest.raises(A.AlertRulesError) as e:
        A.load_alert_rules(path)
    assert expected in str(e.value) and str(path) in str(e.value), str(e.value)


@pytest.mark.parametrize("text, expected", [
    ("checks: []", "expected a mapping with a `rules:` list"),
    ("rules: []\nowner: ana", "unknown top-level key 'owner'"),
    ("defaults: {colour: red}\nrules: []", "`defaults` may set only severity, for_months, retrain"),
])
def test_malformed_rules_files_are_refused_at_the_top(tmp_path, text, expected):
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(A.AlertRulesError, match=expected):
        A.load_alert_rules(path)


def test_a_bad_rules_file_stops_the_month_before_anything_is_written(tmp_path):
    cfg = make_cfg(tmp_path, 'rules:\n  - {name: a, metric: drift.score, condition: ">= 0.1", colur: red}\n')
    with pytest.raises(A.AlertRulesError, match="unknown field 'colur'"):
        A.process_alerts(cfg, "2025-01", {"drift.score": 0.5}, say=quiet)
    assert not cfg.paths.alerts.exists() and not cfg.paths.audit.exists()


def test_without_a_rules_file_the_packaged_defaults_apply_and_say_so(tmp_path):
    cfg = sandbox_settings(tmp_path)
    said: list[str] = []
    rules, source = A.alert_rules(cfg, say=said.append)
    assert source == "packaged defaults" and len(rules) == len(A.parse_alert_rules(A.DEFAULT_ALERT_RULES))
    assert "no rules file" in said[0]
    out = A.process_alerts(cfg, "2025-01", {"quality.blocking_failures": 2}, say=quiet)
    assert ids(out.raised) == ["quality_blocked@2025-01"]


# --- incidents --------------------------------------------------------------------------------------------------------
def test_three_bad_months_are_one_incident_resolved_the_first_good_month(tmp_path):
    cfg = make_cfg(tmp_path)
    out = run(cfg, {"2025-01": {"drift.share_drifted": 0.1}, "2025-02": {"drift.share_drifted": 0.35},
                    "2025-03": {"drift.share_drifted": 0.5}, "2025-04": {"drift.share_drifted": 0.31},
                    "2025-05": {"drift.share_drifted": 0.2}, "2025-06": {"drift.share_drifted": 0.1}})
    assert [ids(o.raised) for o in out.values()] == [[], ["share@2025-02"], [], [], [], []]
    assert [ids(o.still_open) for o in out.values()] == [[], [], ["share@2025-02"], ["share@2025-02"], [], []]
    assert [ids(o.resolved) for o in out.values()] == [[], [], [], [], ["share@2025-02"], []]
    assert [o.retrain for o in out.values()] == [False, True, True, True, False, False]
    (inc,) = A._replay(A._records(cfg))[1].values()
    assert (inc.months, inc.resolved) == (["2025-02", "2025-03", "2025-04"], "2025-05")
    assert (inc.metrics, inc.hits) == ({"drift.share_drifted": 0.31}, ["drift.share_drifted"])
    assert log_kinds(cfg).count("raised") == 1 and log_kinds(cfg).count("resolved") == 1
    assert A.open_incidents(cfg) == []


def test_for_months_2_opens_only_at_the_second_month_running(tmp_path):
    cfg = make_cfg(tmp_path)
    f = lambda age, fee: {"drift.feature.age": age, "drift.feature.fee": fee}   # noqa: E731
    out = run(cfg, {"2025-01": f(0.2, 0.0), "2025-02": f(0.0, 0.0),     # one month, then clear: the run restarts
                    "2025-03": f(0.0, 0.15), "2025-04": f(0.12, 0.01)})  # two months running (different inputs)
    assert [ids(o.raised) for o in out.values()] == [[], [], [], ["twice@2025-04"]]
    (inc,) = out["2025-04"].raised
    assert inc.months == ["2025-03", "2025-04"] and inc.hits == ["drift.feature.age"]
    assert inc.metrics == {"drift.feature.age": 0.12, "drift.feature.fee": 0.01}
    notes = A.read_alert_log(cfg).query("rule == 'twice' and month == '2025-03'").note.tolist()
    assert notes == ["holds 1 of the 2 months running that open an incident"]


def test_a_missing_month_pauses_a_run_of_months_without_breaking_it(tmp_path):
    cfg = make_cfg(tmp_path)
    out = run(cfg, {"2025-01": {"drift.feature.age": 0.2}, "2025-02": {"drift.feature.age": None},
                    "2025-03": {"drift.feature.age": 0.2}})
    assert out["2025-02"].missing == ["concept", "share", "twice"]
    assert ids(out["2025-03"].raised) == ["twice@2025-03"] and out["2025-03"].raised[0].months == ["2025-01", "2025-03"]


def test_a_missing_metric_neither_opens_nor_resolves_and_says_so(tmp_path):
    cfg = make_cfg(tmp_path)
    out = run(cfg, {"2025-01": {"drift.share_drifted": 0.4, "performance.concept_drift_p": float("nan")},
                    "2025-02": {"drift.share_drifted": float("nan")},                # open incident: stays open
                    "2025-03": {"drift.share_drifted": 0.4}, "2025-04": {"drift.share_drifted": 0.0}})
    assert out["2025-01"].missing == ["concept", "twice"] and ids(out["2025-01"].raised) == ["share@2025-01"]
    assert out["2025-02"].missing == ["concept", "share", "twice"]
    assert ids(out["2025-02"].still_open) == ["share@2025-01"]
    assert ids(out["2025-03"].still_open) == ["share@2025-01"] and ids(out["2025-04"].resolved) == ["share@2025-01"]
    log = A.read_alert_log(cfg)
    row = log.query("rule == 'share' and month == '2025-02'").iloc[0]
    assert (row.kind, row.state, row.incident) == ("check", "missing", "share@2025-01")
    assert "neither opens nor resolves" in row.note
    assert A._replay(A._records(cfg))[1]["share@2025-01"].months == ["2025-01", "2025-03"]


def test_reprocessing_a_month_changes_nothing_and_months_go_in_order(tmp_path, receiver):
    hook = receiver()
    cfg = make_cfg(tmp_path, alerts_webhook_url=hook.url)
    first = A.process_alerts(cfg, "2025-01", {"drift.share_drifted": 0.4}, say=quiet)
    lines, audit = cfg.paths.alerts.read_text(), len(list(read_events(cfg)))
    again = A.process_alerts(cfg, "2025-01", {"drift.share_drifted": 0.9, "performance.concept_drift_p": 0.0},
                             say=quiet)
    assert cfg.paths.alerts.read_text() == lines and len(list(read_events(cfg))) == audit and len(hook.posts) == 1
    assert ids(again.raised) == ids(first.raised) == ["share@2025-01"] and again.failures == []
    A.process_alerts(cfg, "2025-03", {"drift.share_drifted": 0.4}, say=quiet)
    with pytest.raises(A.AlertsError, match="2025-02 comes before 2025-03.*months are processed in order"):
        A.process_alerts(cfg, "2025-02", {"drift.share_drifted": 0.4}, say=quiet)
    with pytest.raises(A.AlertsError, match="month must be YYYY-MM"):
        A.process_alerts(cfg, "2025-13", {}, say=quiet)
    with pytest.raises(A.AlertsError, match="metric 'drift.score' must be a number"):
        A.process_alerts(cfg, "2025-04", {"drift.score": "high"}, say=quiet)


STEP = """
import json, sys
from mlops_nb.alerts import process_alerts
from mlops_nb.settings import load_settings
month, metrics = sys.argv[2], json.loads(sys.argv[3])
o = process_alerts(load_settings(sys.argv[1], env={}), month, metrics, say=lambda _: None)
print(json.dumps({k: [i.id for i in getattr(o, k)] for k in ("raised", "still_open", "resolved")}))
"""


def test_state_survives_a_fresh_process(tmp_path):
    cfg = make_cfg(tmp_path)
    def step(month: str, metrics: dict) -> dict:
        p = subprocess.run([sys.executable, "-c", STEP, str(tmp_path / "settings.ini"), month, json.dumps(metrics)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    bad = {"drift.share_drifted": 0.4, "drift.feature.age": 0.3}
    assert step("2025-01", bad) == {"raised": ["share@2025-01"], "still_open": [], "resolved": []}
    assert step("2025-02", bad) == {"raised": ["twice@2025-02"], "still_open": ["share@2025-01"], "resolved": []}
    assert ids(A.open_incidents(cfg)) == ["share@2025-01", "twice@2025-02"]      # ... and in this process too
    out = A.process_alerts(cfg, "2025-03", {"drift.share_drifted": 0.0, "drift.feature.age": 0.3}, say=quiet)
    assert ids(out.resolved) == ["share@2025-01"] and ids(out.still_open) == ["twice@2025-02"]
    assert log_kinds(cfg).count("raised") == 2


def test_an_incident_of_a_rule_no_longer_declared_is_closed(tmp_path):
    cfg = make_cfg(tmp_path)
    A.process_alerts(cfg, "2025-01", {"drift.share_drifted": 0.4}, say=quiet)
    renamed = RULES.replace("retrain: true", "retrain: false").replace("name: share", "name: s2")
    cfg.alerts.rules_file.write_text(renamed, encoding="utf-8")
    out = A.process_alerts(cfg, "2025-02", {"drift.share_drifted": 0.4}, say=quiet)
    assert ids(out.resolved) == ["share@2025-01"] and ids(out.raised) == ["s2@2025-02"] and not out.retrain
    closed = A.read_alert_log(cfg).query("incident == 'share@2025-01' and kind == 'resolved'")
    assert closed.state.tolist() == ["retired"]


def test_a_torn_log_line_is_named(tmp_path):
    cfg = make_cfg(tmp_path)
    A.process_alerts(cfg, "2025-01", {"drift.share_drifted": 0.4}, say=quiet)
    with open(cfg.paths.alerts, "a") as f: f.write('{"kind": "che')
    with pytest.raises(A.AlertsError, match=r"line 4 is not JSON"):
        A.process_alerts(cfg, "2025-02", {"drift.share_drifted": 0.4}, say=quiet)


# --- sinks ------------------------------------------------------------------------------------------------------------
def test_the_webhook_receives_each_alert_as_json_and_nothing_personal(tmp_path, receiver):
    hook = receiver()
    cfg = make_cfg(tmp_path, alerts_webhook_url=hook.url)
    run(cfg, {"2025-01": {"drift.share_drifted": 0.4, "performance.concept_drift_p": 0.2},
              "2025-02": {"drift.share_drifted": 0.5}, "2025-03": {"drift.share_drifted": 0.1}})
    assert [(p["json"]["alert"], p["json"]["incident"]) for p in hook.posts] == [("raised", "share@2025-01"),
                                                                                 ("resolved", "share@2025-01")]
    raised = hook.posts[0]
    assert raised["path"] == "/hooks/T0KEN-secret" and raised["type"] == "application/json"
    assert set(raised["json"]) == PAYLOAD_KEYS
    assert raised["json"]["metrics"] == {"drift.share_drifted": 0.4} and raised["json"]["retrain"] is True
    assert hook.posts[1]["json"]["months"] == ["2025-01", "2025-02"]
    log = A.read_alert_log(cfg)
    assert log[log.kind.isin(["raised", "resolved"])].delivery.tolist() == ["webhook ok", "webhook ok"]
    assert log[log.kind == "delivery"].ok.tolist() == [True, True]
    assert "T0KEN-secret" not in cfg.paths.alerts.read_text()          # the URL's secret path is never written


def test_email_goes_through_a_real_smtp_server(tmp_path, smtp):
    inbox = Inbox()
    port = smtp(inbox)
    cfg = make_cfg(tmp_path, alerts_smtp_host="127.0.0.1", alerts_smtp_port=port,
                   alerts_mail_to="ops@example.org, oncall@example.org", alerts_mail_from="alerts@example.org")
    out = A.process_alerts(cfg, "2025-01", {"performance.concept_drift_p": 0.001}, say=quiet)
    assert out.failures == [] and ids(out.raised) == ["concept@2025-01"]
    (env,) = inbox.envelopes
    assert env.mail_from == "alerts@example.org" and env.rcpt_tos == ["ops@example.org", "oncall@example.org"]
    msg = message_from_bytes(env.content, policy=email_policy)
    assert msg["Subject"] == "[mlops-nb] critical alert raised: concept (2025-01)"
    body = msg.get_content()
    assert "performance.concept_drift_p = 0.001  (meets the condition)" in body and "concept@2025-01" in body
    assert A.read_alert_log(cfg).query("kind == 'raised'").delivery.tolist() == ["email ok"]


def test_down_receivers_give_a_clear_line_and_the_alert_stays_in_the_log(tmp_path, capsys):
    cfg = make_cfg(tmp_path, alerts_webhook_url=f"http://127.0.0.1:{free_port()}/hook", alerts_smtp_host="127.0.0.1",
                   alerts_smtp_port=free_port(), alerts_mail_to="ops@example.org")
    out = A.process_alerts(cfg, "2025-01", {"drift.share_drifted": 0.4}, say=print)
    assert ids(out.raised) == ["share@2025-01"] and out.retrain
    assert len(out.failures) == 2 and all("\n" not in f and "connection refused" in f for f in out.failures)
    assert out.failures[0].startswith("alerts: webhook delivery of the raised alert share@2025-01 to http://127.0.0.1:")
    assert out.failures[1].startswith("alerts: email delivery of the raised alert share@2025-01 to 127.0.0.1:")
    printed = capsys.readouterr().out
    assert "Traceback" not in printed and all(f in printed for f in out.failures)
    assert log_kinds(cfg) == ["raised", "check", "check", "delivery", "delivery"]   # written first, then sent
    log = A.read_alert_log(cfg)
    assert log.query("kind == 'raised'").delivery.iloc[0] == ("webhook failed: connection refused; "
                                                              "email failed: connection refused")
    assert log.query("kind == 'delivery'").ok.tolist() == [False, False]
    assert ids(A.open_incidents(cfg)) == ["share@2025-01"]


def test_http_5xx_and_a_slow_receiver_fail_clearly_and_email_still_goes(tmp_path, receiver, smtp):
    inbox = Inbox()
    mail = dict(alerts_smtp_host="127.0.0.1", alerts_smtp_port=smtp(inbox), alerts_mail_to="ops@example.org")
    cfg = make_cfg(tmp_path / "a", alerts_webhook_url=receiver(status=503).url, **mail)
    out = A.process_alerts(cfg, "2025-01", {"drift.share_drifted": 0.4}, say=quiet)
    assert len(out.failures) == 1 and out.failures[0].endswith("failed: HTTP 503 Service Unavailable (kept in the "
                                                               "alert log)")
    assert len(inbox.envelopes) == 1                                      # the other sink still got it
    slow = make_cfg(tmp_path / "b", alerts_webhook_url=receiver(delay=1.0).url, alerts_timeout_seconds=0.2)
    t0 = time.monotonic()
    out = A.process_alerts(slow, "2025-01", {"drift.share_drifted": 0.4}, say=quiet)
    assert time.monotonic() - t0 < 1.0 and "failed: no answer within 0.2 s" in out.failures[0]


def test_an_smtp_server_refusing_the_recipients_is_a_clear_failure(tmp_path, smtp):
    cfg = make_cfg(tmp_path, alerts_smtp_host="127.0.0.1", alerts_smtp_port=smtp(Refuser()),
                   alerts_mail_to="ops@example.org")
    out = A.process_alerts(cfg, "2025-01", {"drift.share_drifted": 0.4}, say=quiet)
    assert len(out.failures) == 1 and "email delivery" in out.failures[0]
    assert "all 1 recipients refused" in out.failures[0]
    assert A.read_alert_log(cfg).query("kind == 'delivery'").error.tolist() == ["all 1 recipients refused"]


# --- audit ------------------------------------------------------------------------------------------------------------
def test_raised_and_resolved_alerts_are_in_the_audit_trail_and_the_chain_verifies(tmp_path):
    cfg = make_cfg(tmp_path)
    run(cfg, {"2025-01": {"drift.share_drifted": 0.4, "performance.concept_drift_p": 0.001},
              "2025-02": {"drift.share_drifted": 0.4, "performance.concept_drift_p": 0.5},
              "2025-03": {"drift.share_drifted": 0.0, "performance.concept_drift_p": 0.5}})
    events = [(e.kind, e.subject, e.details["month"]) for e in read_events(cfg, "alert")]
    assert events == [(AUDIT_ALERT_RAISED, "share@2025-01", "2025-01"),
                      (AUDIT_ALERT_RAISED, "concept@2025-01", "2025-01"),
                      (AUDIT_ALERT_RESOLVED, "concept@2025-01", "2025-02"),
                      (AUDIT_ALERT_RESOLVED, "share@2025-01", "2025-03")]
    assert all(set(e.details) == {"rule", "severity", "month", "opened", "metrics", "hits", "retrain"}
               for e in read_events(cfg, "alert"))
    assert verify_chain(cfg) == (True, None)
