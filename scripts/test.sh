#!/usr/bin/env bash
# The whole test suite: starts the servers the tests need, then runs every test of
# the workspace (unit, store on SQLite and PostgreSQL, scheduler, CLI end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh)"
# --all-targets: unit and integration tests (the crates have no doc tests).
cargo test --workspace --all-targets --locked "$@"
