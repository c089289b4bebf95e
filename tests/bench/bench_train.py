"""Benchmark the train phase on the demo table (not a test; prints figures).

    python tests/bench/bench_train.py --customers 10000 --months 8 --trials 4

Prints, per family: validation/test AUC against the oracle AUC (the true probabilities on the same rows), the
phase's wall time, one-row scoring and explanation latency in this process, and the same one-row scoring with the
pipeline a user would otherwise write (ColumnTransformer + SimpleImputer + OneHotEncoder/OrdinalEncoder), as a ratio.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def latency_ms(f, n: int = 300) -> tuple[float, float]:
    for _ in range(10): f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3), float(np.percentile(ts, 99) * 1e3)


def column_transformer_twin(pipe, spec):
    """The same model behind the encoder a user would write with scikit-learn's ColumnTransformer."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder
    enc = pipe[0]
    if enc.categorical_encoding == "onehot":
        # missing_values=None: DuckDB returns NULL strings as None, which the default (NaN) does not catch
        cat = make_pipeline(SimpleImputer(missing_values=None, strategy="constant", fill_value="(missing)"),
                            OneHotEncoder(handle_unknown="ignore", sparse_output=False))
    else:
        cat = make_pipeline(SimpleImputer(missing_values=None, strategy="constant", fill_value="(missing)"),
                            OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan))
    # DuckDB's Int64 <NA> trips a bare "passthrough"
    as_float = FunctionTransformer(lambda X: X.to_numpy(dtype=float, na_value=np.nan))
    num = (
        make_pipeline(as_float, SimpleImputer(strategy="median", add_indicator=enc.missing_indicators))
        if enc.numeric_imputation == "median"
        else as_float
    )
    ct = ColumnTransformer([("cat", cat, list(spec.categorical)), ("num", num, list(spec.numeric))])
    return Pipeline([("encode", ct), *pipe.steps[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--months", type=int, default=8)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()

    import torch
    torch.set_num_threads(1)
    from mlops_nb.contracts import load_feature_table
    from mlops_nb.explain import make_explainer
    from mlops_nb.settings import sandbox_settings
    from mlops_nb.sandbox import ensure_demo_features
    from mlops_nb.train import load_candidates, run_train, score
    from mlops_nb.split import split_frame

    cfg = sandbox_settings(train_trials=a.trials, train_seed=a.seed)
    ensure_demo_features(cfg, a.customers, a.months)
    res = run_train(cfg)
    df, spec = load_feature_table(cfg)
    split = split_frame(df, spec, seed=cfg.train.seed)
    oracle_valid = score(split.y("valid"), split.valid["_true_p"].to_numpy())["auc"]
    print(f"demo table: {a.customers} customers x {a.months} months; split {res.split}")
    print(f"train phase: {res.seconds:.1f} s for {a.trials} trials x {len(res.candidates)} families (incl. MLflow "
          "logging)")
    print(f"oracle AUC: valid {oracle_valid:.4f}, test {res.oracle_test_auc:.4f}")
    rows = []
    row = split.test.iloc[[0]]
    for c in load_candidates(cfg):
        twin = column_transformer_twin(c.pipeline, spec)
        twin.steps[0] = ("encode", twin[0].fit(split.train))
        assert np.allclose(twin.predict_proba(split.test.head(200)), c.pipeline.predict_proba(split.test.head(200)),
                           atol=1e-6), c.family
        ours, theirs = latency_ms(lambda: c.pipeline.predict_proba(row)), latency_ms(lambda: twin.predict_proba(row))
        ex = make_explainer(c.pipeline)
        expl = latency_ms(lambda: ex(row))
        rows.append({"family": c.family, "valid_auc": c.metrics["valid_auc"], "test_auc": c.metrics["test_auc"],
                     "test_gap_to_oracle": res.oracle_test_auc - c.metrics["test_auc"],
                     "fit_s": c.metrics["fit_seconds"],
                     "tuning_s": c.metrics["tuning_seconds"], "predict_p50_ms": ours[0], "predict_p99_ms": ours[1],
                     "column_transformer_p50_ms": theirs[0], "speedup_x": theirs[0] / ours[0],
                     "explain_p50_ms": expl[0], "explain_p99_ms": expl[1],
                     "params": c.params})
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).set_index("family").round(4).to_string())


if __name__ == "__main__":
    main()
