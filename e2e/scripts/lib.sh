# Shared helpers for the build and cluster scripts. Source it; it sets strict mode.
set -euo pipefail
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPTS_DIR/../.." && pwd)"
# shellcheck source=versions.env
source "$SCRIPTS_DIR/versions.env"
# Everything built or downloaded lives outside the work tree so clean clones reuse it.
OUROBOROS_CACHE="${OUROBOROS_CACHE:-/var/cache/ouroboros}"
export GOMODCACHE="$OUROBOROS_CACHE/go/mod" GOCACHE="$OUROBOROS_CACHE/go/build"
# The same per-checkout Cargo target dir as the Makefile's (see there for why).
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$OUROBOROS_CACHE/cargo-target/$(printf '%s' "$(cd "$REPO_ROOT" && pwd -P)" | sha256sum | cut -c1-12)}"
export CARGO_TARGET_DIR
# Fail fast instead of fetching a newer toolchain, and let `go get` edit the wrapper modules.
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=mod"
mkdir -p "$OUROBOROS_CACHE"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# timed NAME CMD...: runs CMD and prints how long it took, so CI output shows where time goes.
timed() {
  local name=$1; shift
  local start=$SECONDS
  log "stage $name: start"
  "$@"
  log "stage $name: done in $((SECONDS - start))s"
}

# One flock per build so two concurrent callers don't race on the same cache directory.
with_lock() {
  local lock=$1; shift
  exec {fd}>"$lock"
  flock "$fd"
  "$@"
  flock -u "$fd"
}
