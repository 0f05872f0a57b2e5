#!/usr/bin/env bash
# Checks the Prometheus alert rules and runs their unit tests with promtool:
#   promtool check rules deploy/prometheus/alerts.yml
#   promtool test rules deploy/prometheus/alerts.test.yml
# promtool comes from Debian's prometheus package (scripts/test-deps.sh installs it as root);
# without it the check is skipped with a message, except under CI=true, where it fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'check-alerts: %s\n' "$*"; }

if ! command -v promtool >/dev/null 2>&1; then
    if [[ "${CI:-}" == "true" ]]; then
        say "promtool missing; run scripts/test-deps.sh (as root) or install Debian's prometheus package" >&2
        exit 1
    fi
    say "skipped: promtool missing; install it with scripts/test-deps.sh (as root)"
    exit 0
fi

promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
