"""The synthetic data lake: determinism, defects re-detected from the raw files, oracle consistency, drift, atomicity.

Everything runs on real generated files (small sizes); defect checks parse the lake themselves rather than trusting
the oracle's defect list, then check that list's row pointers against what the files contain.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_nb import lake as L
from mlops_nb import people
from mlops_nb import sources
from mlops_nb import world
from mlops_nb.settings import SettingsError, sandbox_settings

RATE = 0.05
RATES = {f"lake_{k}": RATE for k in ("duplicate_rate", "missing_rate", "date_format_rate", "spelling_rate",
                                     "outlier_rate", "corrupt_rate", "late_rate")}


def make(tmp: Path, **kw):
    values = dict(lake_customers=3000, lake_months=6, lake_drift_month=4, lake_schema_drift_month=4,
                  lake_campaign_share=0.3, lake_scenario="drift", **RATES)
    values.update(kw)
    cfg = sandbox_settings(tmp, **values)
    return cfg, L.generate_lake(cfg)


@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    return make(tmp_path_factory.mktemp("drift"))


@pytest.fixture(scope="module")
def stable(tmp_path_factory):
    return make(tmp_path_factory.mktemp("stable"), lake_scenario="stable")


# --- reading the raw files independently ------------------------------------------------------------------------

def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def lines_of(cfg, source: str, month: str) -> list[str]:
    """Data lines of a text file (header dropped), decoded with the source's encoding."""
    src = sources.SOURCES[source]
    text = (cfg.paths.lake / source / f"month={month}" / src.file).read_bytes().decode(src.encoding)
    assert text.endswith(src.newline)
    lines = text[: -len(src.newline)].split(src.newline) if text else []
    return lines[1:] if src.format == "csv" else lines


def parse(source: str, line: str) -> dict | None:
    """A record, or None when the line is corrupt (bad JSON, wrong field count)."""
    src = sources.SOURCES[source]
    names = [c.name for c in src.columns]
    if src.format == "jsonl":
        try: rec = json.loads(line)
        except json.JSONDecodeError: return None
        return rec if list(rec) == names else None
    fields = next(csv.reader([line], delimiter=src.sep))
    return {k: (v if v != "" else None) for k, v in zip(names, fields)} if len(fields) == len(names) else None


def records(cfg, source: str, month: str) -> pd.DataFrame:
    """Well-formed records of one text partition, with their 0-based record index (`row`)."""
    rows = [(i, parse(source, ln)) for i, ln in enumerate(lines_of(cfg, source, month))]
    df = pd.DataFrame([r for _, r in rows if r is not None])
    df["row"] = [i for i, r in rows if r is not None]
    return df


def months(cfg) -> list[str]:
    return people.month_labels(cfg.lake.start_month, cfg.lake.months)


def defects(cfg, kind: str, source: str | None = None) -> pd.DataFrame:
    d = L.read_defects(cfg.paths.oracle)
    d = d[d.kind == kind]
    return d if source is None else d[d.source == source]


def copies(cfg, source: str, month: str) -> set[int]:
    """Rows the oracle records as re-sent copies (they repeat their original's other defects without re-recording
    them)."""
    d = defects(cfg, "duplicate", source)
    return set(d[d.month == month].row)


def within(observed: int, n: int, p: float, sds: float = 4.0) -> bool:
    """Is `observed` out of `n` consistent with rate p (normal approximation)?"""
    return abs(observed - n * p) <= sds * np.sqrt(n * p * (1 - p)) + 1


