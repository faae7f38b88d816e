#!/usr/bin/env bash
# Makes sure two Elasticsearch-API servers are running on 127.0.0.1 for the es tests,
# installing and starting them when they are not:
#   osmem-server (OpenSearch dialect) on 9200, noida-db (Elasticsearch 8 dialect) on 9201.
# No real Elasticsearch/OpenSearch can be installed from the reachable registries; these
# two PyPI wheels implement the REST API independently, so testing against both keeps the
# sink honest about dialects. Idempotent: reuses servers that already answer. Stops
# nothing. Prints the environment the tests need: eval "$(scripts/elasticsearch.sh)".
set -euo pipefail

log() { echo "elasticsearch: $*" >&2; }

CACHE="${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}"
VENV="$CACHE/es-venv"
RUN="$CACHE/es-run"
OS_ADDR=127.0.0.1:9200
ES8_ADDR=127.0.0.1:9201
mkdir -p "$CACHE" "$RUN"

# A fresh Debian lacks curl and the venv module; install only what is missing.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ] || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  log "installing ${missing[*]} python3-venv"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" python3-venv >&2
fi

answers() { curl -fsS -o /dev/null --max-time 2 "http://$1/" 2>/dev/null; }

# Binary wheels only, pinned by hash: nothing is built from source or resolved loosely.
install_venv() {
  log "installing osmem-server and noida-db into $VENV"
  python3 -m venv "$VENV" >&2
  local req="$RUN/requirements.txt"
  cat >"$req" <<'EOF'
osmem-server==0.1.6 --hash=sha256:24c862de01ab1c6dd1564284933fdc4f774494a41e071676914f86d82fdbef40
noida-db==0.2.3 --hash=sha256:40a2fb15567e3d344e7483df62bb439e7d64ac6fb232f4f223554aed58204f82
EOF
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --only-binary :all: \
    --require-hashes -r "$req" >&2
}

site_packages() {
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

if ! answers "$OS_ADDR" || ! answers "$ES8_ADDR"; then
  if [ ! -x "$VENV/bin/python" ] \
    || ! "$VENV/bin/pip" show -q osmem-server noida-db >/dev/null 2>&1; then
    rm -rf "$VENV"
    install_venv
  fi
  SITE=$(site_packages)
fi

# Starts "$@" detached (own session, survives this script), logging to $RUN/$name.log.
start_detached() {
  local name=$1
  shift
  log "starting $name"
  setsid nohup "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

if ! answers "$OS_ADDR"; then
  start_detached osmem-server "$SITE/osmem_server/bin/osmem-server" \
    -addr "$OS_ADDR" -no-stdin-watch -no-ja
fi
if ! answers "$ES8_ADDR"; then
  mkdir -p "$RUN/noida-data"
  start_detached noida-db "$SITE/noida_db/noida-db" start --data-dir "$RUN/noida-data" \
    --host 127.0.0.1 --only elasticsearch --elasticsearch-port "${ES8_ADDR##*:}"
fi

# Bounded wait: 30 s each.
for addr in "$OS_ADDR" "$ES8_ADDR"; do
  for _ in $(seq 1 150); do answers "$addr" && break; sleep 0.2; done
  if ! answers "$addr"; then
    log "no server answered on http://$addr (logs in $RUN)"
    exit 1
  fi
done
log "osmem-server on $OS_ADDR and noida-db on $ES8_ADDR ready"
echo "export SLUICE_TEST_OPENSEARCH=http://$OS_ADDR"
echo "export SLUICE_TEST_ES8=http://$ES8_ADDR"
