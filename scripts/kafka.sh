#!/usr/bin/env bash
# Makes sure a Kafka-protocol broker listens on 127.0.0.1:9092 for the Kafka tests:
# tansu (Apache-2.0, Kafka-compatible, SQLite storage), built once from crates.io into
# ~/.cache/sluice (about 11 minutes on 2 cores) and reused afterwards. Reuses a broker
# that already answers on the port; starts nothing else and stops nothing.
# Prints the environment the tests need: eval "$(scripts/kafka.sh)".
set -euo pipefail

TANSU_VERSION=0.6.0
HOST=127.0.0.1
PORT=${SLUICE_KAFKA_PORT:-9092}
CACHE=${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}
ROOT=$CACHE/tansu-$TANSU_VERSION
BIN=$ROOT/bin/tansu
DATA=$CACHE/tansu-data
PIDFILE=$DATA/tansu.pid

log() { echo "kafka: $*" >&2; }

# True when a Kafka broker answers an ApiVersions v0 request (correlation id 1) on the
# port: an open port alone could be anything.
answers() {
  local reply
  reply=$(timeout 3 bash -c "
    exec 3<>/dev/tcp/$HOST/$PORT || exit 1
    # size=16, api_key=18 (ApiVersions), version=0, correlation_id=1, client_id=\"sluice\"
    printf '\x00\x00\x00\x10\x00\x12\x00\x00\x00\x00\x00\x01\x00\x06sluice' >&3
    head -c 8 <&3 | od -An -tx1
  " 2>/dev/null) || return 1
  [ "$(echo $reply | cut -d' ' -f5-8)" = "00 00 00 01" ]
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null; }

if answers; then
  log "a broker already answers on $HOST:$PORT: reusing it"
  echo "export SLUICE_TEST_KAFKA=$HOST:$PORT"
  exit 0
fi
if port_open; then
  log "something listens on $HOST:$PORT but does not answer as a Kafka broker"
  exit 1
fi

mkdir -p "$CACHE" "$DATA"
if [ ! -x "$BIN" ]; then
  command -v cargo >/dev/null || { log "cargo is needed to build tansu"; exit 1; }
  # One build at a time, even when several test runs start together.
  exec 9>"$CACHE/tansu-build.lock"
  flock 9
  if [ ! -x "$BIN" ]; then
    log "building tansu $TANSU_VERSION into $ROOT (once; about 11 minutes on 2 cores)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql \
      --root "$ROOT" >&2
  fi
  flock -u 9
  exec 9>&-  # so the broker started below does not inherit the lock
fi

log "starting tansu on $HOST:$PORT (data in $DATA)"
# The storage path is relative to the working directory. Both listener URLs are given:
# the default listens on 0.0.0.0.
(
  cd "$DATA"
  nohup "$BIN" broker \
    --listener-url "tcp://$HOST:$PORT" \
    --advertised-listener-url "tcp://$HOST:$PORT" \
    --storage-engine sqlite://tansu.db \
    >>"$DATA/tansu.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
)
pid=$(cat "$PIDFILE")
for _ in $(seq 1 150); do
  answers && break
  if ! kill -0 "$pid" 2>/dev/null; then
    log "tansu exited; last lines of $DATA/tansu.log:"
    tail -20 "$DATA/tansu.log" >&2
    exit 1
  fi
  sleep 0.2
done
answers || { log "tansu (pid $pid) did not answer on $HOST:$PORT within 30s"; exit 1; }
log "tansu ready (pid $pid, pidfile $PIDFILE)"
echo "export SLUICE_TEST_KAFKA=$HOST:$PORT"
