"""Bring-your-own-data through the whole lifecycle, with no code change: a flat telco-style table the test makes
itself, pointed at by a [byod] settings section. The best candidate must match plain scikit-learn defaults."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import background_result, in_background, make_project
from mlops_nb.settings import load_settings

pytestmark = pytest.mark.slow


@in_background("byod_run")
def _teams_table(root: Path) -> tuple[list[str], tuple]:
    from mlops_nb.sandbox import telco_table, write_table
    root = root / "proj"
    df, injected = telco_table(n_customers=6000, months=0, seed=11)
    write_table(df, root / "data" / "my_table.csv")
    (root / "our_rules.yaml").write_text("rules:\n  - {name: charges_not_negative, kind: range, column: "
                                         "MonthlyCharges, min: 0}\n",
                                         encoding="utf-8")
    settings = make_project(root, lake_source="byod", byod_path="data/my_table.csv", byod_id_column="customerID",
                            byod_target_column="Churn", byod_positive_value="Yes",
                            byod_sensitive_columns="gender, SeniorCitizen",
                            byod_pii_columns="name, email", byod_rules_file="our_rules.yaml", train_trials=1)
    return ["--settings", str(settings), "run", "--no-progress"], (settings, df, injected)


@pytest.fixture(scope="module")
def byod_run():
    """(settings path, the table, the defects injected, the finished `mlops-nb run`), run in the background."""
    (settings, df, injected), r = background_result("byod_run")
    return settings, df, injected, r


def test_the_lifecycle_runs_on_a_teams_own_table(byod_run):
    settings, _, _, r = byod_run
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    record = json.loads(next((settings.parent / "reports/runs").iterdir()).joinpath("manifest.json").read_text())
    assert all(p["status"] == "FINISHED" for p in record["phases"])
    assert not (settings.parent / "data/lake").exists(), "no synthetic lake for bring-your-own-data"


def test_a_small_table_is_cross_validated_and_the_choice_made_out_of_fold(byod_run, tmp_path):
    """Below [train] cv_max_rows: 5 stratified folds over every non-test row, the shipped model refitted on all of
    them, its out-of-fold probabilities what evaluation calibrated and chose on (selection by value, AUC tie-break)."""
    from mlops_nb.train import load_candidates
    from mlops_nb.tracking import MlflowClient, configure_mlflow
    settings, _, _, _ = byod_run
    cfg = load_settings(settings, env={})
    configure_mlflow(cfg)
    exp = MlflowClient().get_experiment_by_name(cfg.mlflow.experiment)
    train = MlflowClient().search_runs([exp.experiment_id], "tags.`mlops_nb.phase` = 'train'")[0]
    p = train.data.params
    assert p["cv_folds"] == "5" and p["train_rows"] == p["valid_rows"], "every non-test row validated out of fold"
    cands = load_candidates(cfg)
    assert cands and all(c.oof is not None and len(c.oof) == int(p["valid_rows"]) for c in cands)
    assert all(c.metrics["cv_auc_lo"] <= c.metrics["cv_auc_mean"] <= c.metrics["cv_auc_hi"] for c in cands)
    ev = MlflowClient().search_runs([exp.experiment_id], "tags.`mlops_nb.phase` = 'evaluate'")[0]
    fetch = MlflowClient().download_artifacts
    doc = json.loads(Path(fetch(ev.info.run_id, "evaluation/evaluation.json", str(tmp_path))).read_text())
    assert doc["data"]["valid_rows"] == int(p["valid_rows"])
    cv = [c["info"]["cv"] for c in doc["candidates"]]
    assert cv and all(c["folds"] == 5 and c["lo"] <= c["mean"] <= c["hi"] for c in cv)   # reported beside the test's
    card = Path(fetch(doc["selected"]["run_id"], "evaluation/model_card.md", str(tmp_path))).read_text()
    assert "cross-validated (5 folds" in card and "## Selection" in card and "Selected —" in card
    rule = doc["selected"]["rule"]
    assert rule.startswith("highest value on validation") or rule.startswith("tied on value"), rule


def test_bad_rows_are_quarantined_and_counts_reconcile(byod_run):
    from mlops_nb.contracts import connect_warehouse
    settings, df, injected, _ = byod_run
    cfg = load_settings(settings, env={})
    with connect_warehouse(cfg) as con:
        reasons = dict(con.execute("select reason, count(*) from quarantine.byod group by reason").fetchall())
        loaded = con.execute("select count(*) from staging.byod").fetchone()[0]
    for kind in ("missing_id", "missing_target", "unknown_target", "unparseable_number"):
        assert reasons.get(kind, 0) >= injected[kind], (kind, reasons)
    assert loaded + sum(reasons.values()) + injected["duplicate"] == len(df)


def test_the_teams_own_quality_rule_is_checked(byod_run):
    from mlops_nb.contracts import connect_warehouse
    settings, _, _, _ = byod_run
    with connect_warehouse(load_settings(settings, env={})) as con:
        rows = con.execute("SELECT table_name, column_name, passed FROM quality.results WHERE rule = "
                           "'charges_not_negative'").fetchall()
        source = con.execute("SELECT rules_source FROM quality.runs").fetchall()
    assert rows == [("staging.byod", "monthly_charges", True)]
    assert len(source) == 1 and source[0][0].endswith("our_rules.yaml")


def test_best_candidate_matches_plain_sklearn_defaults(byod_run):
    """Issue goal: at least the 5-fold CV AUC of scikit-learn defaults on the same (clean) data."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder
    from mlops_nb.contracts import load_feature_table
    from mlops_nb.tracking import MlflowClient, configure_mlflow
    settings, _, _, _ = byod_run
    cfg = load_settings(settings, env={})
    table, spec = load_feature_table(cfg)
    data = table[table[spec.target].notna()]
    X, y = data[list(spec.features)], data[spec.target].astype(int)
    cats = list(spec.categorical)
    baseline = make_pipeline(
        ColumnTransformer(
            [
                (
                    "cat",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1),
                    cats,
                )
            ],
            remainder="passthrough",
        ),
        HistGradientBoostingClassifier(),
    )
    cv = cross_val_score(baseline, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="roc_auc")
    configure_mlflow(cfg)
    exp = MlflowClient().get_experiment_by_name(cfg.mlflow.experiment)
    train = MlflowClient().search_runs([exp.experiment_id], "tags.`mlops_nb.phase` = 'train'")[0]
    ours = max(v for k, v in train.data.metrics.items() if k.endswith("_test_auc"))
    print(f"best candidate test AUC {ours:.4f} vs sklearn defaults 5-fold CV AUC {cv.mean():.4f} ± {cv.std():.4f}")
    assert ours >= cv.mean() - 2 * cv.std() / np.sqrt(len(cv)), (ours, cv.mean(), cv.std())


def test_no_clear_personal_data_outside_the_vault(byod_run):
    from mlops_nb.privacy import scan_for_values
    settings, df, _, _ = byod_run
    cfg = load_settings(settings, env={})
    needles = set(pd.concat([df["name"], df["email"], df["customerID"]]).dropna().astype(str))
    # ids the table generator plants as literals (its bad rows) live in our source code, which models bundle: not data
    import mlops_nb
    source = "\n".join(p.read_text() for p in Path(mlops_nb.__file__).parent.glob("*.py"))
    needles = [v for v in needles if v not in source]
    assert len(needles) > 10_000
    places = [cfg.paths.warehouse, settings.parent / "reports", cfg.mlflow.artifacts, cfg.paths.audit.parent]
    assert scan_for_values([p for p in places if p.exists()], needles) == []
