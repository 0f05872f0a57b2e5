#!/usr/bin/env bash
# Runs the whole test suite, including the tests that need real SCIM servers and PostgreSQL, and
# builds the release binary the load test runs.
#   scripts/test.sh [extra cargo test arguments]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/test-deps.sh"

export SCIM_BRIDGE_TEST_DEPS=1
cd "$ROOT"
# tests/load.rs runs the release binary (the issue's load figure is for it).
cargo build --release --bin scim-bridge
exec cargo test --all-targets "$@"
