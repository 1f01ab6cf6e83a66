#!/usr/bin/env bash
# Builds the cluster's helpers from their Go modules: CoreDNS (pod DNS for headless Services) and MinIO
# (S3 for backups). Neither module has replace directives, so plain `go install` works.
source "$(dirname "$0")/lib.sh"

install_tool() {
  local name=$1 module=$2 version=$3 probe=$4
  local bin="$OUROBOROS_CACHE/tools/$name/$version/$name"
  if [ -x "$bin" ] && "$bin" $probe >/dev/null 2>&1; then log "$name $version already built"; return; fi
  mkdir -p "$(dirname "$bin")"
  GOBIN="$(dirname "$bin")" CGO_ENABLED=0 timed "$name-build" go install -trimpath -ldflags "-s -w" "$module@$version"
}

with_lock "$OUROBOROS_CACHE/tools.lock" install_tool coredns github.com/coredns/coredns "v$COREDNS_VERSION" -version
with_lock "$OUROBOROS_CACHE/tools.lock" install_tool minio github.com/minio/minio "$MINIO_VERSION" --version
