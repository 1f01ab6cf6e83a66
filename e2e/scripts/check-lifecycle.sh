#!/usr/bin/env bash
# Proves the cluster's lifecycle contract: `down` leaves no process, mount, network namespace, cgroup,
# iptables chain, bridge or veth behind; `up` after `down` reaches a Ready node; a second `up` is
# harmless. Each check prints a line; the summary line is the usual "N passed, N failed".
source "$(dirname "$0")/lib.sh"
CLUSTER="$REPO_ROOT/e2e/cluster.sh"
STATE="${OUROBOROS_STATE:-/var/lib/ouroboros-e2e}"
passed=0; failed=0
check() {
  local desc=$1; shift
  if "$@"; then echo "ok: $desc"; passed=$((passed + 1)); else echo "FAILED: $desc"; failed=$((failed + 1)); fi
}
none() { [ -z "$("$@" 2>/dev/null)" ]; }

"$CLUSTER" down
check "no cluster process left" none pgrep -f "$OUROBOROS_CACHE/(k8s|etcd|tools)/|containerd --config $STATE"
check "no mount under the state dir" none grep -F "$STATE" /proc/mounts
check "no CNI network namespace" none bash -c 'ls /run/netns 2>/dev/null | grep "^cni-"'
check "no /kubepods cgroup" none bash -c 'ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null'
check "no KUBE-/CNI- iptables chain" none bash -c 'iptables-save | grep -E "^:(KUBE|CNI)-"'
check "no bridge" bash -c '! ip link show ouro0 >/dev/null 2>&1'
check "no pod veth" none bash -c 'ip -o link show type veth | grep -o "veth[0-9a-f]*"'
check "no node network namespace, veth or route" none bash -c 'ls /run/netns 2>/dev/null | grep "^ouro-node"; ip -o link | grep -o "ouro-v[0-9]"; ip route | grep "^10\.244\.[1-9]"'
check "no node cgroup" none bash -c 'ls -d /sys/fs/cgroup/*/ouro-node* 2>/dev/null'
check "no partition chain" none bash -c 'iptables-save | grep OURO-PARTITION'
"$CLUSTER" up
source <("$CLUSTER" env)
check "node Ready after down+up" bash -c '[ "$(kubectl get node node1 -o jsonpath="{.status.conditions[?(@.type==\"Ready\")].status}")" = True ]'
"$CLUSTER" up
check "second up is harmless" "$CLUSTER" status
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
