#!/usr/bin/env bash
# Makes sure a virtualenv with Apache Airflow's generated Python client
# (apache-airflow-client, the 3.x line that speaks /api/v2) exists, for the test that
# drives `sluice standalone` with it (scheduler/tests/airflow_client.rs). Idempotent and
# cached. Prints the environment the test needs: eval "$(scripts/airflow_client.sh)".
set -euo pipefail

log() { echo "airflow-client: $*" >&2; }

CACHE="${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}"
VENV="$CACHE/airflow-client-venv"
VERSION=3.3.2
mkdir -p "$CACHE"

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  log "installing python3 python3-venv"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
fi

installed() {
  [ -x "$VENV/bin/python" ] \
    && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('apache-airflow-client') != '$VERSION')" >/dev/null 2>&1
}

if ! installed; then
  log "installing apache-airflow-client $VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  # Wheels only, every version pinned (pydantic-core's wheel depends on the Python
  # version, so no hashes here).
  "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary :all: \
    "apache-airflow-client==$VERSION" "pydantic==2.14.3" "pydantic-core==2.50.4" \
    "python-dateutil==4.0.0" "urllib3==2.8.0" "typing-extensions==4.16.0" \
    "annotated-types==0.8.0" "typing-inspection==0.4.5" >&2
fi

echo "export SLUICE_AIRFLOW_CLIENT_PYTHON='$VENV/bin/python'"
