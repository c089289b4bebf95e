#!/usr/bin/env bash
# mlops-nb: set everything up (idempotent) and run the whole lifecycle, or the whole test suite.
#
#   ./run_all.sh                 set up, then run the lifecycle on the built-in synthetic lake's history months
#                                and operate the months after them (`mlops-nb operate`)
#   ./run_all.sh -p KEY VALUE    same, with a setting or parameter overridden (see `mlops-nb run --help`)
#   ./run_all.sh --test          set up, then run all tests (nbdev export check, nbdev-test, pytest; Debian's
#                                chromium and postgresql are installed for the browser and team-profile tests if missing)
#   ./run_all.sh --help          this text
#
# Set-up creates .venv (if missing) with Python >= 3.11, installs the pinned set in requirements.lock
# (torch first: the CPU build from this machine's disk), installs this package in editable mode and
# registers the `mlops-nb` Jupyter kernel that papermill and JupyterLab use. It is skipped when nothing
# it depends on changed since the last time. Environment: PYTHON (interpreter for the venv),
# MLOPS_SETTINGS (settings file, default ./settings.ini), MLOPS_<SECTION>__<KEY> (override any setting).
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"
VENV="$ROOT/.venv"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export JUPYTER_PLATFORM_DIRS=1 PYDEVD_DISABLE_FILE_VALIDATION=1
# compiled bytecode is cached inside the venv (one tree, nothing written beside the sources): with
# PYTHONDONTWRITEBYTECODE set, as on this machine, every kernel, CLI and server process recompiled mlflow, sklearn,
# torch, pandas ... from source (13 s to import the evaluation's stack instead of 5; ~10 processes per run)
export PYTHONPYCACHEPREFIX="$VENV/.pycache"
unset PYTHONDONTWRITEBYTECODE
# the project's tools come first on PATH (as if the venv were activated): tools that start others by name
# (`mlflow models serve` runs `uvicorn`, papermill the kernel) must find the pinned ones, not the machine's
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'run_all.sh: %s\n' "$*" >&2; exit 1; }

usage() { sed -n "2,15p" "$0" | sed "s/^# \{0,1\}//"; }

MODE=run
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) MODE=test ;;
    -h|--help) usage; exit 0 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done

bootstrap() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$py is older than Python 3.11; set PYTHON=/path/to/python3.11+"
    say "creating $VENV"
    "$py" -m venv "$VENV"
  fi
  local stamp
  stamp="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-32)-$("$VENV/bin/python" -V 2>&1)"
  if [ -f "$VENV/.bootstrap-stamp" ] && [ "$(cat "$VENV/.bootstrap-stamp")" = "$stamp" ]; then
    return 0
  fi
  say "installing the pinned dependencies (requirements.lock)"
  local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  # uv installs the same pinned set as pip, in seconds rather than minutes (parallel downloads, no resolver round
  # trip per package); it is pinned in the lock too. torch is the CPU build from this machine's local wheels (pip's
  # find-links, which uv does not read from pip's config): without it the index's torch would pull a CUDA build.
  local links="${PIP_FIND_LINKS:-$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)}"
  if "${pip[@]}" "$(grep -E '^uv==' requirements.lock)" 2>/dev/null && [ -x "$VENV/bin/uv" ]; then
    local uv=("$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python")
    for l in $links; do uv+=(--find-links "$l"); done
    "${uv[@]}" -r requirements.lock
    "${uv[@]}" --no-deps -e .
  else   # no uv to be had: pip, torch first so that it takes the CPU build
    "${pip[@]}" "$(grep -E '^torch==' requirements.lock)"
    "${pip[@]}" -r requirements.lock
    "${pip[@]}" --no-deps --no-build-isolation -e . 2>/dev/null || "${pip[@]}" --no-deps -e .
  fi
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name mlops-nb --display-name "Python (mlops-nb)" >/dev/null
  "$VENV/bin/python" -m pip check >/dev/null || die "pip check failed after install: $("$VENV/bin/python" -m pip check | head -5)"
  echo "$stamp" > "$VENV/.bootstrap-stamp"
}

