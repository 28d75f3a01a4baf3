#!/usr/bin/env bash
# Map-phase benchmark (issue 2): the cost of isolating agents in worktrees.
#
#   bash benches/map_phase.sh [ITEMS] [PARALLEL] [FILES]
#
# Builds a scratch repository of FILES files (~10 KB each, ~20 MB for 2,000), runs a MapReduce
# workflow of ITEMS items whose agent runs one trivial shell command at max_parallel PARALLEL,
# and in the same run times ITEMS plain `git worktree add` + `git worktree remove` calls on the
# same repository (the naive cost of isolation). Prints wall time, per-item overhead and the
# peak RSS of the prodigy process.
set -euo pipefail
ITEMS="${1:-200}"
PARALLEL="${2:-8}"
FILES="${3:-2000}"
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN="$PWD/target/release/prodigy"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
REPO="$WORK/repo"
mkdir -p "$REPO"
cd "$REPO"
git init -q -b main
git config user.email bench@example.com
git config user.name bench
for d in $(seq 0 19); do mkdir -p "src/d$d"; done
# ~10 KB of text per file, different per file so git stores real blobs.
python3 - "$FILES" <<'PY'
import sys, random
n = int(sys.argv[1])
random.seed(7)
for i in range(n):
    with open(f"src/d{i % 20}/f{i}.txt", "w") as f:
        for _ in range(160):
            f.write("%016x %s\n" % (random.getrandbits(64), "x" * 46))
PY
python3 -c "import json; print(json.dumps([{'id': f'item-{i}'} for i in range($ITEMS)]))" > items.json
cat > wf.yml <<YML
name: bench
mode: mapreduce
map:
  input: items.json
  json_path: "\$[*]"
  max_parallel: $PARALLEL
  agent_template:
    - shell: "true"
YML
git add -A && git commit -q -m "scratch repo"
SIZE=$(du -sh --exclude=.git . | cut -f1)

now() { date +%s.%N; }

# The naive cost: one full worktree per item (sampled: it is slow).
SAMPLES=$(( ITEMS < 50 ? ITEMS : 50 ))
t0=$(now)
for i in $(seq 1 "$SAMPLES"); do
  git worktree add -q --detach "$WORK/wt" HEAD
  git worktree remove --force "$WORK/wt"
done
t1=$(now)
NAIVE=$(echo "($t1 - $t0) / $SAMPLES * 1000" | bc -l)

# What prodigy does instead between two items in a pooled worktree: reset to the start commit
# and remove everything untracked, after an "agent" changed a file and added one.
git worktree add -q --detach "$WORK/pool" HEAD
t0=$(now)
for i in $(seq 1 "$ITEMS"); do
  echo "change $i" >> "$WORK/pool/src/d$((i % 20))/f$i.txt"
  echo "new $i" > "$WORK/pool/new-$i.txt"
  git -C "$WORK/pool" reset -q --hard HEAD
  git -C "$WORK/pool" clean -q -ffdx
done
t1=$(now)
POOLED=$(echo "($t1 - $t0) / $ITEMS * 1000" | bc -l)
git worktree remove --force "$WORK/pool"

# A baseline: the same agent command alone, ITEMS times, without prodigy.
t0=$(now)
for i in $(seq 1 "$ITEMS"); do sh -c true; done
t1=$(now)
BARE=$(echo "($t1 - $t0) / $ITEMS * 1000" | bc -l)

export PRODIGY_HOME="$WORK/home"
/usr/bin/time -v -o "$WORK/time.txt" "$BIN" run wf.yml --database-url "sqlite://$WORK/home/state.db" >"$WORK/out.txt" 2>"$WORK/err.txt" || {
  cat "$WORK/out.txt" "$WORK/err.txt"; exit 1; }
WALL=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time.txt")
WALL_S=$(echo "$WALL" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
PER_ITEM=$(echo "$WALL_S / $ITEMS * 1000" | bc -l)
grep -q "succeeded" "$WORK/out.txt" || { cat "$WORK/out.txt" "$WORK/err.txt"; exit 1; }

# The same job one agent at a time: wall time per item is then prodigy's whole per-item cost
# (database writes, worktree reset, the agent process, bookkeeping) without overlap.
t0=$(now)
"$BIN" run wf.yml --max-parallel 1 --database-url "sqlite://$WORK/home/state.db" >"$WORK/out1.txt" 2>"$WORK/err1.txt" || {
  cat "$WORK/out1.txt" "$WORK/err1.txt"; exit 1; }
t1=$(now)
SERIAL=$(echo "($t1 - $t0) / $ITEMS * 1000" | bc -l)

printf '\nmap phase: %s items, max_parallel %s, repo of %s files (%s)\n' "$ITEMS" "$PARALLEL" "$FILES" "$SIZE"
printf 'load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-58s %10.1f ms\n' "git worktree add + remove, per item (naive isolation)" "$NAIVE"
printf '%-58s %10.1f ms\n' "reset --hard + clean -ffdx in a pooled worktree, per item" "$POOLED"
printf '%-58s %10.2f x\n'  "pooled isolation / naive isolation" "$(echo "$POOLED / $NAIVE" | bc -l)"
printf '%-58s %10.1f ms\n' "sh -c true, per item (the agent's own work)" "$BARE"
printf '%-58s %10.2f s\n'  "prodigy run, wall time" "$WALL_S"
printf '%-58s %10.1f ms\n' "prodigy, wall time per item" "$PER_ITEM"
printf '%-58s %10.1f ms\n' "prodigy at max_parallel 1, wall time per item" "$SERIAL"
printf '%-58s %10.2f x\n'  "prodigy per-item cost (serial) / naive worktree add+remove" "$(echo "$SERIAL / $NAIVE" | bc -l)"
printf '%-58s %10.1f MB\n' "peak RSS of prodigy" "$(echo "$RSS_KB / 1024" | bc -l)"
