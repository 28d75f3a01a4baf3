#!/usr/bin/env bash
# Load test of `prodigy serve` (issue 16): a burst of signed `pull_request` (opened) and
# `issue_comment` (`/prodigy help`) deliveries across many repositories into the real binary,
# with a small --max-jobs, against the fake GitHub of the tests.
#
#   bash benches/server_load.sh [DELIVERIES] [REPOS] [MAX_JOBS] [CONCURRENCY]
#
# Defaults: 1000 deliveries over 50 repositories, --max-jobs 2, 50 deliveries in flight. Each
# repository has 2 pull requests, each opened once (a job each: one shell step); the other
# deliveries are comments (a reaction and a reply each). The fake GitHub sends every delivery
# as GitHub does (HTTP POST, HMAC signature, new X-GitHub-Delivery guid) and logs its response
# time. The run is the ignored test `full_burst` of tests/server_load.rs in release mode; it
# asserts that every delivery was answered 2xx, that each was processed exactly once (one
# request and one recorded delivery per guid, one job per pull request, one reply and one
# reaction per comment), and that nothing is left queued or claimed. This script then checks
# the p99 response time against GitHub's 10 seconds.
#
# Runs on SQLite (the server's default), then on PostgreSQL at DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) in a scratch database dropped after; set
# SKIP_POSTGRES=1 to skip it.
set -euo pipefail
DELIVERIES="${1:-1000}"
REPOS="${2:-50}"
MAX_JOBS="${3:-2}"
CONCURRENCY="${4:-50}"
SERVER="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_DB="prodigy_load_$$"
cd "$(dirname "$0")/.."

cleanup() {
  if [ "${SKIP_POSTGRES:-0}" != 1 ]; then
    psql "$SERVER" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

cargo test --release --quiet --test server_load --no-run

run() { # $1 = label, $2 = database URL for the server (empty: SQLite)
  local out
  out="$(mktemp)"
  echo "== $1: $DELIVERIES deliveries, $REPOS repositories, --max-jobs $MAX_JOBS, $CONCURRENCY in flight"
  PRODIGY_LOAD_DELIVERIES="$DELIVERIES" PRODIGY_LOAD_REPOS="$REPOS" \
    PRODIGY_LOAD_MAX_JOBS="$MAX_JOBS" PRODIGY_LOAD_CONCURRENCY="$CONCURRENCY" \
    PRODIGY_LOAD_DATABASE_URL="$2" \
    cargo test --release --quiet --test server_load -- --ignored --exact full_burst --nocapture \
    2>&1 | tee "$out" | grep -E '^(deliveries|response time|server peak|p99_seconds|max_seconds|test result)'
  local p99
  p99="$(sed -n 's/^p99_seconds=//p' "$out")"
  rm -f "$out"
  if [ -z "$p99" ]; then
    echo "FAIL: the run did not finish (see above)" >&2
    return 1
  fi
  python3 -c "import sys; p=float(sys.argv[1]); sys.exit(0 if p < 10 else 1)" "$p99" \
    || { echo "FAIL: p99 response time ${p99} s is not under GitHub's 10 s" >&2; return 1; }
  echo "p99 under 10 s: ok"
}

run sqlite ""
if [ "${SKIP_POSTGRES:-0}" != 1 ]; then
  psql "$SERVER" -qc "CREATE DATABASE $PG_DB" >/dev/null
  base="${SERVER%%\?*}"
  query=""
  case "$SERVER" in *\?*) query="?${SERVER#*\?}" ;; esac
  run postgres "${base%/*}/$PG_DB$query"
fi
