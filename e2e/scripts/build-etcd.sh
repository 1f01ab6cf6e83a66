#!/usr/bin/env bash
# Builds etcd, etcdctl and etcdutl for each version given (default: both pinned versions). Every etcd
# module keeps `replace` directives to its siblings, so a wrapper module is needed here too.
source "$(dirname "$0")/lib.sh"

build_one() {
  local E=$1 W="$OUROBOROS_CACHE/etcd/$1"
  local BIN="$W/bin"
  if [ -x "$BIN/etcd" ] && [ -x "$BIN/etcdctl" ] && [ -x "$BIN/etcdutl" ] \
     && "$BIN/etcd" --version 2>/dev/null | grep -q "etcd Version: $E$"; then
    log "etcd v$E already built in $BIN"; return
  fi
  mkdir -p "$BIN" && cd "$W"
  [ -f go.mod ] || go mod init local/etcdbins >/dev/null 2>&1
  timed "etcd-$E-download" go get -tool "go.etcd.io/etcd/server/v3@v$E" \
    "go.etcd.io/etcd/etcdctl/v3@v$E" "go.etcd.io/etcd/etcdutl/v3@v$E"
  local f=(-trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$E")
  export CGO_ENABLED=0
  timed "etcd-$E-compile" bash -c "go build ${f[*]@Q} -o bin/etcd go.etcd.io/etcd/server/v3 &&
    go build ${f[*]@Q} -o bin/etcdctl go.etcd.io/etcd/etcdctl/v3 &&
    go build ${f[*]@Q} -o bin/etcdutl go.etcd.io/etcd/etcdutl/v3"
}

versions=("$@"); [ ${#versions[@]} -gt 0 ] || versions=("$ETCD_VERSION" "$ETCD_OLD_VERSION")
for v in "${versions[@]}"; do with_lock "$OUROBOROS_CACHE/etcd-$v.lock" build_one "$v"; done
