"""A long schemathesis run against a live scoring API (not a test: CI runs a short one in tests/test_serve.py).

    python tests/bench/schemathesis_long.py                           # 1,000 examples per operation
    python tests/bench/schemathesis_long.py --max-examples 5000 --workers 2 --max-time 1800

Builds (or reuses, with --root) a project with a champion, starts `mlops-nb serve` on 127.0.0.1 with an admin token,
and runs every schemathesis check against /openapi.json. A 413 counts as a correct rejection of schema-violating data
(too many batch records is a payload-size refusal). Prints schemathesis's summary and exits with its exit code.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import project  # noqa: E402
from conftest import BIN, stop  # noqa: E402
from serving_fixtures import start_api  # noqa: E402

CONFIG = ('[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "403", "404", "405", "406", "409", '
          '"413", "415", "422"]\n')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/mlops-nb-bench-serve"))
    ap.add_argument("--max-examples", type=int, default=1000)
    ap.add_argument("--max-time", type=int, default=1200, help="seconds; the run stops then")
    ap.add_argument("--workers", type=int, default=1, help="API worker processes")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    settings, cfg, version = project(a.root, 3000, 5)
    token = "schemathesis-admin-token-0123456789"
    with tempfile.TemporaryDirectory() as d:
        conf, report = Path(d) / "schemathesis.toml", Path(d) / "report.json"
        conf.write_text(CONFIG)
        proc, url = start_api(settings, workers=a.workers, env={"MLOPS_API_ADMIN_TOKEN": token},
                              log=a.root / "schemathesis-api.log")
        try:
            cmd = [str(BIN / "schemathesis"), "--config-file", str(conf), "run", f"{url}/openapi.json", "--checks",
                   "all",
                   "--max-examples", str(a.max_examples), "--max-time", str(a.max_time), "-H",
                   f"Authorization: Bearer {token}",
                   "--request-timeout", "60", "--report", "json", "--report-json-path", str(report)]
            if a.seed is not None: cmd += ["--seed", str(a.seed)]
            rc = subprocess.call(cmd, cwd=d)
        finally:
            stop(proc)
        rep = json.loads(report.read_text())
    log = (a.root / "schemathesis-api.log").read_text()
    print(f"\n{rep['test_cases']['generated']} cases generated; failures: {rep['failures'] or 'none'}; errors: "
          f"{rep['errors'] or 'none'}; server tracebacks: {log.count('Traceback')}")
    return rc or (1 if "Traceback" in log else 0)


if __name__ == "__main__":
    sys.exit(main())
