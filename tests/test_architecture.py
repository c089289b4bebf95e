"""The package's rooms: each module a numbered notebook, no room importing a later one, none too big, the catalog the
one place for cross-phase names, the README's map matching the tree — and a model registered before the rooms were
split still loading and scoring the same."""
from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG, NBS = ROOT / "mlops_nb", ROOT / "nbs"
MAX_LINES = 600                      # a module past this is two rooms
FIXTURE = ROOT / "tests" / "fixtures" / "model_before_rooms.zip"


def rooms() -> dict[str, tuple[int, str]]:
    "Each generated module → (its notebook's number, the notebook's name), read from the module's header."
    out = {}
    for p in sorted(PKG.glob("*.py")):
        m = re.search(r"File to edit: \.\./nbs/((\d\d)_\w+)\.ipynb", p.read_text(encoding="utf-8"))
        if m: out[p.stem] = (int(m.group(2)), m.group(1))
    return out


def package_imports(path: Path) -> list[tuple[str, int, bool]]:
    "(room imported, line, inside a function?) for every import of a module of this package, at any depth."
    tree, out = ast.parse(path.read_text(encoding="utf-8")), []
    def visit(node: ast.AST, nested: bool) -> None:
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, ast.ImportFrom):
                mod = ch.module or ""
                if ch.level:                               # from .x import y, from . import x
                    out.extend(
                        [(mod.split(".")[0], ch.lineno, nested)]
                        if mod
                        else [(a.name, ch.lineno, nested) for a in ch.names]
                    )
                elif mod == "mlops_nb": out.extend((a.name, ch.lineno, nested) for a in ch.names)
                elif mod.startswith("mlops_nb."): out.append((mod.split(".")[1], ch.lineno, nested))
            elif isinstance(ch, ast.Import):
                out.extend(
                    (a.name.split(".")[1], ch.lineno, nested) for a in ch.names if a.name.startswith("mlops_nb.")
                )
            visit(ch, nested or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    visit(tree, False)
    return out


def test_every_module_is_a_numbered_room():
    modules = {p.stem for p in PKG.glob("*.py")} - {"__init__", "_modidx"}
    assert modules == set(rooms()), modules ^ set(rooms())
    numbers = [n for n, _ in rooms().values()]
    assert len(numbers) == len(set(numbers)), "two rooms share a number"


def test_no_room_imports_a_later_one():
    r = rooms()
    upward = [f"{mod} ({n:02d}) imports {dep} ({r[dep][0]:02d}) at line {line}{' inside a function' if nested else ''}"
              for mod, (n, _) in r.items() for dep, line, nested in package_imports(PKG / f"{mod}.py")
              if dep in r and dep != mod and r[dep][0] >= n]
    assert not upward, "\n".join(upward)


def test_the_rule_is_checked_at_function_level_too(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from .settings import Settings\ndef f():\n    from mlops_nb.api import serve\n    from mlops_nb "
                 "import registry\n")
    assert package_imports(p) == [("settings", 1, False), ("api", 3, True), ("registry", 4, True)]


def test_no_room_is_too_big():
    big = {
        p.stem: n
        for p in PKG.glob("*.py")
        if p.stem != "_modidx" and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, big


def _string_constants(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str): yield node
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            yield node.values[0]


def test_cross_phase_names_live_in_the_catalog():
    "No module but the catalog spells a `mlops_nb.*` tag, or an audit event kind."
    from mlops_nb.catalog import AUDIT_KINDS
    modules = set(rooms())
    found = []
    for p in sorted(PKG.glob("*.py")):
        if p.stem in ("catalog", "_modidx"): continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for c in _string_constants(tree):
            v = c.value
            if re.match(r"mlops_nb\.\w", v) and v.split(".")[1].split(":")[0] not in modules | {"__version__"}:
                found.append(f"{p.stem}:{c.lineno} {v!r}")
            if v in AUDIT_KINDS: found.append(f"{p.stem}:{c.lineno} audit kind {v!r}")
    assert not found, "\n".join(found)


def test_the_catalog_names_each_thing_once():
    from mlops_nb.catalog import NAMES, catalog_frame
    f = catalog_frame()
    assert len(f) == len(NAMES) and f.groupby("kind").value.apply(lambda v: v.is_unique).all()
    assert set(f.kind) == {"phase", "tag", "artifact", "audit", "table", "alias", "status", "dataset", "section", "env",
                           "verb"}
    from mlops_nb.runner import PHASES
    from mlops_nb.settings import SECTIONS
    assert {p.name for p in PHASES} <= set(f[f.kind == "phase"].value) and list(SECTIONS) == list(
        f[f.kind == "section"].value
    )


def test_the_readme_map_matches_the_tree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 4)]
    listed = set(re.findall(r"`(\d\d_\w+)`", layout))
    notebooks = {p.stem for p in NBS.glob("[0-9][0-9]_*.ipynb")}
    assert listed == notebooks, (
        f"missing from the README: {sorted(notebooks - listed)}; not in nbs/: {sorted(listed - notebooks)}"
    )