run_lifecycle() {
  say "running the lifecycle on the history months (mlops-nb run ${ARGS[*]:-})"
  if ! "$VENV/bin/mlops-nb" run "${ARGS[@]+"${ARGS[@]}"}"; then
    die "the lifecycle failed (the failing phase and cell are named above)"
  fi
  # then the months after the history, with the same overrides — unless only some phases were asked for
  local overrides=() i=0 n=${#ARGS[@]}
  while [ $i -lt $n ]; do
    if [ "${ARGS[$i]}" = "-p" ] && [ $((i + 2)) -lt "$n" ]; then
      overrides+=(-p "${ARGS[$((i + 1))]}" "${ARGS[$((i + 2))]}"); i=$((i + 3))
    else
      say "done (phases chosen by hand: no months operated): executed notebooks under reports/runs/"; return 0
    fi
  done
  say "operating the months after the history (mlops-nb operate ${overrides[*]:-})"
  if ! "$VENV/bin/mlops-nb" operate "${overrides[@]+"${overrides[@]}"}"; then
    die "operating the months failed (the failing month and step are named above)"
  fi
  say "the campaigns measured against their control groups (mlops-nb roi)"
  "$VENV/bin/mlops-nb" roi || true   # nothing measured yet is not a failure of the run
  say "the stakeholders' pages as HTML under reports/dashboards/ (mlops-nb dashboards --export; serve: mlops-nb dashboards)"
  "$VENV/bin/mlops-nb" dashboards --export --mlflow >/dev/null || die "exporting the dashboards failed (named above)"
  say "clear personal data only in the vault (mlops-nb pii scan); the audit trail intact (mlops-nb audit verify)"
  "$VENV/bin/mlops-nb" pii scan
  "$VENV/bin/mlops-nb" audit verify
  say "done: executed notebooks under reports/runs/; monitor snapshots in data/monitor/; MLflow UI: .venv/bin/mlops-nb ui"
}

ensure_debian_package() {   # ensure_debian_package PACKAGE PROGRAM-PATTERN WHY
  # the tests' browser and database come from Debian (Playwright cannot download its own browser here)
  compgen -G "$2" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's $1 for $3 (apt-get install $1)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$1" >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$1" >/dev/null; } \
      || die "could not install $1: run apt-get install $1, then this command again"
  else
    die "$3 need Debian's $1: run \`sudo apt-get install $1\`, then this command again"
  fi
}

ensure_test_packages() {
  ensure_debian_package chromium "/usr/bin/chromium" "the dashboard tests"
  # the team profile's tests start their own PostgreSQL cluster (tests/test_team_profile.py, marked scaleout)
  ensure_debian_package postgresql "/usr/lib/postgresql/*/bin/initdb" "the team profile's tests"
  # the serving replicas' test puts two API processes behind HAProxy (tests/test_serve.py, marked scaleout)
  ensure_debian_package haproxy "/usr/sbin/haproxy" "the serving replicas' tests"
  # the mart on Spark SQL: Debian's Java runtime and the pinned pyspark (tests/test_spark_mart.py, marked scaleout)
  ensure_debian_package default-jre-headless "/usr/lib/jvm/*/bin/java" "the mart-on-Spark tests"
  if ! "$VENV/bin/python" -c 'import pyspark' 2>/dev/null; then
    say "installing the optional Spark engine (requirements-spark.lock) for the mart-on-Spark tests"
    if [ -x "$VENV/bin/uv" ]; then "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" -r requirements-spark.lock
    else "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-spark.lock; fi \
      || die "could not install requirements-spark.lock (pyspark): see the message above"
  fi
}

run_tests() {
  say "checking that nbdev-export leaves the generated package unchanged"
  local before after
  before="$(find mlops_nb -name '*.py' -print0 | sort -z | xargs -0 sha256sum | sha256sum)"
  "$VENV/bin/nbdev-export"
  after="$(find mlops_nb -name '*.py' -print0 | sort -z | xargs -0 sha256sum | sha256sum)"
  if [ "$before" != "$after" ]; then
    git --no-pager diff --stat -- mlops_nb 2>/dev/null || true
    die "mlops_nb/ was out of date with nbs/: it has now been re-exported; commit the result"
  fi
  say "line length: ruff E501 at the width pyproject.toml sets, over the notebooks' code cells and the tests"
  # (the package is generated from those cells; nbdev writes its own __all__ lines, at a width of its own)
  "$VENV/bin/ruff" check --no-cache --select E501 nbs tests || die "lines longer than [tool.ruff] line-length (listed above)"
  ensure_test_packages      # before the notebooks: 88_replicas shows HAProxy at work when it is there
  say "nbdev-test: every notebook on its small defaults"
  # one OpenMP/BLAS thread per notebook: two notebooks at a time already fill the two cores, and threads spinning for a
  # busy core cost a fifth more CPU (as for the pytest workers, tests/conftest.py)
  local one=(OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
             MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}")
  env "${one[@]}" "$VENV/bin/nbdev-test" --n-workers 2 || die "nbdev-test failed"
  # two pytest-xdist workers, one per core; tests that share a module or session fixture stay on one worker (the
  # grouping is in tests/conftest.py). A caller's own -n, --dist, -p no:xdist, --pdb or --trace turns this off.
  local xdist=(-n 2 --dist loadgroup) prev="" a
  for a in "${ARGS[@]+"${ARGS[@]}"}"; do
    case "$a" in
      -n|-n[0-9]*|-nauto|-nlogical|--numprocesses|--numprocesses=*|--dist|--dist=*|-pno:xdist|--pdb|--trace) xdist=() ;;
      no:xdist) if [ "$prev" = -p ]; then xdist=(); fi ;;
    esac
    prev="$a"
  done
  say "pytest ${xdist[*]:-}"
  "$VENV/bin/python" -m pytest tests "${xdist[@]+"${xdist[@]}"}" "${ARGS[@]+"${ARGS[@]}"}" || die "pytest failed"
  say "all tests passed"
}

bootstrap
if [ "$MODE" = test ]; then run_tests; else run_lifecycle; fi
