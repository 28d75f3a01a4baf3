#!/usr/bin/env bash
# Puts a prodigy binary on a GitHub Actions runner without Rust: picks the release asset for the
# action's version and the runner's OS and architecture, downloads it with curl, verifies its
# SHA-256 against the release's checksum file BEFORE extracting or running anything, and writes
# `bin=<path>` to $GITHUB_OUTPUT. When no release matches (a branch or commit ref, a version
# without this asset), it writes `fallback=true` instead, and action.yml builds from source.
#
# Inputs, all from the environment (action.yml sets them):
#   PRODIGY_BINARY            a prodigy binary already on the runner: used as it is, nothing fetched
#   PRODIGY_VERSION           a release tag to download (`v1.4.0` or `1.4.0`); empty: from the ref
#   PRODIGY_ACTION_REF        the ref the workflow names the action by (`v1`, `v1.4.0`, `main`, a SHA)
#   PRODIGY_ACTION_REPOSITORY `owner/name` of the action, for the default download address
#                             (both read from the action's path when the runner leaves them empty)
#   PRODIGY_ACTION_PATH       the action's source (its Cargo.toml names the version of a `v1` ref)
#   RUNNER_OS, RUNNER_ARCH    `Linux`/`macOS` and `X64`/`ARM64`, as the runner sets them
#   PRODIGY_RELEASE_BASE_URL  where releases are, `<base>/<tag>/<asset>` (default: the
#                             repository's GitHub releases; tests point it at a local server)
#   PRODIGY_INSTALL_DIR       where to put the binary (default: the runner's tool cache)
#   GITHUB_OUTPUT             the step's output file
#
# Release assets (release.yml makes them): prodigy-<tag>-<target>.tar.gz holding `prodigy`, and
# prodigy-<tag>-<target>.tar.gz.sha256 holding `<hex sha-256>  <asset name>`.
set -euo pipefail

say() { printf 'prodigy install: %s\n' "$*"; }
fail() {
  printf '::error title=prodigy install::%s\n' "$*"
  printf 'prodigy install: %s\n' "$*" >&2
  exit 1
}
output() { if [ -n "${GITHUB_OUTPUT:-}" ]; then printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"; fi; }

action_path="${PRODIGY_ACTION_PATH:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

# A hash of the sources a fallback build compiles, for actions/cache's key (hashFiles() cannot
# read the action's directory: it is outside the workspace).
source_key() {
  (
    cd "$action_path"
    find Cargo.toml Cargo.lock src migrations -type f 2>/dev/null | LC_ALL=C sort |
      while IFS= read -r f; do printf '%s %s\n' "$f" "$(sha256_of "$f")"; done
  ) | sha256_stdin
}

sha256_stdin() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1; else shasum -a 256 | cut -d' ' -f1; fi
}
sha256_of() { sha256_stdin <"$1"; }

fallback() {
  say "$1; building prodigy from source instead (cached with actions/cache)"
  printf '::notice title=prodigy install::%s; building from source\n' "$1"
  output fallback true
  output cache-key "$(source_key)"
  exit 0
}

# 1. An explicit binary wins: nothing is downloaded or built.
if [ -n "${PRODIGY_BINARY:-}" ]; then
  [ -f "$PRODIGY_BINARY" ] || fail "the binary input names $PRODIGY_BINARY, which does not exist; give the path of a prodigy binary on the runner, or leave binary empty to download a release"
  [ -x "$PRODIGY_BINARY" ] || fail "the binary input names $PRODIGY_BINARY, which is not executable; chmod +x it"
  say "using the given binary $PRODIGY_BINARY"
  output bin "$PRODIGY_BINARY"
  output fallback false
  exit 0
fi

# 2. Which release.
version="${PRODIGY_VERSION:-}"
ref="${PRODIGY_ACTION_REF:-}"
repository="${PRODIGY_ACTION_REPOSITORY:-}"
# Inside a composite action github.action_ref and github.action_repository can be empty
# (actions/runner#2525); the runner checks an action out at .../_actions/<owner>/<repo>/<ref>.
if [ -z "$ref" ] || [ -z "$repository" ]; then
  case "$action_path" in
    */_actions/*/*/*)
      IFS=/ read -r path_owner path_repo path_ref _ <<<"${action_path##*/_actions/}"
      ref="${ref:-$path_ref}"
      repository="${repository:-$path_owner/$path_repo}"
      ;;
  esac
fi
if [ -n "$version" ]; then
  case "$version" in v*) tag="$version" ;; *) tag="v$version" ;; esac
