#!/usr/bin/env bash
# Defragmentation of a MIB (default 1024) MiB database at about 50 % fragmentation, per member, and
# put latency on the cluster meanwhile, against idle, in the same run: the operator's order
# (followers one at a time, then leadership moved and the former leader defragmented) side by side
# with `etcdctl defrag --cluster`. Plain etcd processes on loopback with the flags the operator gives
# members (StopGRPCServiceOnDefrag, an 8 GiB quota), so the numbers are etcd's, not Kubernetes'.
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
MIB=${MIB:-1024}
BIN=$OUROBOROS_ETCD_BIN
WORK=$(mktemp -d /var/tmp/ouroboros-bench-defrag.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM
peer() { echo "http://127.0.0.1:$((43380 + 10 * $1))"; }
client() { echo "http://127.0.0.1:$((43379 + 10 * $1))"; }
cluster="m0=$(peer 0),m1=$(peer 1),m2=$(peer 2)"
for i in 0 1 2; do
  "$BIN/etcd" --name "m$i" --data-dir "$WORK/m$i" --quota-backend-bytes=$((8 << 30)) \
    --feature-gates=StopGRPCServiceOnDefrag=true --auto-compaction-retention=0 \
    --listen-client-urls "$(client "$i")" --advertise-client-urls "$(client "$i")" \
    --listen-peer-urls "$(peer "$i")" --initial-advertise-peer-urls "$(peer "$i")" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level warn >"$WORK/m$i.log" 2>&1 &
  pids+=($!)
done
until "$BIN/etcdctl" --endpoints "$(client 0),$(client 1),$(client 2)" endpoint health >/dev/null 2>&1; do sleep 0.2; done
cargo build --release --locked -q -p ouroboros-e2e --bin defrag-bench
"$CARGO_TARGET_DIR/release/defrag-bench" "$BIN/etcdctl" "$MIB" "$(client 0)" "$(client 1)" "$(client 2)"
