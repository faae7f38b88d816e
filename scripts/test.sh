#!/usr/bin/env bash
# The whole test suite: starts the servers the tests need (PostgreSQL, a Kafka-protocol
# broker, the Elasticsearch-API servers), Airflow's Python client and Chromium, then runs every
# test of the workspace: unit tests, the
# store on SQLite and PostgreSQL, the scheduler and CLI end to end, and the task kinds
# against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
eval "$(scripts/elasticsearch.sh)"
eval "$(scripts/kafka.sh)"
eval "$(scripts/airflow_client.sh)"
eval "$(scripts/browser.sh)"
# --tests: library, binary and integration tests (examples are benchmarks, built by
# clippy but not run here).
cargo test --workspace --tests --locked "$@"
