"""The command line: help everywhere, README in sync with its notebook, MLproject in sync with the phases."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import REPO, run_cli
from mlops_nb.runner import PHASES

SUBCOMMANDS = ["run", "phases", "settings", "ui", "readme", "model", "model list", "model history", "model at",
               "model promote", "model stage", "model rollback", "model archive", "serve", "score"]


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_every_subcommand_has_help(sub):
    r = run_cli(*(sub.split() if sub else []), "--help")
    assert r.returncode == 0 and "usage: mlops-nb" in r.stdout and r.stderr == ""


def test_readme_is_rendered_from_the_index_notebook():
    r = run_cli("readme", "--check")
    assert r.returncode == 0, r.stderr


def test_readme_names_the_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "./run_all.sh          #" in text and "./run_all.sh --test   #" in text
    assert "./run_all.sh --test" in (REPO / ".ci/run").read_text()


def test_mlproject_has_an_entry_point_per_phase():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    for p in PHASES:
        assert spec["entry_points"][p.name]["command"] == f"mlops-nb run {p.name}"
    assert spec["entry_points"]["main"]["command"] == "mlops-nb run"


def test_phases_lists_every_phase_in_order():
    r = run_cli("phases")
    assert [line.split()[0] for line in r.stdout.splitlines()] == [p.name for p in PHASES]


def test_run_all_help_and_unknown_phase():
    r = subprocess.run([str(REPO / "run_all.sh"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--test" in r.stdout
    r = run_cli("run", "no-such-phase")
    assert r.returncode == 2 and "unknown phase 'no-such-phase'" in r.stderr and "Traceback" not in r.stderr
