#!/usr/bin/env bash
# Schema-driven fuzzing of the API with schemathesis: starts the bridge (debug binary) on a free
# loopback port with a fresh data dir, then runs `st run` against its own /openapi.json, once with
# the admin token and once with an app owner's token. Fails on any 5xx answer and on any answer the
# document does not describe (status code, content type, headers, body schema).
#
#   scripts/fuzz-api.sh                     what CI runs: fixed seed, bounded examples (repeatable)
#   FUZZ_SEED=random FUZZ_EXAMPLES=500 scripts/fuzz-api.sh    a longer, unseeded run while working
#
# Environment: FUZZ_SEED (default 20261128; `random` for none); FUZZ_EXAMPLES (examples per
# operation, default 25); FUZZ_CHECKS (schemathesis checks; default: all that judge answers);
# FUZZ_BIN (default: target/debug/scim-bridge, built first); FUZZ_KEEP=1 keeps the data dir and
# the bridge's log. schemathesis comes from .venv (scripts/test-deps.sh installs it); without it the
# run is skipped with a message, except under CI=true, where it fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'fuzz-api: %s\n' "$*"; }

ST="$ROOT/.venv/bin/st"
if [[ ! -x "$ST" ]]; then
    if [[ "${CI:-}" == "true" ]]; then
        say "schemathesis missing ($ST); run scripts/test-deps.sh" >&2
        exit 1
    fi
    say "skipped: schemathesis missing ($ST); install it with scripts/test-deps.sh"
    exit 0
fi

SEED="${FUZZ_SEED:-20261128}"
EXAMPLES="${FUZZ_EXAMPLES:-25}"
if [[ -n "${FUZZ_BIN:-}" ]]; then
    BIN="$FUZZ_BIN"
else
    # Up to date with the sources (a no-op after `cargo test`, which built it).
    cargo build --quiet --bin scim-bridge
    BIN="$ROOT/target/debug/scim-bridge"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/scim-bridge-fuzz.XXXXXX")"
BRIDGE_PID=""
cleanup() {
    if [[ -n "$BRIDGE_PID" ]]; then
        kill "$BRIDGE_PID" 2>/dev/null || true
        wait "$BRIDGE_PID" 2>/dev/null || true
    fi
    if [[ "${FUZZ_KEEP:-}" == "1" ]]; then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

ADMIN="fuzz-admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# Private targets stay refused: a fuzzed scimBaseUrl must never make the bridge call into this
# machine's own services.
(
    cd "$WORK"
    exec env SCIM_BRIDGE_LISTEN=127.0.0.1:0 \
        SCIM_BRIDGE_DATA_DIR="$WORK/data" \
        SCIM_BRIDGE_ADMIN_TOKEN="$ADMIN" \
        SCIM_BRIDGE_WEBHOOK_SECRET="fuzz-secret" \
        SCIM_BRIDGE_ALLOW_PRIVATE_TARGETS=false \
        RUST_LOG="${RUST_LOG:-warn}" \
        "$BIN" serve >"$WORK/bridge.log" 2>&1
) &
BRIDGE_PID=$!

URL=""
for _ in $(seq 1 200); do
    URL="$(sed -n 's/.*scim-bridge listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/bridge.log" | head -n1)"
    [[ -n "$URL" ]] && break
    if ! kill -0 "$BRIDGE_PID" 2>/dev/null; then
        cat "$WORK/bridge.log" >&2
        say "the bridge exited before listening" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -n "$URL" ]] || { cat "$WORK/bridge.log" >&2; say "the bridge did not start" >&2; exit 1; }
say "bridge at $URL (log: $WORK/bridge.log)"

OWNER="$(curl -sf -X POST "$URL/v1/tokens" -H "Authorization: Bearer $ADMIN" \
    -H 'Content-Type: application/json' -d '{"name":"fuzz-owner","role":"app_owner"}' |
    sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"
[[ -n "$OWNER" ]] || { say "could not create the app owner's token" >&2; exit 1; }

# Every check of the answers (status codes, content types, headers, body schemas, Allow on 405,
# auth really enforced, deleted resources gone). Whether the bridge is stricter or laxer than the
# document on input (negative_data_rejection, positive_data_acceptance) is left out by default: some
# of its rules are not expressible in a schema (a URL that resolves to a refused address, a principal
# required only the first time it is seen). FUZZ_CHECKS=all includes them.
CHECKS="${FUZZ_CHECKS:-all}"
EXCLUDED="negative_data_rejection,positive_data_acceptance"
if [[ -n "${FUZZ_CHECKS:-}" ]]; then
    EXCLUDED=""
fi
seed_args=()
if [[ "$SEED" != "random" ]]; then
    seed_args=(--seed "$SEED")
fi

# schemathesis keeps a cache in the working directory: keep it out of the checkout.
cd "$WORK"
status=0
for who in admin owner; do
    token="$ADMIN"
    [[ "$who" == owner ]] && token="$OWNER"
    say "st run as $who (seed $SEED, at most $EXAMPLES examples per operation)"
    "$ST" run "$URL/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks "$CHECKS" \
        ${EXCLUDED:+--exclude-checks "$EXCLUDED"} \
        --max-examples "$EXAMPLES" \
        "${seed_args[@]}" \
        --workers 1 \
        --request-timeout 40 \
        --generation-database none \
        --no-color \
        --warnings off || status=1
done

if ! kill -0 "$BRIDGE_PID" 2>/dev/null; then
    say "the bridge died during the run; its log:" >&2
    tail -n 50 "$WORK/bridge.log" >&2
    status=1
fi
if grep -q "panicked" "$WORK/bridge.log"; then
    say "the bridge panicked; its log:" >&2
    grep -B2 -A5 "panicked" "$WORK/bridge.log" | head -n 60 >&2
    status=1
fi
exit "$status"
