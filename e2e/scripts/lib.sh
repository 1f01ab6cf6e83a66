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
  local start=$SECONDS rc=0
  log "stage $name: start"
  # The command's status is returned, not the log's: a caller's `timed ... || failed=1` (where
  # errexit is off anyway) must see a failure. Not `"$@" || rc=$?`: that would switch errexit off
  # inside every function timed runs, so a plain `timed stage fn` would no longer stop at fn's first
  # failing command.
  "$@"
  rc=$?
  log "stage $name: done in $((SECONDS - start))s$([ "$rc" = 0 ] || echo " (exit $rc)")"
  return "$rc"
}

# One flock per build so two concurrent callers don't race on the same cache directory.
with_lock() {
  local lock=$1; shift
  exec {fd}>"$lock"
  flock "$fd"
  "$@"
  flock -u "$fd"
}

# s3_delete_prefix PREFIX: deletes every object under PREFIX in the local MinIO's bucket, so a
# benchmark's gigabytes do not stay on the node's disk (the kubelet evicts pods below 1 % free).
# Needs the environment of `e2e/cluster.sh env`.
s3_delete_prefix() {
  local url="$OUROBOROS_S3_ENDPOINT/$OUROBOROS_S3_BUCKET" key
  local auth=(--aws-sigv4 aws:amz:us-east-1:s3 --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
  for key in $(curl -sf "${auth[@]}" "$url?list-type=2&prefix=${1//\//%2F}" | python3 -c '
import sys, xml.etree.ElementTree as ET
ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
for k in ET.parse(sys.stdin).getroot().findall("s3:Contents/s3:Key", ns):
    print(k.text)'); do
    curl -sf -X DELETE "${auth[@]}" "$url/$key" >/dev/null || true
  done
}

# wait_etcd_answers HOST:PORT WHAT: waits up to 60 s until etcd answers `endpoint health` there. An
# EtcdCluster's Running is the operator's view; its Service's endpoints and kube-proxy's rules may
# follow later. Needs the environment of `e2e/cluster.sh env`.
wait_etcd_answers() {
  local deadline=$((SECONDS + 60))
  until "$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "$1" endpoint health >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "$2 ($1) does not answer"; return 1; }
    sleep 0.5
  done
}

# csv_row FILE HEADER FIELD...: appends the FIELDs as one comma-separated row to FILE (a benchmark's
# machine-readable results, docs/benchmarks.md), writing HEADER first when FILE is new or empty.
csv_row() {
  local file=$1 header=$2; shift 2
  mkdir -p "$(dirname "$file")"
  [ -s "$file" ] || printf '%s\n' "$header" >"$file"
  local IFS=,
  printf '%s\n' "$*" >>"$file"
}
