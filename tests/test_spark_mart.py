"""The mart on Spark SQL: one world's staging built into `mart.customer_month` by DuckDB and by a real local Spark
session (pyspark with Debian's Java runtime) from the same statements — identical row counts and content hashes, for
the history and again for an operated month loaded incrementally; Spark's Java process gone when the load ends; a clear
refusal where Spark cannot start. Marked `scaleout`: a developer may skip it (-m "not scaleout"); CI runs it."""
from __future__ import annotations

import duckdb
import psutil
import pytest

from conftest import make_project, run_cli
from test_operate import WORLD

pytestmark = pytest.mark.scaleout
SPARK = dict(compute_mart_engine="spark", compute_spark_memory="1g")


def mart_state(cfg) -> dict:
    """What the mart holds: rows per month, its content digest and the warehouse's stored content hash."""
    from mlops_nb.contracts import sql_digest
    from mlops_nb.warehouse import stored_content_hash
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        return dict(rows=dict(con.execute("SELECT month, count(*) FROM mart.customer_month GROUP BY ALL ORDER BY 1")
                              .fetchall()),
                    digest=sql_digest(con, "mart.customer_month"), stored=stored_content_hash(con),
                    parts=con.execute("SELECT part, rows, hash_sum FROM meta.content_parts WHERE table_name = "
                                      "'mart.customer_month' ORDER BY part").fetchall())


def java_children() -> list[str]:
    return [p.name() for p in psutil.Process().children(recursive=True) if "java" in p.name()]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """One world twice — its mart built by DuckDB and by Spark SQL: {"duckdb": cfg, "spark": cfg}."""
    from mlops_nb.lake import generate_lake
    from mlops_nb.settings import load_settings
    root = tmp_path_factory.mktemp("mart-engines")
    out = {"duckdb": load_settings(make_project(root / "duckdb", **WORLD), env={}),
           # (an apostrophe in the project's path: the hand-over's files, Spark's folders and its launcher's options)
           "spark": load_settings(make_project(root / "team's spark", **WORLD, **SPARK), env={})}
    for cfg in out.values(): generate_lake(cfg)
    return out


def test_both_engines_build_the_same_mart_from_the_same_staging(engines):
    """DuckDB's load in this process; Spark's through `mlops-nb run etl` (papermill, MLflow) on a project whose settings
    alone say spark: the same rows per month, the same content, part by part, and the same warehouse hash."""
    import mlflow

    from mlops_nb.warehouse import load_warehouse
    duck = load_warehouse(engines["duckdb"])
    cfg = engines["spark"]
    r = run_cli("--settings", str(cfg.source), "run", "etl", "--no-progress", timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="params.etl_mart_engine = 'spark'",
                                output_format="list")
    assert run.info.status == "FINISHED" and int(run.data.metrics["mart_rows"]) == duck.tables["mart.customer_month"]
    a, b = mart_state(engines["duckdb"]), mart_state(cfg)
    assert len(a["rows"]) == 5 and a["rows"] == b["rows"] and sum(a["rows"].values()) > 5 * 600
    assert a["digest"] == b["digest"] and a["parts"] == b["parts"]
    assert a["stored"] == b["stored"] == duck.content_hash


def test_an_operated_month_is_built_incrementally_on_spark_as_on_duckdb(engines, tmp_path, monkeypatch):
    """The operate loop's incremental load: the next month observed, only the changed months rebuilt — on Spark the
    states come from every record known by the month's end, on DuckDB from the moved-forward state table."""
    from mlops_nb.lake import observe_month
    from mlops_nb.warehouse import load_warehouse
    monkeypatch.chdir(tmp_path)                     # Spark leaves nothing in the folder it was started from
    res = {}
    for name, cfg in engines.items():
        if mart_state(cfg)["rows"].get("2025-06") is None: observe_month(cfg, "2025-06")
        res[name] = load_warehouse(cfg)
    assert res["spark"].mart_months == res["duckdb"].mart_months == ["2025-06"]
    a, b = mart_state(engines["duckdb"]), mart_state(engines["spark"])
    assert "2025-06" in a["rows"] and a == b
    assert res["spark"].mart_engine == "spark" and java_children() == []   # Spark's Java process ended with the load
    assert list(tmp_path.iterdir()) == []


def test_spark_without_java_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from mlops_nb.lake import generate_lake
    from mlops_nb.settings import load_settings
    from mlops_nb.staging import EtlError
    from mlops_nb.warehouse import load_warehouse
    cfg = load_settings(make_project(tmp_path / "nojava", **WORLD, **SPARK), env={})
    generate_lake(cfg)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(EtlError, match=r"mart_engine = spark: no Java runtime \(JAVA_HOME=.*no-jdk has no bin/java\)"
                                       r".*default-jre-headless"):
        load_warehouse(cfg)
    assert not cfg.paths.warehouse.exists()


def test_a_failing_spark_session_is_one_clear_line_and_the_load_is_rolled_back(tmp_path):
    """Spark's own errors carry a Java stack; the load says what failed in one line, and writes nothing."""
    from mlops_nb.lake import generate_lake
    from mlops_nb.settings import load_settings
    from mlops_nb.staging import EtlError
    from mlops_nb.warehouse import load_warehouse
    cfg = load_settings(make_project(tmp_path / "tiny-heap", **WORLD, **{**SPARK, "compute_spark_memory": "1m"}),
                        env={})
    generate_lake(cfg)
    with pytest.raises(EtlError, match=r"^the mart on Spark SQL failed starting its session: \S.*") as e:
        load_warehouse(cfg)
    assert "\n" not in str(e.value) and "at org.apache" not in str(e.value)
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM staging.usage").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM mart.customer_month").fetchone()[0] == 0
    assert java_children() == []
