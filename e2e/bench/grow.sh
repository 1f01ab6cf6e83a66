#!/usr/bin/env bash
# Growing a full cluster through the operator, on the local cluster with the operator deployed
# (make deploy): a 1-member EtcdCluster is filled to MIB (default 1024) MiB with nothing written
# afterwards, then scaled to 3. Each learner joins through a raft snapshot of the whole database.
# Times size 3 -> Running with 3 healthy voters and prints the cluster's Events, so a learner that
# never catches up (docs/runbooks.md) shows as a timeout with its removal in the Events.
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
MIB=${MIB:-1024}
NS=bench-grow
K=(kubectl -n "$NS")
now_ms() { date +%s%3N; }
cleanup() {
  "${K[@]}" get events.events.k8s.io --sort-by=.metadata.creationTimestamp \
    -o custom-columns=AT:.metadata.creationTimestamp,REASON:.reason,NOTE:.note --no-headers 2>/dev/null |
    grep -v "^.* \(Scheduled\|Pulled\|Created\|Started\|SuccessfulAttachVolume\) " >&2 || true
  # The claims' data (local PVs are retained) is gigabytes.
  kubectl delete ns "$NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  "$REPO_ROOT/e2e/cluster.sh" pv-gc || true
}
trap cleanup EXIT
trap "exit 130" INT TERM

wait_running() { # SIZE SECONDS
  local deadline=$((SECONDS + $2)) s
  while :; do
    s=$("${K[@]}" get etcd g -o jsonpath='{.status.phase} {.status.readyMembers} {.status.size}' 2>/dev/null || true)
    [ "$s" = "Running $1 $1" ] && return 0
    [ $SECONDS -lt $deadline ] || { log "timed out waiting for size $1: $s"; return 1; }
    sleep 0.2
  done
}

kubectl delete ns "$NS" --wait=true >/dev/null 2>&1 || true
kubectl create ns "$NS" >/dev/null
printf 'apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: g}\nspec: {size: 1, pod: {antiAffinity: None}, storage: {persistentVolumeClaim: {size: 4Gi}}}\n' |
  "${K[@]}" apply -f - >/dev/null
wait_running 1 180
ip=$("${K[@]}" get svc g-client -o jsonpath='{.spec.clusterIP}')
wait_etcd_answers "$ip:2379" g-client
log "filling g with $MIB MiB"
"$CARGO_TARGET_DIR/release/etcd-fill" "http://$ip:2379" "$MIB"
t0=$(now_ms)
"${K[@]}" patch etcd g --type merge -p '{"spec":{"size":3}}' >/dev/null
wait_running 3 900
log "1 -> 3 healthy voters with $MIB MiB: $(($(now_ms) - t0)) ms"
