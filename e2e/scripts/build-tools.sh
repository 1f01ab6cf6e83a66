#!/usr/bin/env bash
# Builds the cluster's helpers from their Go modules: CoreDNS (pod DNS for headless Services), MinIO
# (S3 for backups), Helm (the chart's checks, e2e/scripts/helm-check.sh) and promtool (alert rules,
# e2e/scripts/rules-check.sh). None of these modules has replace directives, so plain `go install` works.
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
with_lock "$OUROBOROS_CACHE/tools.lock" install_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" version
# promtool only checks and tests rule files: remove_all_sd (Prometheus' own build tag) leaves out the
# cloud service discoveries and their SDKs, which rule checks never use.
GOFLAGS="$GOFLAGS -tags=remove_all_sd" \
  with_lock "$OUROBOROS_CACHE/tools.lock" install_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION" --version
