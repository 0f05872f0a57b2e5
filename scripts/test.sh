#!/usr/bin/env bash
# Runs the whole test suite on the embedded SQLite store, including the tests that need real SCIM
# servers, then the behaviour suite again on PostgreSQL (SCIM_BRIDGE_TEST_STORE=postgres: each
# bridge gets a fresh database on the local cluster); builds the optimised binary the load test
# runs (and `.ci/run`'s bench), target/fast/scim-bridge.
#   scripts/test.sh [extra arguments for the test runner]
# The tests run under cargo-nextest when it is installed (each test its own process, four at a
# time: .config/nextest.toml), else under `cargo test`.
# Without PostgreSQL the second run is skipped with a message; under CI=true it fails.
set -euo pipefail

# SCIM_BRIDGE_TEST_BUILD_ONLY=1: only the builds (the optimised binary, the tests), no test-deps.sh
# and no test run (`.ci/run` compiles while test-deps.sh installs).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_ONLY="${SCIM_BRIDGE_TEST_BUILD_ONLY:-}"
[[ -n "$BUILD_ONLY" ]] || "$ROOT/scripts/test-deps.sh"

export SCIM_BRIDGE_TEST_DEPS=1
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

# tests/load.rs needs an optimised binary (the debug one cannot take 500 webhooks/s on two cores).
# The crate is built at opt-level 2 on the dev profile's dependencies, which the tests compile
# anyway: a release build would compile every dependency a second time. The README's figures come
# from `cargo build --release`.
cargo build --bin scim-bridge --config 'profile.dev.opt-level=2'
mkdir -p "$TARGET_DIR/fast"
cp "$TARGET_DIR/debug/scim-bridge" "$TARGET_DIR/fast/scim-bridge"
export SCIM_BRIDGE_FAST_BIN="$TARGET_DIR/fast/scim-bridge"

if cargo nextest --version >/dev/null 2>&1; then
    RUNNER=nextest
    run_tests() { cargo nextest run --no-fail-fast "$@"; }
    build_tests() { cargo nextest run --no-run "$@"; }
else
    RUNNER=cargo
    echo "test.sh: cargo-nextest not installed: the tests run under cargo test"
    run_tests() { cargo test "$@"; }
    build_tests() { cargo test --no-run "$@"; }
fi

if [[ -n "$BUILD_ONLY" ]]; then
    build_tests --all-targets
    exit 0
fi

echo "== tests on SQLite"
SCIM_BRIDGE_TEST_STORE=sqlite run_tests --all-targets "$@"

# The suites (modules of tests/suite.rs) whose behaviour depends on the store: window, cycle, expiry, logs, API, intake.
# Left out: upgrade (SQLite files of earlier releases), migrate_store (moves a SQLite store into
# PostgreSQL: it runs in the SQLite run above and makes its own databases), openapi and page (no
# store behaviour), load (a figure for the optimised binary, measured on SQLite), the unit tests and
# benches.
POSTGRES_SUITES=(
    access_end api_access api_edge app_lifecycle config_as_code cycle_faults deletion_guard engine legacy_removal logs_activation logs_audit
    links logs_query logs_retention mapping metrics oauth2 properties provisioning realtime revocation scale_out shutdown
    webhook_answers
    window_cycle graph_source traces
)
PG_URL="${SCIM_BRIDGE_TEST_POSTGRES_URL:-postgres://scim_bridge_test:scim_bridge_test@127.0.0.1/scim_bridge_test}"
if ! psql "$PG_URL" -qAtc "SELECT 1" >/dev/null 2>&1; then
    if [[ "${CI:-}" == "true" ]]; then
        echo "test.sh: no PostgreSQL at $PG_URL, and CI=true requires the PostgreSQL run" >&2
        exit 1
    fi
    echo "test.sh: no PostgreSQL at $PG_URL: the PostgreSQL run is skipped (scripts/test-deps.sh starts it as root)"
    exit 0
fi
echo "== the behaviour suite on PostgreSQL ($PG_URL)"
# The suites are modules of the one test binary (tests/suite.rs): selected by their module path.
if [[ "$RUNNER" == nextest ]]; then
    alternatives="$(IFS='|'; echo "${POSTGRES_SUITES[*]}")"
    SCIM_BRIDGE_TEST_STORE=postgres run_tests --test suite -E "test(/^($alternatives)::/)" "$@"
else
    filters=()
    for suite in "${POSTGRES_SUITES[@]}"; do
        filters+=("$suite::")
    done
    SCIM_BRIDGE_TEST_STORE=postgres run_tests --test suite "$@" -- "${filters[@]}"
fi
