#!/usr/bin/env bash
# Many machines (issue 17): one job's items spread over a coordinator and workers.
#
#   bash benches/workers.sh [ITEMS] [SLEEP_SECS]
#
# A bare repository stands for the git remote; every "machine" is a prodigy process with its own
# clone and state directory on this host, sharing one PostgreSQL database. The job has ITEMS
# items (default 120) whose agent sleeps SLEEP_SECS (default 1) and commits one file; every
# process runs 2 agents. It times the job on one machine without --workers, then the coordinator
# with 0, 1, 2 and 3 workers; then the per-item cost of the remote path measured with git alone
# (push of an attempt ref, fetch of one ref, merge of a fetched commit, push of the job head).
#
# Needs PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) and
# psql (each run creates and drops its own database). PRODIGY_BIN: a prebuilt binary (default:
# cargo build --release).
set -euo pipefail
ITEMS="${1:-120}"
SLEEP="${2:-1}"
SERVER="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cd "$(dirname "$0")/.."
if [ -z "${PRODIGY_BIN:-}" ]; then
  cargo build --release --quiet
  PRODIGY_BIN="$PWD/target/release/prodigy"
fi
BIN="$PRODIGY_BIN"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000 / $3:.1f}')"; }
db_url() { python3 - "$SERVER" "$1" <<'PY'
import sys
server, name = sys.argv[1], sys.argv[2]
base, _, query = server.partition('?')
scheme, _, rest = base.partition('://')
host = rest.split('/')[0]
print(f"{scheme}://{host}/{name}" + (f"?{query}" if query else ""))
PY
}

# The remote: a repository with the workflow and its items.
git init -q --bare -b main "$WORK/remote.git"
git clone -q "$WORK/remote.git" "$WORK/seed" 2>/dev/null
cd "$WORK/seed"
git config user.email bench@example.com
git config user.name bench
python3 -c "import json; print(json.dumps([{'id': f'i{i}'} for i in range($ITEMS)]))" > items.json
cat > wf.yml <<YML
name: bench-workers
mode: mapreduce
map:
  input: items.json
  json_path: "\$[*]"
  max_parallel: 2
  agent_template:
    - shell: "sleep $SLEEP && echo \${item.id} > \${item.id}.txt && git add . && git commit -q -m \${item.id}"
reduce:
  - shell: "echo \${map.successful} > reduce.txt && git add reduce.txt && git commit -q -m reduce"
YML
git add -A && git commit -q -m bench && git push -q origin HEAD:main
cd - >/dev/null

export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com

# One run: N workers (-1: without --workers at all). Prints the coordinator's wall time.
run() {
  local n="$1" name="bench_$$_${1/-/x}"
  psql -q "$SERVER" -c "CREATE DATABASE $name" >/dev/null
  local url; url="$(db_url "$name")"
  local dir="$WORK/run-$name"
  mkdir -p "$dir"
  git clone -q "$WORK/remote.git" "$dir/coord" 2>/dev/null
  DATABASE_URL="$url" "$BIN" migrate >/dev/null
  PIDS=()
  for w in $(seq 1 "$n"); do
    DATABASE_URL="$url" PRODIGY_MACHINE="w$w" "$BIN" worker --max-parallel 2 \
      --state-dir "$dir/w$w" --poll 0.2 2>"$dir/w$w.log" &
    PIDS+=("$!")
  done
  local flags=(--workers)
  [ "$n" -lt 0 ] && flags=()
  local t0 t1
  t0=$(now)
  (cd "$dir/coord" && DATABASE_URL="$url" PRODIGY_HOME="$dir/coord-home" PRODIGY_MACHINE=coord \
    "$BIN" run wf.yml "${flags[@]}" >/dev/null 2>"$dir/coord.log")
  t1=$(now)
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" && wait "$p" || true; done
  PIDS=()
  psql -q "$SERVER" -c "DROP DATABASE $name WITH (FORCE)" >/dev/null
  python3 -c "print(f'{$t1 - $t0:.1f}')"
}

echo "items: $ITEMS, agent: sleep $SLEEP s, 2 agents per process"
local_s=$(run -1)
echo "one machine, no --workers:      ${local_s} s"
for n in 0 1 2 3; do
  s=$(run "$n")
  echo "coordinator + $n workers:        ${s} s  (x$(python3 -c "print(f'{$local_s / $s:.2f}')") vs one machine)"
done

# The remote path, per item, with git alone: an attempt's push, the coordinator's fetch of one
# ref (it fetches a batch in one call, so this is the worst case), the merge of a fetched
# commit, and the push of the job's head (once per merge batch; here once per merge).
N=50
cd "$WORK/seed"
base=$(git rev-parse HEAD)
for i in $(seq 1 "$N"); do
  git checkout -q --detach "$base"
  echo "$i" > "p$i.txt" && git add "p$i.txt" && git commit -q -m "p$i"
  git update-ref "refs/bench/c$i" HEAD
done
t0=$(now)
for i in $(seq 1 "$N"); do
  git push -q --no-verify "$WORK/remote.git" "refs/bench/c$i:refs/prodigy/bench/items/p$i/attempt-1"
done
t1=$(now)
git clone -q "$WORK/remote.git" "$WORK/merger" 2>/dev/null
cd "$WORK/merger"
git checkout -q -b job "$base"
t2=$(now)
for i in $(seq 1 "$N"); do
  r="refs/prodigy/bench/items/p$i/attempt-1"
  git fetch -q --no-tags --no-write-fetch-head "$WORK/remote.git" "+$r:$r"
done
t3=$(now)
for i in $(seq 1 "$N"); do
  git merge -q --no-ff --no-edit "refs/prodigy/bench/items/p$i/attempt-1"
done
t4=$(now)
prev=""
for i in $(seq 1 "$N"); do
  git commit -q --allow-empty -m "head $i"
  git push -q --no-verify --force-with-lease="refs/prodigy/bench/head:$prev" "$WORK/remote.git" "HEAD:refs/prodigy/bench/head"
  prev=$(git rev-parse HEAD)
done
t5=$(now)
echo "remote path per item (git, $N items, local bare remote):"
echo "  push attempt ref:   $(ms "$t0" "$t1" "$N") ms"
echo "  fetch one ref:      $(ms "$t2" "$t3" "$N") ms"
echo "  merge fetched:      $(ms "$t3" "$t4" "$N") ms"
echo "  push job head:      $(ms "$t4" "$t5" "$N") ms"
