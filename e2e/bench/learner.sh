#!/usr/bin/env bash
# How long etcd itself takes to grow a 1-member cluster holding MIB (default 1024) MiB to 3 voters
# the way the operator does (one learner at a time, promoted once caught up), with no Kubernetes in
# the way: plain etcd processes on loopback, each learner started right after `member add --learner`
# and promoted as soon as its applied index reaches the leader's. The floor under the restore
# benchmark's "3-member cluster Available" (docs/benchmarks.md). Prints one line per learner.
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
MIB=${MIB:-1024}
BIN=$OUROBOROS_ETCD_BIN
WORK=$(mktemp -d /var/tmp/ouroboros-bench-learner.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM
now_ms() { date +%s%3N; }
peer() { echo "http://127.0.0.1:$((42380 + 10 * $1))"; }
client() { echo "127.0.0.1:$((42379 + 10 * $1))"; }
start() { # INDEX CLUSTER STATE
  "$BIN/etcd" --name "m$1" --data-dir "$WORK/m$1" --quota-backend-bytes=$((8 << 30)) \
    --listen-client-urls "http://$(client "$1")" --advertise-client-urls "http://$(client "$1")" \
    --listen-peer-urls "$(peer "$1")" --initial-advertise-peer-urls "$(peer "$1")" \
    --initial-cluster "$2" --initial-cluster-state "$3" --log-level warn >"$WORK/m$1.log" 2>&1 &
  pids+=($!)
}
applied() { # INDEX: the member's applied raft index, empty while it does not answer
  "$BIN/etcdctl" --endpoints "$(client "$1")" endpoint status -w json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["raftAppliedIndex"])' 2>/dev/null || true
}
cluster="m0=$(peer 0)"
start 0 "$cluster" new
until [ -n "$(applied 0)" ]; do sleep 0.1; done
"$CARGO_TARGET_DIR/release/etcd-fill" "http://$(client 0)" "$MIB"
total=0
for i in 1 2; do
  t0=$(now_ms)
  # etcd refuses a member add until the last promoted member has been connected for a while
  # ("unhealthy cluster"); the operator waits for the same.
  until out=$("$BIN/etcdctl" --endpoints "$(client 0)" member add "m$i" --learner --peer-urls "$(peer "$i")" 2>/dev/null); do
    sleep 0.1
  done
  t_added=$(now_ms)
  id=$(printf '%s\n' "$out" | awk '/^Member/ {print $2}')
  cluster="$cluster,m$i=$(peer "$i")"
  start "$i" "$cluster" existing
  deadline=$((SECONDS + 60))
  while :; do
    lead=$(applied 0) mine=$(applied "$i")
    [ -n "$mine" ] && [ "$mine" -ge "$lead" ] && break
    # etcd 3.6 does not count a received snapshot as applied: on an idle cluster the learner then
    # refuses its own publish ("too many requests") until it applies one more entry. An alarm list
    # is a raft entry that changes nothing; the operator proposes the same while it waits.
    "$BIN/etcdctl" --endpoints "$(client 0)" alarm list >/dev/null 2>&1 || true
    if [ $SECONDS -ge $deadline ]; then
      log "learner m$i did not catch up in 60 s; its log and the leader's:"
      tail -n 20 "$WORK/m$i.log" "$WORK/m0.log" >&2
      exit 1
    fi
    sleep 0.05
  done
  t_caught=$(now_ms)
  until "$BIN/etcdctl" --endpoints "$(client 0)" member promote "$id" >/dev/null 2>&1; do sleep 0.05; done
  t1=$(now_ms)
  total=$((total + t1 - t0))
  log "learner m$i: added after $((t_added - t0)) ms, caught up after $((t_caught - t0)) ms, voter after $((t1 - t0)) ms"
done
log "1 -> 3 voters with $MIB MiB: $total ms"
