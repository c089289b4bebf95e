"""The audit trail from the command line: `mlops-nb audit verify` names every kind of tampering (and passes an intact
trail), `mlops-nb audit show` filters; the checkpoint's key lives outside the data folder."""
from __future__ import annotations

import json
import stat

import pytest

from conftest import run_cli
from mlops_nb.audit import GENESIS, _digest, append_event, checkpoint_path
from mlops_nb.catalog import AUDIT_GATE_DECIDED, AUDIT_MODEL_STATUS, AUDIT_TRAIN_FINISHED
from mlops_nb.settings import sandbox_settings


@pytest.fixture
def trail(tmp_path):
    "A sandbox with a five-entry trail: (settings, its lines, its checkpoint text)."
    cfg = sandbox_settings(tmp_path / "p")
    append_event(cfg, AUDIT_TRAIN_FINISHED, "run-a", {"best_family": "hgb"}, actor="scheduler")
    append_event(cfg, AUDIT_GATE_DECIDED, "run-b", {"approved": True, "version": "3"}, actor="scheduler")
    append_event(cfg, AUDIT_MODEL_STATUS, "churn-model@3", {"to": "production"}, actor="ana")
    append_event(cfg, AUDIT_MODEL_STATUS, "churn-model@4", {"to": "staging"}, actor="ana")
    append_event(cfg, AUDIT_TRAIN_FINISHED, "run-c", {"best_family": "logreg"}, actor="scheduler")
    return cfg, cfg.paths.audit.read_text().splitlines(), checkpoint_path(cfg).read_text()


def verify(cfg):
    return run_cli("--settings", str(cfg.source), "audit", "verify")


def rechain(lines):
    "Renumber and rehash every entry: what someone without the key can do to make the chain itself verify."
    out, prev = [], GENESIS
    for i, line in enumerate(lines):
        d = {**json.loads(line), "seq": i, "prev": prev}
        d["hash"] = prev = _digest(d)
        out.append(json.dumps(d))
    return out


TAMPERING = {
    "edited": (lambda L: [L[0], L[1].replace('"approved": true', '"approved": false'), *L[2:]], "line 2"),
    "removed": (lambda L: [L[0], *L[2:]], "missing before line 2"),
    "inserted": (lambda L: [*L[:3], L[2], *L[3:]], "line 4 is a copy of line 3"),
    "reordered": (lambda L: [L[0], L[2], L[1], *L[3:]], "seq 1 is at line 3"),
    "malformed": (lambda L: [L[0], L[1], '{"seq": 2, "kind": ', *L[3:]], "line 3 is malformed"),
    "truncated": (lambda L: L[:4], "the checkpoint records 5 entries, the file holds 4"),
    "rewritten": (lambda L: rechain([L[0], L[1].replace('"approved": true', '"approved": false'), *L[2:]]),
                  "last hash differs"),
    "appended": (lambda L: rechain([*L, L[0]]), "lines 6..6 were appended without the key"),
}


def test_an_intact_trail_verifies(trail):
    cfg, _, _ = trail
    r = verify(cfg)
    assert r.returncode == 0 and "audit trail intact: 5 entries" in r.stdout, (r.stdout, r.stderr)
    key = cfg.privacy.audit_key_file
    assert key.exists() and not key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)   # 0600, outside the data folder
    assert cfg.paths.audit.parent not in key.parents


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_every_kind_of_tampering_is_named_with_where(trail, kind):
    cfg, lines, cp = trail
    change, where = TAMPERING[kind]
    cfg.paths.audit.write_text("\n".join(change(list(lines))) + "\n")
    checkpoint_path(cfg).write_text(cp)
    r = verify(cfg)
    assert r.returncode == 1 and f"NOT intact ({kind})" in r.stderr and where in r.stderr, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_a_deleted_or_forged_checkpoint_is_refused(trail, monkeypatch):
    cfg, lines, cp = trail
    checkpoint_path(cfg).unlink()
    r = verify(cfg)
    assert r.returncode == 1 and "no keyed checkpoint" in r.stderr
    forged = {**json.loads(cp), "count": 4}                          # without the key, the MAC cannot follow
    checkpoint_path(cfg).write_text(json.dumps(forged))
    r = verify(cfg)
    assert r.returncode == 1 and "MAC does not verify" in r.stderr


def test_a_trail_from_before_checkpoints_is_anchored_once_checked(trail):
    cfg, lines, _ = trail
    checkpoint_path(cfg).unlink()
    r = run_cli("--settings", str(cfg.source), "audit", "verify", "--anchor")
    assert r.returncode == 0 and "intact: 5 entries" in r.stdout, (r.stdout, r.stderr)
    cfg.paths.audit.write_text("\n".join(lines[:1] + lines[2:]) + "\n")   # a broken chain is never anchored
    checkpoint_path(cfg).unlink()
    r = run_cli("--settings", str(cfg.source), "audit", "verify", "--anchor")
    assert r.returncode == 1 and "(removed)" in r.stderr and not checkpoint_path(cfg).exists()


def test_show_filters_by_kind_actor_version_subject_and_time(trail):
    cfg, _, _ = trail
    def show(*a):
        r = run_cli("--settings", str(cfg.source), "audit", "show", "--json", *a)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["subject"] for e in show("--kind", "model")] == ["churn-model@3", "churn-model@4"]
    assert [e["seq"] for e in show("--actor", "scheduler")] == [0, 1, 4]
    assert [e["seq"] for e in show("--version", "3")] == [1, 2]            # a subject @3 and a version detail
    assert [e["seq"] for e in show("--subject", "run-")] == [0, 1, 4]
    assert len(show("--since", "2000", "--until", "2999")) == 5 and show("--until", "2000") == []
    assert [e["seq"] for e in show("--last", "2")] == [3, 4]
    r = run_cli("--settings", str(cfg.source), "audit", "show", "--kind", "gate")
    assert "gate.decided" in r.stdout and "run-b" in r.stdout
