#!/usr/bin/env bash
# Webhook ingest benchmark (issue 5): signed `pull_request` deliveries into `prodigy serve`
# (verify the HMAC, parse, dedup by delivery id, persist the request, answer 202), on SQLite
# and on PostgreSQL, beside a bare axum handler that answers 200, in the same run.
#
#   bash benches/webhook_ingest.sh [DURATION_SECS] [CONNECTIONS]
#
# Load generator: wrk (installed with apt-get when missing). Each request carries the same
# signed body and a new X-GitHub-Delivery id (a per-thread counter in Lua), since deliveries
# are deduplicated by id. Two runs per target: as fast as wrk can (CONNECTIONS connections),
# and paced at 500 requests/s (10 connections, one request per 20 ms each) for the latency goal.
#
# Targets: the bare handler; the floor (verify + parse of deliveries for a repository not on
# the allow-list, nothing stored); ingest by a web-only `prodigy serve --no-runner`; ingest by
# a server whose runner works off the queue meanwhile (each request fails fast: its repository
# remote does not exist). Each on SQLite and PostgreSQL; PostgreSQL comes from DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/postgres), in a scratch database dropped after.
set -euo pipefail
DURATION="${1:-10}"
CONNS="${2:-64}"
cd "$(dirname "$0")/.."
ROOT="$PWD"

if ! command -v wrk >/dev/null; then
  echo "installing wrk (apt-get)..." >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi

cargo build --release --quiet --bin prodigy --example bare_axum
BIN="$ROOT/target/release/prodigy"
BARE="$ROOT/target/release/examples/bare_axum"
WORK="$(mktemp -d)"
PIDS=()
PG_SERVER="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_DB="prodigy_bench_$$"
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG_SERVER" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The repository's own copy of GitHub's payload examples (tests/fixtures/README.md).
FIXTURES="$ROOT/tests/fixtures"

SECRET="bench-secret"
BODY="$WORK/body.json"
# A real payload example, on the allowed repository.
python3 - "$BODY" "$FIXTURES" <<'PY'
import json, sys
d = json.load(open(sys.argv[2] + "/github/webhooks/pull_request/opened.payload.json"))
d["repository"]["full_name"] = "octo/bench"
d["pull_request"]["base"]["repo"]["full_name"] = "octo/bench"
d["pull_request"]["head"]["repo"]["full_name"] = "octo/bench"
open(sys.argv[1], "w").write(json.dumps(d))
PY
SIG="sha256=$(python3 -c 'import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2],"rb").read(), hashlib.sha256).hexdigest())' "$SECRET" "$BODY")"

lua() { # $1 = delay per request in ms (0: none)
  cat <<LUA
local counter = 0
local threads = 0
local run = "$(date +%s%N)-$RANDOM"
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  local f = io.open("$BODY", "rb")
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-GitHub-Event"] = "pull_request"
  wrk.headers["X-Hub-Signature-256"] = "$SIG"
end
function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = run .. "-" .. tid .. "-" .. counter
  return wrk.format(nil, "/webhook")
end
function delay()
  return $1
end
function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT %.0f %.2f %.2f %.2f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, non2xx + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
}
lua 0 > "$WORK/max.lua"
lua 20 > "$WORK/paced.lua"

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

serve() { # $1 = port, $2 = database URL, $3 = state dir, $4 = allow-list, then extra flags
  local port="$1" url="$2" dir="$3" allow="$4"
  shift 4
  PRODIGY_WEBHOOK_SECRET="$SECRET" "$BIN" --database-url "$url" serve \
    --app-id 1 --private-key "$ROOT/tests/fixtures/test-app-key.TEST-ONLY.pem" \
    --listen "127.0.0.1:$port" --allow-repos "$allow" --state-dir "$dir" \
    --github-api-url http://127.0.0.1:9 --git-base-url "file://$WORK/no-remotes" \
    --max-jobs 2 "$@" >"$dir.log" 2>&1 &
  PIDS+=($!)
  SERVE_PID=$!
  wait_port "$port"
}

stop_serve() {
  kill "$SERVE_PID" 2>/dev/null || true
  wait "$SERVE_PID" 2>/dev/null || true
}

measure() { # $1 = name, $2 = port
  local max paced
  # Paced first: the flat-out run leaves a backlog in the queue that the runner then works off.
  paced=$(wrk -t 2 -c 10 -d "${DURATION}s" -s "$WORK/paced.lua" "http://127.0.0.1:$2" | grep '^RESULT')
  max=$(wrk -t 2 -c "$CONNS" -d "${DURATION}s" -s "$WORK/max.lua" "http://127.0.0.1:$2" | grep '^RESULT')
  # shellcheck disable=SC2086
  set -- "$1" $max $paced
  printf '| %-26s | %8s | %6s | %6s | %6s | %8s | %6s | %6s | %6s |\n' \
    "$1" "$3" "$4" "$5" "$8" "${10}" "${11}" "${12}" "${15}"
}

echo "webhook ingest: wrk ${DURATION}s per run; max: 2 threads x $CONNS connections; paced: 10 connections x 50 req/s"
echo
echo "| target                     | max req/s | p50 ms | p99 ms | errors | paced req/s | p50 ms | p99 ms | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"

"$BARE" 127.0.0.1:39100 &
BARE_PID=$!
PIDS+=($BARE_PID)
wait_port 39100
measure "bare axum 200" 39100
kill "$BARE_PID"; wait "$BARE_PID" 2>/dev/null || true

# The floor: the same deliveries for a repository not on the allow-list are verified, parsed
# and answered 200 without touching the database.
mkdir -p "$WORK/floor"
serve 39101 "sqlite://$WORK/floor/prodigy.db" "$WORK/floor" octo/elsewhere
measure "verify+parse, nothing stored" 39101
stop_serve

# Ingest as the issue defines it (verify, dedup, persist, answer), by a web-only instance
# (--no-runner), then by an instance whose runner works off the queue meanwhile: every request
# fails fast (its repository remote does not exist), the worst case for the runner's writes.
PG_OK=""
if psql "$PG_SERVER" -qc "CREATE DATABASE $PG_DB" >/dev/null 2>&1; then PG_OK=1; fi
n=0
for runner in --no-runner ""; do
  label="serve"; [ -n "$runner" ] && label="serve --no-runner"
  n=$((n + 1))
  mkdir -p "$WORK/sqlite$n"
  serve 39102 "sqlite://$WORK/sqlite$n/prodigy.db" "$WORK/sqlite$n" octo/bench $runner
  measure "$label, SQLite" 39102
  stop_serve
  if [ -n "$PG_OK" ]; then
    psql "$PG_SERVER" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null
    mkdir -p "$WORK/pg$n"
    serve 39103 "${PG_SERVER%/*}/$PG_DB" "$WORK/pg$n" octo/bench $runner
    measure "$label, PostgreSQL" 39103
    stop_serve
  else
    echo "| $label, PostgreSQL | skipped: cannot create a database at $PG_SERVER |"
  fi
done