DATE_RE = {"%d/%m/%Y": r"\d\d/\d\d/\d{4}", "%Y-%m-%d": r"\d{4}-\d\d-\d\d",
           "%Y-%m-%dT%H:%M:%S": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"}


def lenient_date(s: str):
    for f in ("%d/%m/%Y", "%Y-%m-%d", "%d-%m-%Y", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%d/%m/%Y %H:%M"):
        try: return datetime.strptime(s, f)
        except (ValueError, TypeError): pass
    return None


# --- determinism -------------------------------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_lake_and_oracle(tmp_path):
    a, ra = make(tmp_path / "a", lake_customers=800, lake_months=4, lake_drift_month=3, lake_schema_drift_month=3)
    b, rb = make(tmp_path / "b", lake_customers=800, lake_months=4, lake_drift_month=3, lake_schema_drift_month=3)
    ha, hb = tree_hashes(a.paths.lake), tree_hashes(b.paths.lake)
    assert len(ha) == 1 + 7 * 4 and ha == hb
    assert tree_hashes(a.paths.oracle) == tree_hashes(b.paths.oracle)
    assert ra.manifest == rb.manifest
    c, rc = make(tmp_path / "c", lake_customers=800, lake_months=4, lake_drift_month=3, lake_schema_drift_month=3,
                 lake_seed=7)
    hc = tree_hashes(c.paths.lake)
    assert hc.keys() == ha.keys()
    differ = [k for k in ha if ha[k] != hc[k]]
    # e.g. an empty month-1 cancellations file
    assert len(differ) >= len(ha) - 2, "a different seed should change (nearly) every file"


def test_segment_signal_changes_only_who_is_persuadable_and_keeps_the_mix(tmp_path):
    kw = dict(lake_customers=4000, lake_months=3, lake_drift_month=3, lake_schema_drift_month=3, lake_scenario="stable")
    a, _ = make(tmp_path / "a", **kw)
    b, _ = make(tmp_path / "b", lake_segment_signal=1.0, **kw)
    ha, hb = tree_hashes(a.paths.lake), tree_hashes(b.paths.lake)
    # the same customers behave the same until an offer meets them: month 1's records other than the campaign's
    first = [k for k in ha if "month=2025-01" in k and not k.startswith("campaigns")]
    assert len(first) >= 4 and all(ha[k] == hb[k] for k in first)
    ta, tb = (L.read_truth(c.paths.oracle) for c in (a, b))
    j = ta[ta.month == "2025-01"].merge(tb[tb.month == "2025-01"], on="customer_id", suffixes=("_a", "_b"))
    assert len(j) == (ta.month == "2025-01").sum()
    mix = pd.DataFrame({"a": j.segment_a.value_counts(normalize=True), "b": j.segment_b.value_counts(normalize=True)})
    # the same mix among new customers; among the active a few points fewer persuadables (month-to-month customers
    # paying above list price leave sooner, and now they are the persuadable ones)
    assert (mix.a - mix.b).abs().max() < 0.06, mix
    assert 0.2 < (j.segment_a != j.segment_b).mean() < 0.8                          # different people in them


def test_manifest_describes_every_file(drift):
    cfg, res = drift
    man = json.loads((cfg.paths.lake / "_manifest.json").read_text())
    assert man == res.manifest and man["generator"] == L.GENERATOR_VERSION and man["lake"]["seed"] == cfg.lake.seed
    on_disk = {p for p in tree_hashes(cfg.paths.lake) if p != "_manifest.json"}
    assert {f["path"] for f in man["files"]} == on_disk
    for f in man["files"]:
        data = (cfg.paths.lake / f["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["bytes"], f["sha256"])
        if f["format"] == "parquet": assert len(pd.read_parquet(cfg.paths.lake / f["path"])) == f["rows"]
        else: assert len(lines_of(cfg, f["source"], f["month"])) == f["rows"]
    # nothing of the oracle in the lake
    assert not list(cfg.paths.lake.rglob("*oracle*")) and "p_churn" not in json.dumps(man)


# --- the defects, re-detected from the files -------------------------------------------------------------------

TEXT_SOURCES = [s for s, src in sources.SOURCES.items() if src.text]


def test_corrupt_lines_are_exactly_the_recorded_ones_at_the_configured_rate(drift):
    cfg, _ = drift
    total = bad = 0
    for s in TEXT_SOURCES:
        recorded = defects(cfg, "corrupt_line", s)
        for m in months(cfg):
            lines = lines_of(cfg, s, m)
            found = {i for i, ln in enumerate(lines) if parse(s, ln) is None}
            assert found == set(recorded[recorded.month == m].row), (s, m)
            total, bad = total + len(lines), bad + len(found)
    assert bad > 0 and within(bad, total, RATE * (1 - RATE)), (bad, total)  # duplicates' copies are never corrupted


def test_duplicates_are_exact_resent_records(drift):
    cfg, _ = drift
    for s in sources.SOURCES:
        rec, n, found = defects(cfg, "duplicate", s), 0, 0
        for m in months(cfg):
            src = sources.SOURCES[s]
            if src.text:
                lines = lines_of(cfg, s, m)
                seen, copies = set(), set()
                for i, ln in enumerate(lines):
                    # two lines truncated to the same prefix are not re-sent records
                    if parse(s, ln) is None: continue
                    if ln in seen: copies.add(i)
                    seen.add(ln)
                assert copies <= set(rec[rec.month == m].row), (s, m)   # every exact repeat is a recorded duplicate
                n, found = n + len(lines), found + len(copies)
            else:
                df = pd.read_parquet(cfg.paths.lake / s / f"month={m}" / src.file)
                assert set(np.flatnonzero(df.duplicated().to_numpy())) == set(rec[rec.month == m].row), (s, m)
                n, found = n + len(df), found + int(df.duplicated().sum())
        assert len(rec) >= found >= 0.85 * len(rec)   # a copy whose original was later truncated no longer matches it
        if n > 500: assert within(len(rec), n, RATE / (1 + RATE) * (1 + RATE), 5), (s, len(rec), n)


def test_usage_defects_missing_outliers_and_schema_rename(drift):
    cfg, _ = drift
    frames = []
    for i, m in enumerate(months(cfg), 1):
        df = pd.read_parquet(cfg.paths.lake / "usage" / f"month={m}" / "usage.parquet")
        expected = "data_usage_gb" if i >= cfg.lake.schema_drift_month else "data_gb"
        assert expected in df.columns
        assert ("data_gb" in df.columns) == (i < cfg.lake.schema_drift_month)
        frames.append(df.rename(columns={"data_usage_gb": "data_gb"}).drop_duplicates())
    u = pd.concat(frames)
    n = len(u)
    assert within(int((u.data_gb < 0).sum() + (u.data_gb > 10_000).sum()), n, RATE)
    assert within(int((u.dropped_call_rate > 1).sum() + (u.dropped_call_rate < 0).sum()),
                  int(u.dropped_call_rate.notna().sum()), RATE)
    assert within(int(u[["voice_minutes", "days_active", "dropped_call_rate"]].isna().any(axis=1).sum()), n, RATE)
    renames = defects(cfg, "schema_rename", "usage")
    assert sorted(renames.month) == months(cfg)[cfg.lake.schema_drift_month - 1:]


def test_date_formats_spellings_and_missing_values_in_text_sources(drift):
    cfg, _ = drift
    canon = sources.SOURCES["cancellations"].col("request_date").fmt
    c = pd.concat([records(cfg, "cancellations", m) for m in months(cfg)])
    odd = ~c.request_date.str.fullmatch(DATE_RE[canon])
    assert within(int(odd.sum()), len(c), RATE) and c.request_date[odd].map(lenient_date).notna().all()
    k = pd.concat([records(cfg, "contracts", m).assign(month=m) for m in months(cfg)], ignore_index=True)
    for col in ("product", "contract_type", "plan"):
        values = sources.SOURCES["contracts"].col(col).values
        assert within(int((~k[col].isin(values)).sum()), len(k), RATE), col
    rec = defects(cfg, "spelling", "contracts")
    for m, g in k.groupby("month"):   # the oracle's pointers land on misspelt values
        hit = rec[(rec.month == m) & (rec.column == "product")].row
        sel = g[g.row.isin(hit)]
        assert (~sel["product"].isin(sources.PRODUCTS)).all()
    t = pd.concat([records(cfg, "tickets", m) for m in months(cfg)])
    missing = t.channel.isna() | t.category.isna()
    assert within(int(missing.sum()), len(t), RATE, 5)
    assert not t.opened_at.isna().any()                                # only optional columns are blanked
    assert within(int((~t.opened_at.str.fullmatch(DATE_RE[sources.SOURCES["tickets"].col("opened_at").fmt])).sum()),
                  len(t), RATE)


def test_late_records_sit_in_a_later_partition_with_their_true_dates(drift):
    cfg, _ = drift
    ms = months(cfg)
    late_found = total = 0
    for m in ms:
        t = records(cfg, "tickets", m)
        opened = t.opened_at.map(lenient_date)
        early = opened.notna() & (opened.map(lambda d: d.strftime("%Y-%m") if d else "") < m)
        rec = defects(cfg, "late", "tickets")
        assert set(t.row[early]) - copies(cfg, "tickets", m) == set(rec[rec.month == m].row) & set(t.row), m
        late_found, total = late_found + int(early.sum()), total + len(t)
        b = records(cfg, "billing", m)
        assert (b.reference_month <= m).all()
    last = ms[-1]
    assert late_found > 0 and within(late_found, total, RATE * (1 - 1 / cfg.lake.months), 5)
    assert not (records(cfg, "billing", ms[0]).reference_month < ms[0]).any()
    assert (records(cfg, "billing", last).reference_month < last).any()


def test_crm_is_latin1_with_accents_and_valid_cpfs_except_the_injected(drift):
    cfg, _ = drift
    m1 = months(cfg)[0]
    raw = (cfg.paths.lake / "crm_customers" / f"month={m1}" / "clientes.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError): raw.decode("utf-8")
    text = raw.decode("latin-1")
    assert text.startswith(
        "id_cliente;nome;cpf;email;telefone;data_nascimento;sexo;uf;cidade;endereco;cep;data_cadastro\r\n"
    )
    assert re.search(r"[ãçéíóôúâêõ]", text) and any(w in text for w in ("João", "Conceição", "Gonçalves"))
    invalid = defects(cfg, "invalid_cpf", "crm_customers")
    n_rows = n_bad = 0
    all_cpfs = []
    for m in months(cfg):
        crm = records(cfg, "crm_customers", m)
        ok = people.cpf_is_valid(crm.cpf)
        assert set(crm.row[~ok]) - copies(cfg, "crm_customers",
                                          m) == set(invalid[invalid.month == m].row) & set(crm.row), m
        assert crm.cpf.str.fullmatch(r"\d{3}\.\d{3}\.\d{3}-\d\d|\d{11}").all()
        all_cpfs.append(crm[ok].drop_duplicates(["id_cliente", "cpf"])[["id_cliente", "cpf"]])
        n_rows, n_bad = n_rows + len(crm), n_bad + int((~ok).sum())
    assert within(n_bad, n_rows, RATE)
    ids = pd.concat(all_cpfs).assign(cpf=lambda d: d.cpf.str.replace(r"\D", "", regex=True)).drop_duplicates()
    assert ids.cpf.is_unique and ids.id_cliente.is_unique   # one CPF per customer, never shared


def test_defect_rates_follow_the_settings(tmp_path):
    cfg, res = make(tmp_path, lake_customers=600, lake_months=3, lake_drift_month=2, lake_schema_drift_month=0,
                    **{k: 0.0 for k in RATES})
    assert sum(res.stats["defects"].values()) == res.stats["defects"]["cents_amount"]
    k = records(cfg, "contracts", months(cfg)[0])
    assert k["product"].isin(sources.PRODUCTS).all() and k.event_date.str.fullmatch(DATE_RE["%Y-%m-%d"]).all()


# --- the oracle ----------------------------------------------------------------------------------------------------

def test_realised_churn_matches_the_true_probabilities(drift):
    cfg, _ = drift
    t = L.read_truth(cfg.paths.oracle)
    assert set(t.segment) == set(people.SEGMENTS) and t.month.nunique() == cfg.lake.months
    assert t[t.month == months(cfg)[-1]].churned_next.isna().all()
    u = t[~t.treated & t.churned_next.notna()]
    p, y = u.p_churn.to_numpy(), u.churned_next.to_numpy(float)
    assert abs(y.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)
    assert 0.015 < p.mean() < 0.05
    np.testing.assert_allclose(t.uplift, t.p_churn - t.p_churn_offered)


def test_every_churner_has_a_cancellation_and_nobody_else(drift):
    cfg, _ = drift
    t = L.read_truth(cfg.paths.oracle)
    ms = months(cfg)
    canc = pd.concat([records(cfg, "cancellations", m).assign(partition=m) for m in ms]).drop_duplicates("customer_id")
    # a truncated line keeps at least its first field, the customer id
    ids = {ln.split(",")[0]: m for m in ms for ln in lines_of(cfg, "cancellations", m)}
    churn = t[t.churned_next == 1]
    assert set(churn.customer_id) == set(ids) and set(canc.customer_id) <= set(ids)
    j = churn.merge(canc, on="customer_id")
    nxt = {m: ms[i + 1] for i, m in enumerate(ms[:-1])}
    assert (j.partition >= j.month.map(nxt)).all()                     # late ones land later, never earlier
    req = j.request_date.map(lenient_date)
    known = req.notna()
    assert (req[known].map(lambda d: d.strftime("%Y-%m")) == j.month.map(nxt)[known]).all()   # the true date: month m+1
    active_next = {m: set(t[t.month == m].customer_id) for m in ms}
    # churners are gone next month
    assert not any(c in active_next[nxt[m]] for c, m in zip(churn.customer_id, churn.month))


def test_campaign_is_randomised_and_the_offer_works_by_segment(drift):
    cfg, _ = drift
    t = L.read_truth(cfg.paths.oracle)
    camp = pd.concat(
        [pd.read_parquet(p) for p in sorted(cfg.paths.lake.glob("campaigns/*/campaign.parquet"))]
    ).drop_duplicates()
    j = t[t.in_campaign].merge(camp, on=["customer_id", "month"], suffixes=("", "_lake"))
    assert len(j) == int(t.in_campaign.sum()) and (j.arm == j.arm_lake).all()
    assert abs((j.arm == "treatment").mean() - 0.5) < 0.01
    assert (j.treated == (j.arm.eq("treatment") & j.contacted)).all() and not (j.accepted & ~j.contacted).any()
    done = t[t.in_campaign & t.churned_next.notna()]
    pers = done[done.segment == "persuadable"].groupby("arm").churned_next.mean()
    assert pers["treatment"] < 0.7 * pers["control"], pers
    seg = t.groupby("segment").uplift.mean()
    assert seg["persuadable"] > seg["sure_thing"] > 0 > seg["sleeping_dog"] and seg["lost_cause"] == 0


def test_simulate_offer_outcomes_on_a_real_oracle_month(drift):
    cfg, _ = drift
    t = L.read_truth(cfg.paths.oracle)
    om = t[t.month == months(cfg)[1]].reset_index(drop=True)
    none = world.simulate_offer_outcomes(om, np.zeros(len(om), bool), seed=3)
    target = (om.segment == "persuadable").to_numpy()
    some = world.simulate_offer_outcomes(om, target, seed=3)
    assert (some == world.simulate_offer_outcomes(om, target, seed=3)).all()
    assert some[target].sum() < none[target].sum() and (some[~target] == none[~target]).all()


# --- the drift scenario ------------------------------------------------------------------------------------------

def billing_median(cfg, m: str) -> float:
    return float(people.parse_brl(records(cfg, "billing", m).amount).median())


def test_drift_shows_the_three_shifts_in_the_right_month(drift, stable):
    for (cfg, _), drifting in ((drift, True), (stable, False)):
        ms, d = months(cfg), cfg.lake.drift_month - 1
        med = [billing_median(cfg, m) for m in ms]
        ratio = med[d] / np.median([x for i, x in enumerate(med) if i != d])
        assert (90 < ratio < 110) if drifting else (0.9 < ratio < 1.1), (drifting, med)
        k = pd.concat([records(cfg, "contracts", m).assign(month=m) for m in ms], ignore_index=True)
        pix = k.payment_method.fillna("").str.strip().str.lower().eq("pix").groupby(k.month).mean()
        assert pix[ms[:d]].max() == 0
        assert (pix[ms[d:]].min() > 0.05) if drifting else pix.max() == 0, pix
        crm = pd.concat([records(cfg, "crm_customers", m).assign(month=m) for m in ms[1:]], ignore_index=True)
        born, joined = crm.data_nascimento.map(lenient_date), crm.data_cadastro.map(lenient_date)
        age = ((joined - born).dt.days / 365.25)[
            joined.map(lambda x: x is not None and x.strftime("%Y-%m")) == crm.month
        ]
        young = age.groupby(crm.month).median()
        shift = young[ms[1:d]].mean() - young[ms[d:]].mean()
        assert (shift > 6) if drifting else (abs(shift) < 4), young
        t = L.read_truth(cfg.paths.oracle)
        k0 = k[k.month == ms[0]][["customer_id", "product", "monthly_fee"]]
        seg = t.merge(k0, on="customer_id")
        hit = seg["product"].eq("fibre") & (pd.to_numeric(seg.monthly_fee, errors="coerce") > world.CONCEPT_FEE)
        p = seg[hit].groupby("month").p_churn.mean()
        lift = p[ms[d:]].mean() / p[ms[:d]].mean()
        assert (lift > 1.5) if drifting else (lift < 1.25), p
        notes = json.loads((cfg.paths.oracle / "scenario.json").read_text())
        kinds = {(e["kind"], e["month"]) for e in notes["expected_detections"]}
        assert ("schema_drift", ms[cfg.lake.schema_drift_month - 1]) in kinds
        assert (
            {("input_drift", ms[d]), ("concept_drift", ms[d]), ("data_bug", ms[d])} <= kinds
            if drifting
            else len(kinds) == 1
        )


# --- atomicity and settings --------------------------------------------------------------------------------------

def test_a_failed_generation_leaves_the_previous_lake_untouched(tmp_path):
    cfg, res = make(tmp_path, lake_customers=300, lake_months=3, lake_drift_month=2, lake_schema_drift_month=2)
    before = tree_hashes(cfg.paths.lake), tree_hashes(cfg.paths.oracle)

    def boom(month: int, label: str):
        if month == 2: raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        L.generate_lake(dataclasses.replace(cfg, lake=dataclasses.replace(cfg.lake, seed=99)), progress=boom)
    assert (tree_hashes(cfg.paths.lake), tree_hashes(cfg.paths.oracle)) == before
    assert [p.name for p in cfg.paths.lake.parent.iterdir() if p.name.startswith(".")] == []


KILL_SCRIPT = """
import sys
from mlops_nb.settings import load_settings
from mlops_nb.lake import generate_lake
generate_lake(load_settings(sys.argv[1]), progress=lambda m, label: print(m, flush=True))
"""


def test_a_killed_generation_never_leaves_a_half_written_lake(tmp_path):
    cfg = sandbox_settings(tmp_path, lake_customers=60_000, lake_months=6, lake_drift_month=4,
                           lake_schema_drift_month=4)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(cfg.source)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"   # month 1 is written: the partial folder exists
        partial = [p for p in cfg.paths.lake.parent.iterdir() if p.name.startswith(".lake.partial-")]
        assert len(partial) == 1 and any(partial[0].rglob("*.parquet"))
        assert not cfg.paths.lake.exists()
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
    assert not cfg.paths.lake.exists() and not cfg.paths.oracle.exists()      # absent, never partial
    small = dataclasses.replace(cfg, lake=dataclasses.replace(cfg.lake, customers=300))
    # the next run cleans up the dead run's leftovers
    res = L.generate_lake(small)
    assert [p.name for p in cfg.paths.lake.parent.iterdir() if p.name.startswith(".")] == []
    assert {f["path"] for f in res.manifest["files"]} == set(tree_hashes(cfg.paths.lake)) - {"_manifest.json"}


def test_bad_settings_give_clear_errors(tmp_path):
    with pytest.raises(SettingsError, match=r"drift_month: 9 is after the last month \(6\) of the drift scenario"):
        sandbox_settings(tmp_path / "a", lake_months=6, lake_drift_month=9, lake_scenario="drift")
    # irrelevant when stable
    sandbox_settings(tmp_path / "a2", lake_months=6, lake_drift_month=9, lake_scenario="stable")
    cfg = sandbox_settings(tmp_path / "b", lake_scenario="drift")
    with pytest.raises(SettingsError,
                       match=r"drift_month = 99 must be between 2 and the last month \(6\) in the drift scenario"):
        L.generate_lake(dataclasses.replace(cfg, lake=dataclasses.replace(cfg.lake, drift_month=99)))
    with pytest.raises(SettingsError, match="schema_drift_month = -1"):
        world.check_lake(dataclasses.replace(cfg.lake, schema_drift_month=-1))
    # past the last month: the rename never happens
    world.check_lake(dataclasses.replace(cfg.lake, schema_drift_month=7))
    inside = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, oracle=cfg.paths.lake / "oracle"))
    with pytest.raises(SettingsError, match="must not be inside the lake"):
        L.generate_lake(inside)
    assert not cfg.paths.lake.exists()


# --- the phase: MLflow gets aggregates, never personal data -------------------------------------------------------

def test_run_lake_logs_aggregates_and_no_personal_data(tmp_path):
    from mlflow.tracking import MlflowClient
    cfg = sandbox_settings(tmp_path, lake_customers=400, lake_scenario="drift")
    res = L.run_lake(cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])[0]
    assert run.data.tags["mlops_nb.phase"] == "lake" and run.info.status == "FINISHED"
    assert run.data.params["lake_scenario"] == "drift" and run.data.params["lake_customers"] == "400"
    assert run.data.metrics["defects_cents_amount"] > 0 and 0 < run.data.metrics["true_churn_rate_overall"] < 0.1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "rows_usage")] == list(range(1, 7))
    logged = json.dumps([run.data.params, run.data.metrics, run.data.tags])
    got = {a: Path(client.download_artifacts(run.info.run_id, a, str(tmp_path / "dl"))).read_text()
           for a in ("lake/manifest.json", "lake/scenario.json")}
    assert json.loads(got["lake/manifest.json"]) == res.manifest
    logged += "".join(got.values())
    crm = records(cfg, "crm_customers", months(cfg)[0])
    for col in ("nome", "cpf", "email", "telefone", "endereco"):
        assert not any(v in logged for v in crm[col].dropna().head(200)), col
    masked = people.mask_pii(crm.head(50)).to_string()
    assert not any(
        v in masked for v in crm.head(50)[["nome", "cpf", "email", "telefone"]].to_numpy().ravel() if isinstance(v, str)
    )
