#!/usr/bin/env bash
# Lifecycle benchmarks on the local cluster with the operator deployed (make deploy):
#   - size-3 create -> Available (3 runs)
#   - member pod deleted -> all members healthy again (3 runs)
#   - operator leader RSS idle (no EtcdCluster anywhere) and while managing 20 clusters
# Prints a Markdown table for docs/benchmarks.md. It deletes every EtcdCluster first: run it on the
# test cluster only.
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
RUNS=${RUNS:-3}
NS=bench-lifecycle
now_ms() { date +%s%3N; }

wait_running() { # NS NAME SIZE [EXCLUDED_MEMBER]
  local ns=$1 name=$2 size=$3 excluded=${4:-}
  for _ in $(seq 1 1200); do
    local s
    s=$(kubectl -n "$ns" get etcd "$name" -o jsonpath='{.status.phase} {.status.readyMembers} {.status.size} {.status.members[*].name}' 2>/dev/null || true)
    if [[ "$s" == "Running $size $size "* ]] && { [ -z "$excluded" ] || [[ " $s " != *" $excluded "* ]]; }; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $ns/$name: $s"; return 1
}

cluster_yaml() { # NAME SIZE
  printf 'apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: %s}\nspec: {size: %s, pod: {antiAffinity: None}}\n' "$1" "$2"
}

leader_rss_kib() { # prints VmRSS and VmHWM (KiB) of the operator replica holding the Lease
  local holder pid
  holder=$(kubectl -n ouroboros-system get lease ouroboros-etcd-operator -o jsonpath='{.spec.holderIdentity}')
  for pid in $(pgrep -x etcd-operator); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "POD_NAME=$holder"; then
      awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {print r, h}' "/proc/$pid/status"; return
    fi
  done
  echo "? ?"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

log "deleting every EtcdCluster for an idle baseline"
kubectl delete etcd --all -A --wait=true >/dev/null
kubectl delete ns "$NS" bench-scale --ignore-not-found --wait=true >/dev/null
sleep 20
read -r idle_rss idle_hwm < <(leader_rss_kib)

kubectl create ns "$NS" >/dev/null
create_ms=(); replace_ms=()
for i in $(seq 1 "$RUNS"); do
  t0=$(now_ms)
  cluster_yaml "b$i" 3 | kubectl -n "$NS" apply -f - >/dev/null
  wait_running "$NS" "b$i" 3
  create_ms+=($(( $(now_ms) - t0 )))
  leader=$(kubectl -n "$NS" get etcd "b$i" -o jsonpath='{.status.members[?(@.isLeader==true)].name}')
  victim=$(kubectl -n "$NS" get etcd "b$i" -o jsonpath='{.status.members[*].name}' | tr ' ' '\n' | grep -vx "$leader" | head -1)
  t0=$(now_ms)
  kubectl -n "$NS" delete pod "$victim" --wait=false >/dev/null
  wait_running "$NS" "b$i" 3 "$victim"
  replace_ms+=($(( $(now_ms) - t0 )))
  kubectl -n "$NS" delete etcd "b$i" --wait=true >/dev/null
done

kubectl create ns bench-scale >/dev/null
for i in $(seq 1 20); do cluster_yaml "s$i" 1 | kubectl -n bench-scale apply -f - >/dev/null; done
for i in $(seq 1 20); do wait_running bench-scale "s$i" 1; done
sleep 30
read -r busy_rss busy_hwm < <(leader_rss_kib)
kubectl delete ns "$NS" bench-scale --wait=false >/dev/null

fmt() { printf '%s' "$(printf '%s\n' "$@" | median)"; }
all() { local IFS=', '; echo "$*"; }
cat <<MD
| Measure | Target | Median | Runs |
|---|---|---|---|
| size-3 create → Running with 3 healthy voters | ≤ 30 s | $(awk -v v="$(fmt "${create_ms[@]}")" 'BEGIN {printf "%.1f s", v/1000}') | $(all "${create_ms[@]}") ms |
| follower pod deleted → 3 healthy voters again | ≤ 20 s | $(awk -v v="$(fmt "${replace_ms[@]}")" 'BEGIN {printf "%.1f s", v/1000}') | $(all "${replace_ms[@]}") ms |
| operator (leader) RSS, idle | ≤ 30 MiB | $(awk -v v="$idle_rss" 'BEGIN {printf "%.1f MiB", v/1024}') | peak $(awk -v v="$idle_hwm" 'BEGIN {printf "%.1f MiB", v/1024}') |
| operator (leader) RSS, managing 20 clusters | ≤ 60 MiB | $(awk -v v="$busy_rss" 'BEGIN {printf "%.1f MiB", v/1024}') | peak $(awk -v v="$busy_hwm" 'BEGIN {printf "%.1f MiB", v/1024}') |
MD
