#!/usr/bin/env bash
# Prepares what the integration tests need; safe to run again (does only what is missing):
#   - .venv with scim2-server (a Python SCIM 2.0 server) and schemathesis (scripts/fuzz-api.sh)
#   - scim-fixtures/node_modules (SCIMMY server, OAuth2 issuer, fault proxy)
#   - the local PostgreSQL 15 cluster, running, with a role and a database of the tests' own
#     (scim_bridge_test, password scim_bridge_test, CREATEDB: each test makes a database of its
#     own); no other role is changed
#   - Debian's chromium (as root, apt-get) and tests/browser/node_modules for the operator page test
#   - promtool (Debian's prometheus package, as root, apt-get) for scripts/check-alerts.sh
# As root it changes the machine in these ways only: the two apt packages, the PostgreSQL cluster
# started, the role and database above. Not as root it installs nothing system-wide and says what
# is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf 'test-deps: %s\n' "$*"; }

# --- scim2-server -------------------------------------------------------------------------------
if [[ -x "$ROOT/.venv/bin/scim2-server" ]]; then
    say "scim2-server present ($ROOT/.venv/bin/scim2-server)"
else
    if [[ ! -x "$ROOT/.venv/bin/pip" ]]; then
        say "creating $ROOT/.venv"
        python3 -m venv "$ROOT/.venv"
    fi
    say "installing scim2-server into $ROOT/.venv"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check scim2-server
    say "installed $("$ROOT/.venv/bin/pip" show scim2-server 2>/dev/null | sed -n 's/^Version: /scim2-server /p')"
fi

# --- schemathesis (scripts/fuzz-api.sh), pinned so that a seeded run is the same run -------------
SCHEMATHESIS_VERSION=4.32.5
if [[ "$("$ROOT/.venv/bin/st" --version 2>/dev/null)" == *" $SCHEMATHESIS_VERSION" ]]; then
    say "schemathesis $SCHEMATHESIS_VERSION present ($ROOT/.venv/bin/st)"
else
    say "installing schemathesis $SCHEMATHESIS_VERSION into $ROOT/.venv"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- Node fixtures --------------------------------------------------------------------------------