elif [[ "$ref" =~ ^v[0-9]+\.[0-9]+\.[0-9]+([-+].*)?$ ]]; then
  tag="$ref"
elif [[ "$ref" =~ ^v([0-9]+)(\.([0-9]+))?$ ]]; then
  # A moving major (or minor) tag points at the release commit, whose Cargo.toml names it.
  crate_version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$action_path/Cargo.toml" | head -n 1)"
  [ -n "$crate_version" ] || fallback "cannot read the version from $action_path/Cargo.toml for ref $ref"
  case "v$crate_version" in
    "$ref".*) tag="v$crate_version" ;;
    *) fallback "ref $ref points at version $crate_version, which is not a $ref release" ;;
  esac
else
  fallback "ref '${ref:-(none)}' is not a release tag, so no release binary matches it (set the version input to download one)"
fi
[[ "$tag" =~ ^v[0-9A-Za-z.+-]+$ ]] || fail "version '$tag' is not a release tag like v1.4.0"

# 3. Which asset: the runner's OS and architecture.
case "${RUNNER_OS:-}" in
  Linux) os=unknown-linux-musl ;;
  macOS) os=apple-darwin ;;
  *) fallback "no release binary for runner OS '${RUNNER_OS:-unset}' (Linux and macOS have one)" ;;
esac
case "${RUNNER_ARCH:-}" in
  X64) arch=x86_64 ;;
  ARM64) arch=aarch64 ;;
  *) fallback "no release binary for runner architecture '${RUNNER_ARCH:-unset}' (X64 and ARM64 have one)" ;;
esac
target="$arch-$os"
asset="prodigy-$tag-$target.tar.gz"
if [ -n "${PRODIGY_RELEASE_BASE_URL:-}" ]; then
  base="${PRODIGY_RELEASE_BASE_URL%/}"
else
  [ -n "$repository" ] || fallback "the action's repository is unknown, so there is no release address"
  base="${GITHUB_SERVER_URL:-https://github.com}/$repository/releases/download"
fi
url="$base/$tag/$asset"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Prints the HTTP status; the body goes to $2. Retries transient failures, not a 404.
fetch() {
  local code
  code="$(curl --silent --show-error --location --retry 3 --retry-delay 1 --connect-timeout 20 \
    --output "$2" --write-out '%{http_code}' "$1")" || true
  printf '%s' "${code:-000}"
}

# 4. Download the checksum and the archive; nothing is unpacked yet.
say "downloading $url"
code="$(fetch "$url" "$work/$asset")"
case "$code" in
  200) ;;
  404) fallback "release $tag has no asset $asset" ;;
  *) fail "downloading $url failed (HTTP $code); retry the job, or set the binary input" ;;
esac
code="$(fetch "$url.sha256" "$work/$asset.sha256")"
[ "$code" = 200 ] || fail "release $tag has $asset but its checksum $asset.sha256 could not be fetched (HTTP $code); refusing to run an unverified binary"
expected="$(tr -d '\r' <"$work/$asset.sha256" | awk 'NR == 1 { print tolower($1) }')"
[[ "$expected" =~ ^[0-9a-f]{64}$ ]] || fail "$asset.sha256 of release $tag holds no SHA-256 (expected '<64 hex digits>  $asset'); refusing to run an unverified binary"
actual="$(sha256_of "$work/$asset")"
if [ "$actual" != "$expected" ]; then
  fail "checksum mismatch for $asset of release $tag: expected $expected (from $asset.sha256), got $actual; the download is corrupt or was tampered with, so nothing was extracted or run"
fi
say "verified SHA-256 $actual"

# 5. Only a verified archive is unpacked, and only its `prodigy` is kept.
mkdir "$work/unpacked"
tar -xzf "$work/$asset" -C "$work/unpacked"
found="$(find "$work/unpacked" -type f -name prodigy | head -n 1)"
[ -n "$found" ] || fail "$asset of release $tag holds no file named prodigy"
dir="${PRODIGY_INSTALL_DIR:-${RUNNER_TOOL_CACHE:-$HOME/.cache}/prodigy/$tag/$target}"
mkdir -p "$dir"
install -m 0755 "$found" "$dir/prodigy.tmp"
mv -f "$dir/prodigy.tmp" "$dir/prodigy"
say "installed $("$dir/prodigy" --version) ($target) at $dir/prodigy"
output bin "$dir/prodigy"
output fallback false
output version "$tag"
