"""The lake and the prediction log in an S3-compatible bucket: a real moto server (moto's server mode) on 127.0.0.1, and
one world loaded twice — from local disk and from the bucket — giving the same warehouse, features, scores, campaign
and monitor, with nothing of the bucket's stores left on local disk. Marked `scaleout`: a developer may skip it
(-m "not scaleout"); CI runs it."""
from __future__ import annotations

import os

import duckdb
import pandas as pd
import pytest

from conftest import BIN, free_port, launch, make_project, run_cli, stop
from test_operate import WORLD, table

pytestmark = pytest.mark.scaleout
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
BUCKET = "team-lake"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port with an empty bucket; the AWS credentials in the environment (where
    the package reads them, as on a real team's machines)."""
    root = tmp_path_factory.mktemp("moto")
    url = f"http://127.0.0.1:{(port := free_port())}"
    proc = launch([BIN / "moto_server", "-H", "127.0.0.1", "-p", port], f"{url}/moto-api/", cwd=root,
                  env={**os.environ, **KEYS}, log=root / "moto.log", timeout=60)
    saved = {k: os.environ.get(k) for k in KEYS}
    os.environ.update(KEYS)
    try:
        from pyarrow import fs as pafs
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield url
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
        stop(proc)


def in_bucket(url: str, prefix: str) -> dict:
    return dict(paths_lake=f"s3://{BUCKET}/{prefix}/lake", paths_prediction_log=f"s3://{BUCKET}/{prefix}/log",
                storage_s3_endpoint_url=url)


@pytest.fixture(scope="module")
def pair(s3, tmp_path_factory):
    """One world twice — its stores on local disk, and its lake and prediction log in the bucket — each loaded,
    featured, given a champion and operated for a month: {"local": cfg, "bucket": cfg}."""
    from mlops_nb.features import write_features
    from mlops_nb.lake import generate_lake
    from mlops_nb.operate import operate
    from mlops_nb.sandbox import sandbox_champion
    from mlops_nb.settings import load_settings
    from mlops_nb.warehouse import load_warehouse
    root = tmp_path_factory.mktemp("object-store")
    out = {"local": load_settings(make_project(root / "local", **WORLD), env={}),
           "bucket": load_settings(make_project(root / "bucket", **WORLD, **in_bucket(s3, "churn")), env={})}
    for name, cfg in out.items():
        generate_lake(cfg); load_warehouse(cfg); write_features(cfg)
        sandbox_champion(cfg, params={"max_iter": 40}, threshold=0.05)
        (month,) = operate(cfg, month="2025-06", say=lambda s: None)
        assert month.status == "ok", (name, month.status)
    return out


def outcome(cfg) -> dict:
    """What a month's run left: the warehouse's content digests, the logged scores, the campaign, the monitor."""
    from mlops_nb.contracts import sql_digest
    from mlops_nb.prediction_log import read_prediction_log
    with duckdb.connect(str(cfg.paths.warehouse), read_only=True) as con:
        digests = {t: sql_digest(con, t) for t in ("mart.customer_month", "features.customer_month")}
    log = read_prediction_log(cfg)
    return dict(
        digests=digests,
        scores=log[["customer_key", "churn_probability", "decision"]].sort_values("customer_key")
        .reset_index(drop=True),
        actions=table(cfg, "SELECT customer_key, action FROM ops.actions ORDER BY customer_key"),
        monitor=table(cfg, "SELECT month, scored, contacted, status FROM monitor.months"),
        drift=table(cfg, 'SELECT "column", kind, distance, threshold, drifted FROM monitor.drift ORDER BY ALL'),
    )


def test_one_world_from_disk_and_from_a_bucket_gives_the_same_warehouse_scores_and_monitor(pair, tmp_path):
    from mlops_nb.pii_scan import pii_scan
    from mlops_nb.settings import ObjectPath
    bucket = pair["bucket"]
    assert isinstance(bucket.paths.lake, ObjectPath) and isinstance(bucket.paths.prediction_log, ObjectPath)
    a, b = outcome(pair["local"]), outcome(bucket)
    assert a["digests"] == b["digests"]                                   # the same warehouse, loaded from the bucket
    pd.testing.assert_frame_equal(a["scores"], b["scores"])               # the same scores, logged into the bucket
    pd.testing.assert_frame_equal(a["actions"], b["actions"])             # the same campaign, read back from it
    pd.testing.assert_frame_equal(a["monitor"], b["monitor"])
    pd.testing.assert_frame_equal(a["drift"], b["drift"], check_exact=False)
    # the bucket's stores are in the bucket, not on local disk
    lake, logged, project = bucket.paths.lake, bucket.paths.prediction_log, bucket.source.parent
    assert (lake / "_manifest.json").is_file() and lake.glob("usage/month=*/*")
    assert logged.glob("date=*/part-*.parquet") and not (project / "data" / "lake").exists()
    assert not (project / "data" / "prediction_log").exists()
    # the personal-data scan searches the log in the bucket too, and finds nothing in the clear
    places, found = pii_scan(bucket)
    assert logged in places and found == [], found


def test_an_erasure_reaches_the_lake_in_the_bucket(pair):
    """LGPD art. 18 where the data lives: a former customer's records are cut from the lake's objects themselves, the
    warehouse follows, and the scan (the log in the bucket included) finds nothing."""
    import io

    from mlops_nb.erasure import departures, subject_needles
    from mlops_nb.privacy import NeedleSet, load_key, pseudonymise
    from mlops_nb.subjects import warehouse_record
    cfg = pair["bucket"]
    ids = []
    for f in cfg.paths.lake.glob("crm_customers/month=*/clientes.csv"):
        crm = pd.read_csv(io.BytesIO(f.read_bytes()), sep=";", encoding="latin-1", dtype=str, on_bad_lines="skip")
        ids += crm.id_cliente.dropna().str.strip().str.upper().tolist()
    keys = dict(zip(pseudonymise(ids, load_key(cfg), "customer"), ids))
    gone = next(k for k, m in sorted(departures(cfg, sorted(keys)).items()) if m and m < "2025-06")
    needles = NeedleSet([keys[gone], *subject_needles(cfg, [gone], [keys[gone]])])
    assert warehouse_record(cfg, [gone]) and [f for f in cfg.paths.lake.files() if needles.find(f.read_bytes())]
    r = run_cli("--settings", str(cfg.source), "subject", "erase", keys[gone], "--reason", "asked by e-mail")
    assert r.returncode == 0 and r.stdout.startswith("done"), (r.stdout, r.stderr)
    assert [str(f) for f in cfg.paths.lake.files() if NeedleSet([keys[gone]]).find(f.read_bytes())] == []
    assert warehouse_record(cfg, [gone]) == {}
    assert run_cli("--settings", str(cfg.source), "pii", "scan").returncode == 0


def test_the_api_writes_its_log_into_the_bucket_and_finds_a_decision_there(pair, tmp_path):
    """The scoring API on the bucket's project: each answer is logged into the bucket (by host and process, as replicas
    on several hosts would write it), and a decision is found there again by its request id (LGPD art. 20 review)."""
    import httpx

    from mlops_nb.prediction_log import find_logged_request
    from serving_fixtures import latest_records, start_api
    cfg = pair["bucket"]
    records, _ = latest_records(cfg, 20)
    before = len(cfg.paths.prediction_log.glob("date=*/part-*.parquet"))
    api, url = start_api(cfg.source, env={"MLOPS_API__LOG_FLUSH_SECONDS": "0.2"}, log=tmp_path / "api.log")
    try:
        answers = [httpx.post(f"{url}/v1/score", json={"features": r}).json() for r in records]
    finally:
        stop(api)                                          # SIGTERM: the last rows are flushed before it ends
    assert all("request_id" in a for a in answers), answers[:2]
    assert len(cfg.paths.prediction_log.glob("date=*/part-*.parquet")) > before
    assert cfg.paths.prediction_log.glob("_usage/api-*.json")             # what serving cost, beside the log
    found = find_logged_request(cfg.paths.prediction_log, answers[-1]["request_id"])
    assert len(found) == 1 and found.churn_probability[0] == answers[-1]["churn_probability"]
    review = run_cli("--settings", str(cfg.source), "review", answers[-1]["request_id"])
    assert review.returncode == 0, review.stderr


def test_object_paths_are_refused_clearly_where_they_cannot_go(s3, tmp_path):
    from mlops_nb.prediction_log import compact_prediction_log
    from mlops_nb.settings import SettingsError, load_settings
    with pytest.raises(SettingsError, match=r"\[paths\] warehouse = s3://team-lake/w.duckdb: only lake and "
                                            "prediction_log may be on object storage"):
        load_settings(make_project(tmp_path / "w", paths_warehouse=f"s3://{BUCKET}/w.duckdb"), env={})
    with pytest.raises(SettingsError, match="expected s3://bucket/prefix"):
        load_settings(make_project(tmp_path / "b", paths_lake="s3://No_Such_Bucket!/lake"), env={})
    cfg = load_settings(make_project(tmp_path / "c", **in_bucket(s3, "compact")), env={})
    with pytest.raises(SettingsError, match="not compacted: an object store has no atomic swap"):
        compact_prediction_log(cfg)


def test_a_missing_bucket_or_an_unreachable_server_is_said_in_the_stores_terms(s3, tmp_path):
    """Not pyarrow's HTTP-level text: which object, what is wrong, which server, where the credentials come from — and
    from the command line, one line and exit 2, no traceback."""
    from mlops_nb.settings import ObjectPath, SettingsError
    with pytest.raises(SettingsError, match=r"^s3://no-such-bucket/lake/x: the bucket no-such-bucket does not exist "
                                            r"\(writing it; \[storage\] s3_endpoint_url = http://127\.0\.0\.1:\d+; "
                                            r"credentials from AWS_ACCESS_KEY_ID"):
        (ObjectPath("s3://no-such-bucket/lake", s3) / "x").write_bytes(b"1")
    down = f"http://127.0.0.1:{free_port()}"                 # nothing listens there
    with pytest.raises(SettingsError, match=r"^s3://team-lake/x: the server cannot be reached \(listing it"):
        ObjectPath(f"s3://{BUCKET}/x", down).files()
    settings = make_project(tmp_path / "down", paths_prediction_log=f"s3://{BUCKET}/down/log",
                            storage_s3_endpoint_url=down)
    r = run_cli("--settings", str(settings), "pii", "scan", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"error: s3://{BUCKET}/down/log: the server cannot be reached"), r.stderr
