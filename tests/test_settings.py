"""Run settings: the repository's file matches the schema, and every kind of bad value gives a clear error."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_cli
from mlops_nb.settings import SettingsError, load_settings, render_settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "settings.ini"
    p.write_text(text, encoding="utf-8")
    return p


def error_of(path: Path, **kw) -> str:
    with pytest.raises(SettingsError) as e:
        load_settings(path, **kw)
    return str(e.value)


def test_repo_settings_is_the_rendered_template_and_loads():
    text = (REPO / "settings.ini").read_text(encoding="utf-8")
    assert text == render_settings(), (
        "settings.ini drifted from the schema: run `mlops-nb settings --template > settings.ini`"
    )
    cfg = load_settings(REPO / "settings.ini", env={})
    assert cfg.lake.customers == 20_000 and cfg.paths.lake == (REPO / "data/lake").resolve()


def test_every_key_is_documented_in_the_file():
    text = render_settings()
    for line_no, line in enumerate(text.splitlines()):
        if "=" in line and not line.startswith("#"):
            assert text.splitlines()[line_no - 1].startswith("# "), f"undocumented key: {line}"


def test_missing_key_names_section_and_key(tmp_path):
    p = write(tmp_path, render_settings().replace("customers = 20000\n", ""))
    msg = error_of(p, env={})
    assert "settings.ini [lake] customers: missing" in msg and "e.g. customers = 20000" in msg


@pytest.mark.parametrize("old,new,expected", [
    ("customers = 20000", "customers = twenty", "[lake] customers: expected a whole number, got 'twenty'"),
    ("customers = 20000", "customers = 3", "[lake] customers: must be at least 50"),
    ("scenario = stable", "scenario = sunny", "[lake] scenario: expected one of stable, drift; got 'sunny'"),
    ("contact_cost = 3.0", "contact_cost = 3,50", "[charter] contact_cost: expected a number, got '3,50'"),
    ("start_month = 2025-01", "start_month = 2025-13", "[lake] start_month: '2025-13' does not have the expected form"),
    ("max_fairness_gap = 0.15", "max_fairness_gap = nan", "[charter] max_fairness_gap: expected a finite number"),
    ("drift_month = 8", "drift_month = 13", None),
])
def test_malformed_values_name_section_and_key(tmp_path, old, new, expected):
    text = render_settings()
    assert old in text
    if expected is None:  # valid on its own (drift month only matters in the drift scenario)
        load_settings(write(tmp_path, text.replace(old, new)), env={})
    else:
        assert expected in error_of(write(tmp_path, text.replace(old, new)), env={})


def test_drift_month_must_fall_inside_a_drift_scenario(tmp_path):
    text = render_settings().replace("scenario = stable", "scenario = drift").replace("drift_month = 8",
                                                                                      "drift_month = 13")
    assert "[lake] drift_month: 13 is after the last month (12) of the drift scenario" in error_of(
        write(tmp_path, text), env={}
    )


def test_all_problems_are_reported_at_once(tmp_path):
    p = write(tmp_path,
              render_settings().replace("customers = 20000", "customers = x").replace("seed = 42", "seed = -1"))
    msg = error_of(p, env={})
    assert "[lake] customers" in msg and "[lake] seed" in msg


def test_unknown_section_and_key_are_errors_with_a_suggestion(tmp_path):
    p = write(tmp_path, render_settings().replace("[lake]\n", "[lake]\ncustomer = 5\n") + "\n[extra]\nx = 1\n")
    msg = error_of(p, env={})
    assert "[lake] customer: unknown key (did you mean 'customers'?)" in msg
    assert "[extra] is not a known section" in msg


def test_environment_overrides_and_their_errors(tmp_path):
    p = write(tmp_path, render_settings())
    cfg = load_settings(p,
                        env={"MLOPS_MLFLOW__TRACKING_URI": "http://127.0.0.1:5999", "MLOPS_LAKE__CUSTOMERS": "1_000"})
    assert cfg.mlflow.tracking_uri == "http://127.0.0.1:5999" and cfg.lake.customers == 1000
    assert "environment MLOPS_LAKE__MONTHS: expected a whole number" in error_of(p,
                                                                                 env={"MLOPS_LAKE__MONTHS": "twelve"})
    assert "environment MLOPS_LAKE__MONTH: unknown key (did you mean 'months'?)" in error_of(
        p, env={"MLOPS_LAKE__MONTH": "3"}
    )


def test_relative_paths_resolve_against_the_settings_folder(tmp_path):
    cfg = load_settings(write(tmp_path, render_settings()), env={})
    assert cfg.paths.warehouse == tmp_path / "data/warehouse.duckdb"
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path}/data/mlflow.db"


@pytest.mark.parametrize("content,expected", [
    (b"customers = 5\n", "cannot parse"),                     # no section header
    (b"[lake]\ncustomers = 5\ncustomers = 6\n", "cannot parse"),  # duplicate key
    ("[lake]\nscenario = est\xe1vel\n".encode("latin-1"), "not UTF-8 text"),
])
def test_unparseable_files_name_the_file(tmp_path, content, expected):
    p = tmp_path / "settings.ini"
    p.write_bytes(content)
    msg = error_of(p, env={})
    assert str(p) in msg and expected in msg


def test_missing_file_and_cli_errors_have_no_traceback(tmp_path):
    assert "settings file not found" in error_of(tmp_path / "nope.ini", env={})
    bad = write(tmp_path, render_settings().replace("seed = 42", "seed = forty-two"))
    r = run_cli("--settings", str(bad), "settings")
    assert r.returncode == 2 and "[lake] seed: expected a whole number" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("settings", env={"MLOPS_SETTINGS": str(bad)})
    assert r.returncode == 2 and "forty-two" in r.stderr


def test_a_settings_file_from_the_first_version_still_loads(tmp_path, caplog):
    "The project's first settings.ini (four sections): every key added since takes its default, with one notice."
    import logging
    import shutil
    from mlops_nb.settings import SECTIONS, key_since
    from dataclasses import fields
    p = tmp_path / "settings.ini"
    shutil.copy(REPO / "tests" / "fixtures" / "settings_2026-11-26.ini", p)
    with caplog.at_level(logging.WARNING, logger="mlops_nb.settings"):
        cfg = load_settings(p, env={})
    added = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls) if key_since(cls, f) > 1}
    assert set(cfg.defaulted) == added and {"train.blend_within", "api.port", "paths.audit",
                                            "charter.save_rate"} <= added
    assert (
        cfg.lake.customers == 20000
        and cfg.train.blend_within == 0.01
        and cfg.paths.audit == (tmp_path / "data/audit/audit.jsonl").resolve()
    )
    notices = [r.getMessage() for r in caplog.records if r.name == "mlops_nb.settings"]
    assert len(notices) == 1 and f"written before {len(added)} settings were added" in notices[0]
    assert "[paths] audit" in notices[0] and f"and {len(added) - 8} more" in notices[0]
    assert load_settings(REPO / "settings.ini", env={}).defaulted == ()        # a current file fills nothing
    p.write_text(p.read_text().replace("\ncustomers = 20000", "\n# customers = 20000"))   # a key the first version had
    assert "[lake] customers: missing" in error_of(p, env={})


def test_an_unknown_key_still_stops_an_old_file(tmp_path):
    shutil_src = (REPO / "tests" / "fixtures" / "settings_2026-11-26.ini").read_text()
    p = write(tmp_path, shutil_src.replace("[charter]", "[charter]\nsave_rat = 0.3"))
    assert "[charter] save_rat: unknown key (did you mean 'save_rate'?)" in error_of(p, env={})


def test_a_sandbox_in_a_checkout_runs_the_repositorys_phase_notebooks(tmp_path):
    """A retraining the operate loop asks for inside a sandbox runs the train → gate notebooks through papermill: a
    sandbox made in a checkout points at the repository's (it pointed at an empty <root>/nbs, and the retraining
    failed with 'phase notebook not found'); an explicit value still wins."""
    from mlops_nb.settings import sandbox_settings
    assert sandbox_settings(tmp_path / "a").paths.notebooks == (REPO / "nbs").resolve()
    assert sandbox_settings(tmp_path / "b", paths_notebooks=str(tmp_path)).paths.notebooks == tmp_path
