#!/usr/bin/env bash
# Keeps a prodigy Action's state across the attempts of one workflow run, so that "Re-run jobs"
# continues the job where the killed, failed or cancelled attempt stopped (README: "Re-runs").
# action.yml calls it around `prodigy action`; the directory it fills is what actions/cache
# saves (keyed by run id and attempt, `if: always()`) and restores (the newest of the same run).
#
#   action-state.sh save DIR     after the step, whatever became of it: copies the SQLite state
#                                (state.db with its write-ahead log: a killed step's last
#                                transactions live there) and the list of unfinished jobs to DIR,
#                                and pushes each unfinished job's branch `prodigy/<job>` to origin
#                                with GITHUB_TOKEN when it is set (needs `contents: write`;
#                                without it a notice says that a re-run on another runner starts
#                                a new job)
#   action-state.sh restore DIR  before the step: puts the state back (not over a state that is
#                                already here, as on a self-hosted runner that kept its checkout)
#
# Run it in the repository's checkout. The state lives in $PRODIGY_HOME, default
# `<git dir>/prodigy`, as for prodigy itself. With a `database-url` there is no state.db; the
# branches are still pushed, so a later run sharing the database finds them.
set -euo pipefail

usage="usage: action-state.sh save|restore DIR"
mode=${1:?$usage}
dir=${2:?$usage}
home=${PRODIGY_HOME:-}
if [ -z "$home" ]; then
  home="$(git rev-parse --absolute-git-dir)/prodigy"
fi
# The list `prodigy action` keeps: one job id per line (src/action/branch.rs, UNFINISHED_FILE).
list=action-unfinished-jobs

say() { printf 'prodigy state: %s\n' "$*"; }

# The token reaches git through its environment (never an argument `ps` shows, never the
# checkout's configuration agents read): the header for the server replaces a persisted one.
use_token() {
  [ -n "${GITHUB_TOKEN:-}" ] || return 0
  local key basic
  key="http.${GITHUB_SERVER_URL:-https://github.com}/.extraheader"
  basic=$(printf 'x-access-token:%s' "$GITHUB_TOKEN" | base64 | tr -d '\n')
  export GIT_CONFIG_COUNT=2 GIT_CONFIG_KEY_0="$key" GIT_CONFIG_VALUE_0="" \
    GIT_CONFIG_KEY_1="$key" GIT_CONFIG_VALUE_1="AUTHORIZATION: basic $basic"
}

push_unfinished() {
  [ -f "$home/$list" ] || return 0
  local job branch out
  use_token
  while read -r job; do
    [ -n "$job" ] || continue
    branch="prodigy/$job"
    git show-ref --verify --quiet "refs/heads/$branch" || continue
    if out=$(git push --quiet origin "refs/heads/$branch:refs/heads/$branch" 2>&1); then
      say "pushed $branch to origin: a re-run continues job $job from it"
    else
      out=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)
      # A workflow command: `:` in the title and `%` in the message are escaped as the runner reads them.
      out=${out//%/%25}
      printf '::notice title=prodigy%%3A job branch not pushed::cannot push %s to origin (%s). A re-run on another runner starts a new job; give the workflow permissions: contents: write to continue this one.\n' "$branch" "$out"
    fi
  done <"$home/$list"
}

case "$mode" in
  save)
    mkdir -p "$dir"
    rm -f "$dir/state.db" "$dir/state.db-wal" "$dir/$list"
    if [ -f "$home/state.db" ]; then
      cp "$home/state.db" "$dir/state.db"
      if [ -f "$home/state.db-wal" ]; then cp "$home/state.db-wal" "$dir/state.db-wal"; fi
      say "saved the job database for a re-run"
    fi
    if [ -f "$home/$list" ]; then cp "$home/$list" "$dir/$list"; fi
    push_unfinished
    ;;
  restore)
    if [ ! -f "$dir/state.db" ]; then
      say "no saved state (a first attempt, or an earlier attempt saved none)"
      exit 0
    fi
    if [ -f "$home/state.db" ]; then
      say "a job database is here already ($home/state.db); the saved one is not restored over it"
      exit 0
    fi
    mkdir -p "$home"
    cp "$dir/state.db" "$home/state.db"
    rm -f "$home/state.db-shm"
    if [ -f "$dir/state.db-wal" ]; then cp "$dir/state.db-wal" "$home/state.db-wal"; fi
    if [ -f "$dir/$list" ]; then cp "$dir/$list" "$home/$list"; fi
    say "restored the job database of an earlier attempt of this run"
    ;;
  *)
    printf '%s\n' "$usage" >&2
    exit 2
    ;;
esac