# ---- a model registered before the move ------------------------------------------------------------------------------
@pytest.fixture
def old_model(tmp_path) -> tuple[Path, dict]:
    "The fixture model, unpacked: its folder and what the package said about its rows before the move."
    d = tmp_path / "model"
    with zipfile.ZipFile(FIXTURE) as z: z.extractall(d)
    return d, json.loads((d / "expected.json").read_text())


def test_a_model_saved_before_the_rooms_loads_and_scores_the_same(old_model):
    from mlops_nb.tracking import mlflow
    d, expected = old_model
    # it names the classes' old home
    assert "mlops_nb.train" in (d / "python_model.pkl").read_bytes().decode("latin-1")
    rows = pd.DataFrame(expected["rows"])
    out = mlflow.pyfunc.load_model(str(d)).predict(rows, params={"explain": True})
    np.testing.assert_array_equal(out["churn_probability"].to_numpy(), expected["churn_probability"])
    # the blend's log-odds average its torch member's, computed in float32 by kernels that differ with the CPU: on
    # an AMD EPYC they came 5e-9 from the figures recorded elsewhere (probabilities and contributions equal); a
    # float32 rounding is ~1e-7, a changed model moves them by orders of magnitude more
    np.testing.assert_allclose(out["log_odds"].to_numpy(), expected["log_odds"], rtol=0, atol=1e-7)
    for c, v in expected["contributions"].items(): np.testing.assert_allclose(out[c].to_numpy(), v, rtol=0, atol=1e-9)


def test_rollback_to_a_version_registered_before_the_rooms(old_model):
    "Registered, then replaced by a new champion, then rolled back to: the API loads it and scores as it did."
    from mlops_nb import registry
    from mlops_nb.encoder import json_records
    from mlops_nb.privacy import load_key
    from mlops_nb.sandbox import sandbox_champion
    from mlops_nb.served import load_served_model
    from mlops_nb.settings import sandbox_settings
    from mlops_nb.tracking import configure_mlflow
    d, expected = old_model
    cfg = sandbox_settings()
    load_key(cfg); configure_mlflow(cfg)
    old = registry.register(cfg, str(d), "", actor="test")
    registry.promote(cfg, old.version, actor="test", reason="the model that served before the rooms",
                     override_reason="registered before this package version: its gate ran then")
    new = sandbox_champion(cfg, params={"max_iter": 30}, n_customers=400, n_months=4)
    assert registry.version_with_status(cfg, "production").version == new.version
    back = registry.rollback(cfg, actor="test", reason="the new model misbehaves")
    assert back.version == old.version
    served = load_served_model(cfg, back.version)
    rows = pd.DataFrame(expected["rows"])
    assert served.self_check["max_abs_diff"] < 1e-9, served.self_check
    np.testing.assert_allclose(served.scorer.probabilities(served.scorer.encode_frame(rows)),
                               expected["churn_probability"], rtol=0, atol=1e-12)
    errors: list = []
    Z = np.array([served.scorer.records.encode(r, ("body",), errors)[0] for r in json_records(rows, served.features)])
    assert not errors
    np.testing.assert_allclose(served.scorer.probabilities(Z), expected["churn_probability"], rtol=0, atol=1e-9)
