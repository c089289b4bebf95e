"""Nested cross-validation: our tuning and selection against plain scikit-learn defaults (not a test; prints figures).

    python tests/bench/bench_selection.py [--families logreg,hgb] [--trials 2] [--outer 5]

On small binary tables that ship inside installed packages (nothing downloaded) — the bring-your-own-data example
(`sandbox.telco_table`, its category spellings merged as the bring-your-own-data load merges them), statsmodels'
`fair` (affairs > 0) and `anes96` (votes Republican) — each outer fold holds
out a fifth of the rows; on the other four fifths our train phase's procedure runs as it does on a small table
(stratified K-fold tuning of each family, out-of-fold calibration, the charter's policy and selection by value
then AUC, the winner refitted on all of them), and the shipped model is scored on the held-out fifth. Plain
scikit-learn defaults (LogisticRegression on one-hot/standardised columns, HistGradientBoostingClassifier with
native categories) are fitted on the same outer folds. Prints the mean outer AUC of each and the paired difference.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


VERBOSE = False


def tables() -> dict[str, tuple[pd.DataFrame, str, list[str], list[str]]]:
    "name -> (frame with an `id` column, target, numeric columns, categorical columns)."
    import statsmodels.api as sm
    from mlops_nb.sandbox import telco_table
    out = {}
    t, _ = telco_table(n_customers=6000, months=0, seed=11, bad_rows=False)
    t = t.assign(Churn=(t["Churn"] == "Yes").astype(int))
    num = [c for c in ("tenure", "MonthlyCharges", "TotalCharges", "SeniorCitizen") if c in t]
    cat = [c for c in t.columns if c not in num + ["customerID", "Churn", "name", "email"] and t[c].dtype == object]
    for c in num: t[c] = pd.to_numeric(t[c], errors="coerce")
    out["telco (byod example)"] = (t.rename(columns={"customerID": "id"}), "Churn", num, cat)
    f = sm.datasets.fair.load_pandas().data
    f = f.assign(y=(f.pop("affairs") > 0).astype(int), id=np.arange(len(f)).astype(str))
    out["statsmodels fair"] = (f, "y", ["rate_marriage", "age", "yrs_married", "children", "religious", "educ"],
                               ["occupation", "occupation_husb"])
    a = sm.datasets.anes96.load_pandas().data
    a = a.assign(y=a.pop("vote").astype(int), id=np.arange(len(a)).astype(str))
    for c in ("TVnews", "PID", "age", "educ", "income", "popul", "selfLR", "ClinLR", "DoleLR"):
        a[c] = a[c].astype(float)
    out["statsmodels anes96"] = (a[["id", "y", "TVnews", "age", "educ", "income", "popul", "selfLR", "ClinLR",
                                    "DoleLR", "PID"]].assign(PID=a["PID"].astype(int).astype(str)), "y",
                                 ["TVnews", "age", "educ", "income", "popul", "selfLR", "ClinLR", "DoleLR"], ["PID"])
    return out


def ours(train: pd.DataFrame, test: pd.DataFrame, spec, families, trials: int, folds: int, seed: int) -> np.ndarray:
    "Our small-table procedure on `train`; the shipped model's probabilities of `test`."
    from mlops_nb.calibration import expected_calibration_error, fit_calibrator
    from mlops_nb.candidates import BLEND, LogOddsBlend, blend_members
    from mlops_nb.evaluate import select_by_value
    from mlops_nb.sections import CharterSettings, GateSettings, TrainSettings
    from mlops_nb.split import Split, stratified_folds
    from mlops_nb.train import blend_oof, tune_family
    from mlops_nb.value import best_threshold, budget_contacts, contact_policy
    # the split `30_split` makes of a flat table (its folds redrawn 3 times when it is cheap), on the outer fold
    cv, repeats = stratified_folds(train[spec.target].astype(int).to_numpy(), folds, 0, seed)
    split = Split(train, train, test, kind="random", target=spec.target, cv_repeats=repeats, folds=cv)
    y = split.y("valid")
    groups = split.valid_groups()
    best, oofs = {}, {}
    for f in families:
        b, _ = tune_family(f, split, spec, trials, seed)
        best[f], oofs[f] = b, b.oof
    members = blend_members({f: best[f].metrics["valid_auc"] for f in families}, TrainSettings().blend_within)
    names, pipes, ps = list(families), [best[f].pipeline for f in families], [oofs[f] for f in families]
    if members:
        names.append(BLEND); pipes.append(LogOddsBlend([best[m].pipeline for m in members], members).fit())
        ps.append(blend_oof([oofs[m] for m in members]))
    charter, gate = CharterSettings(), GateSettings()
    cals, pcs, contacts, aucs = [], [], [], []
    from sklearn.metrics import roc_auc_score
    for p in ps:
        cal = fit_calibrator(y, p, "auto", seed) if expected_calibration_error(y, p) > gate.max_ece else None
        pc = cal(p) if cal else p
        cals.append(cal); pcs.append(pc); aucs.append(roc_auc_score(y, pc))
        contacts.append(contact_policy(pc, best_threshold(pc, charter).threshold, budget_contacts(charter), groups))
    i, _, _ = select_by_value(names, aucs, y, pcs, contacts, charter, groups, gate.n_boot, seed, gate.confidence)
    p = pipes[i].predict_proba(test)[:, 1]
    if VERBOSE:
        yt = test[spec.target].astype(int)
        parts = [f"{n} oof {a:.4f} test {roc_auc_score(yt, q.predict_proba(test)[:, 1]):.4f}"
                 for n, a, q in zip(names, aucs, pipes)]
        print(f"    chose {names[i]}: " + ", ".join(parts))
    return cals[i](p) if cals[i] else p


def sklearn_defaults(train: pd.DataFrame, test: pd.DataFrame, target: str, num, cat) -> dict[str, np.ndarray]:
    "Plain scikit-learn defaults on the same rows."
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
    X, Xt, y = train[num + cat], test[num + cat], train[target].astype(int)
    lr = make_pipeline(ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), num),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), cat)]),
        LogisticRegression(max_iter=1000))
    hgb = make_pipeline(ColumnTransformer([("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                                                  encoded_missing_value=-1), cat)],
                                          remainder="passthrough"),
                        HistGradientBoostingClassifier(categorical_features=list(range(len(cat)))))
    return {name: m.fit(X, y).predict_proba(Xt)[:, 1] for name, m in (("sklearn LR", lr), ("sklearn HGB", hgb))}


def main() -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from mlops_nb.byod import merge_spellings
    from mlops_nb.contracts import FeatureSpec
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="logreg,hgb")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", default="", help="run only the tables whose name contains this")
    ap.add_argument("--verbose", action="store_true", help="print each outer fold's choice and the candidates' AUCs")
    a = ap.parse_args()
    global VERBOSE
    VERBOSE = a.verbose
    families = a.families.split(",")
    for name, (df, target, num, cat) in tables().items():
        if a.only not in name: continue
        df = df.reset_index(drop=True)
        # the categories as the bring-your-own-data load leaves them ('Month-to-month', ' MONTH-TO-MONTH ' merged):
        # both sides learn from the table our pipeline would hold
        for c in cat: df[c] = pd.Series(merge_spellings(df[c].astype("string")), index=df.index).astype("string")
        spec = FeatureSpec("id", target, tuple(num), tuple(cat), ())
        t0, res = time.perf_counter(), {"ours": [], "sklearn LR": [], "sklearn HGB": []}
        outer = StratifiedKFold(a.outer, shuffle=True, random_state=a.seed)
        for tr, te in outer.split(np.zeros(len(df)), df[target]):
            train, test = df.iloc[tr].reset_index(drop=True), df.iloc[te].reset_index(drop=True)
            y = test[target].astype(int).to_numpy()
            res["ours"].append(roc_auc_score(y, ours(train, test, spec, families, a.trials, a.inner, a.seed)))
            for k, p in sklearn_defaults(train, test, target, num, cat).items(): res[k].append(roc_auc_score(y, p))
        o = np.array(res["ours"])
        print(f"{name}: {len(df):,} rows, positives {df[target].mean():.1%}, {a.outer} outer folds, "
              f"{time.perf_counter() - t0:.0f} s")
        for k, v in res.items():
            d = o - np.array(v)
            extra = "" if k == "ours" else (f"   ours − this {d.mean():+.4f} (min {d.min():+.4f}, "
                                            f"{(d >= 0).sum()}/{len(d)} folds ≥ 0)")
            print(f"  {k:12s} nested-CV AUC {np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}{extra}")


if __name__ == "__main__":
    main()