FIX="$ROOT/scim-fixtures"
if [[ ! -d "$FIX/node_modules" || "$FIX/package-lock.json" -nt "$FIX/node_modules" ]]; then
    say "running npm ci in $FIX"
    (cd "$FIX" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$FIX/node_modules"
else
    say "scim-fixtures/node_modules up to date"
fi

# --- PostgreSQL -----------------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "pg_ctlcluster not found: PostgreSQL not started (PostgreSQL tests need DATABASE_URL to a server)"
elif [[ "$(id -u)" -ne 0 ]]; then
    say "not root: PostgreSQL cluster left as it is"
else
    # A cluster stopped without a shutdown (a machine switched off) first syncs its whole data
    # directory, which on a slow disk takes longer than pg_ctl's default 60 s: allow 10 minutes, and
    # take a cluster that is still starting (recovering) as starting, not failed.
    started=
    for _ in $(seq 1 600); do
        pg_isready -q -h 127.0.0.1 && break
        if ! pg_ctlcluster 15 main status >/dev/null 2>&1; then
            [[ -n "$started" ]] && break
            started=1
            say "starting PostgreSQL 15/main"
            pg_ctlcluster 15 main start -- -t 600 || say "pg_ctlcluster 15 main start failed"
            continue
        fi
        sleep 1
    done
    [[ -z "$started" ]] && say "PostgreSQL 15/main already running"
    pg_isready -q -h 127.0.0.1 || say "PostgreSQL 15/main does not take connections (PostgreSQL tests will fail)"
    # The tests' own role and database, made once; an existing role of that name is left as it is.
    as_postgres() { (cd / && runuser -u postgres -- "$@"); }
    if [[ "$(as_postgres psql -qAtc "SELECT 1 FROM pg_roles WHERE rolname = 'scim_bridge_test'")" != 1 ]]; then
        say "creating the PostgreSQL role scim_bridge_test (LOGIN CREATEDB)"
        as_postgres psql -q -c "CREATE ROLE scim_bridge_test LOGIN CREATEDB PASSWORD 'scim_bridge_test'" >/dev/null \
            || say "could not create the role scim_bridge_test (PostgreSQL tests may fail)"
    fi
    # Databases a test or bench run left behind when it was killed before its cleanup. Each test
    # makes its own under these prefixes and drops it when done; one still in use has connections,
    # so a plain DROP DATABASE (no FORCE) refuses it and it is left alone.
    leftovers="$(as_postgres psql -qAtc "SELECT datname FROM pg_database WHERE datname ~ '^scim_bridge_(test|unit|bench)_[0-9a-f]+$'" || true)"
    if [[ -n "$leftovers" ]]; then
        say "dropping $(wc -l <<<"$leftovers") database(s) left by killed test runs"
        while read -r db; do
            as_postgres psql -q -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
        done <<<"$leftovers"
    fi
    if [[ "$(as_postgres psql -qAtc "SELECT 1 FROM pg_database WHERE datname = 'scim_bridge_test'")" != 1 ]]; then
        say "creating the PostgreSQL database scim_bridge_test"
        as_postgres createdb -O scim_bridge_test scim_bridge_test \
            || say "could not create the database scim_bridge_test (PostgreSQL tests may fail)"
    fi
fi

PG_URL="${SCIM_BRIDGE_TEST_POSTGRES_URL:-postgres://scim_bridge_test:scim_bridge_test@127.0.0.1/scim_bridge_test}"
if psql "$PG_URL" -qAtc "SELECT 1" >/dev/null 2>&1; then
    say "PostgreSQL answers at $PG_URL (the behaviour suite runs on it too)"
elif [[ "${CI:-}" == "true" ]]; then
    say "no PostgreSQL at $PG_URL: CI=true requires it (run this script as root, or set SCIM_BRIDGE_TEST_POSTGRES_URL)"
    exit 1
else
    say "no PostgreSQL at $PG_URL: tests on PostgreSQL will be skipped"
fi

# --- Headless browser for the operator page test ---------------------------------------------------
# Debian's chromium, driven by playwright-core (which never downloads a browser of its own).
if [[ -x /usr/bin/chromium ]]; then
    say "chromium present ($(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium))"
elif [[ "$(id -u)" -ne 0 ]]; then
    say "chromium missing and not root: install Debian's chromium for tests/page.rs"
else
    say "installing Debian's chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    say "installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
fi
BROWSER="$ROOT/tests/browser"
if [[ ! -d "$BROWSER/node_modules" || "$BROWSER/package-lock.json" -nt "$BROWSER/node_modules" ]]; then
    say "running npm ci in $BROWSER"
    (cd "$BROWSER" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$BROWSER/node_modules"
else
    say "tests/browser/node_modules up to date"
fi

# --- promtool (scripts/check-alerts.sh) ------------------------------------------------------------
# Debian's prometheus package ships /usr/bin/promtool. Only the tool is wanted: no Prometheus server
# is started by the install, and one a package script started anyway is stopped and disabled.
if command -v promtool >/dev/null 2>&1; then
    say "promtool present ($(promtool --version 2>&1 | head -n 1))"
elif [[ "$(id -u)" -ne 0 ]]; then
    say "promtool missing and not root: install Debian's prometheus package for scripts/check-alerts.sh"
else
    say "installing Debian's prometheus package (for promtool)"
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update -qq
    fi
    # policy-rc.d answering 101 tells the package scripts not to start the service.
    POLICY=/usr/sbin/policy-rc.d
    made_policy=false
    if [[ ! -e "$POLICY" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        made_policy=true
    fi
    install_rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null || install_rc=$?
    if [[ "$made_policy" == true ]]; then
        rm -f "$POLICY"
    fi
    if [[ "$install_rc" -ne 0 ]]; then
        say "apt-get install prometheus failed ($install_rc)"
        exit "$install_rc"
    fi
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    if [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    say "installed $(promtool --version 2>&1 | head -n 1)"
fi
