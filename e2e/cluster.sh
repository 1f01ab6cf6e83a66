#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, from upstream components built by e2e/scripts/:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler as host processes; containerd + runc +
# the bridge CNI plugin + kubelet + kube-proxy running real pods; CoreDNS for pod DNS; MinIO for S3.
#
#   e2e/cluster.sh up | down | status | kubeconfig | env | pv-gc | use-etcd URLS | power-cycle |
#                  power-cut-losing PATH... | boot-etcd-restore SNAPSHOT_DB |
#                  node-stop NODE | node-start NODE | partition NODE | heal NODE | node-sock NODE |
#                  power-cycle-all | control-plane NODE...
#
# NODES=N (default 1, at most 9) at `up` adds nodes node2..nodeN, each in a network namespace of its
# own (docs/local-cluster.md): its own containerd, kubelet and kube-proxy, node IP and pod range.
# node1 is the machine itself, where the control plane runs, as on a control-plane node.
#
# Everything it creates lives under $OUROBOROS_STATE (default /var/lib/ouroboros-e2e), the bridge
# `ouro0`, the kubelet's /kubepods cgroups and iptables chains, and `down` removes all of it.
# Nothing leaves the machine: the pod and service ranges are routed onto the bridge only, and pods
# cannot be forwarded out of any other interface.
source "$(dirname "$0")/scripts/lib.sh"

STATE="${OUROBOROS_STATE:-/var/lib/ouroboros-e2e}"
RUN="$STATE/run"; LOGS="$STATE/logs"; PKI="$STATE/pki"; CONF="$STATE/conf"
BRIDGE=ouro0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
DNS_IP=$NODE_IP
NODE_NAME=node1
API_PORT=6443
API_URL="https://$NODE_IP:$API_PORT"
# The control plane's own etcd. Off the default ports so self-hosted members on the host network can
# use 2379/2380 without clashing. It is also the "boot" etcd of the self-hosted e2e, so it advertises
# the node address (as bootkube's boot etcd advertised a service IP): the operator's pod and the
# self-hosted members on the host network must reach it.
CP_ETCD_CLIENT=http://127.0.0.1:22379
CP_ETCD_PEER=http://$NODE_IP:22380
BOOT_ETCD_CLIENT=http://$NODE_IP:22379
# The self-hosted etcd's client Service gets this ClusterIP (bootkube used the 15th service address).
# The API server lists it after the boot etcd from the start, so it keeps serving when the boot member
# is removed, before it is restarted on the members' own URLs. Until that Service exists nothing
# answers there, and etcd's client simply does not use that address.
SELF_HOSTED_ETCD_VIP=10.96.0.15
# After a self-hosted handover the API server's --etcd-servers are recorded here, and `up` uses them.
ETCD_SERVERS_FILE="$STATE/etcd-servers"
SELF_HOSTED_DATA="$STATE/self-hosted"
# The nodes share the machine's file system: each has a static-pod directory (its kubelet's
# staticPodPath) and a checkpoint-secrets directory of its own under these, named after the node.
STATIC_PODS="$STATE/static-pods"
CHECKPOINT_SECRETS="$STATE/checkpoint-secrets"
MINIO_ADDR="$NODE_IP:9000"
MINIO_USER=ouroboros
MINIO_PASSWORD=ouroboros-secret
MINIO_BUCKET=etcd-backups
PV_COUNT=${OUROBOROS_PV_COUNT:-60}
# Local PVs on each added node (node1 has PV_COUNT).
NODE_PV_COUNT=${OUROBOROS_NODE_PV_COUNT:-20}
# How many nodes the cluster has: NODES at `up`, recorded for every later command.
NODES_FILE="$STATE/node-count"
# `up` builds NODES nodes (default 1) and replaces a running cluster of another size; every other
# command works on the running cluster's.
REQUESTED_NODES=${NODES:-1}
NODES=${NODES:-$(cat "$NODES_FILE" 2>/dev/null || echo 1)}
# Every pod range (node K has 10.244.K.0/24; node1's is on the bridge itself, 10.244.0.0/24).
CLUSTER_CIDR=10.244.0.0/16
# Test settings for fast failure detection (docs/local-cluster.md): a node is NotReady this long
# after its last heartbeat (upstream default 50 s), and pods without their own toleration are evicted
# from a NotReady or unreachable node after EVICTION_SECONDS (upstream default 300 s).
NODE_GRACE=${OUROBOROS_NODE_GRACE:-16s}
EVICTION_SECONDS=${OUROBOROS_EVICTION_SECONDS:-60}
# Host-side rules that cut a node off (partition) live in this chain.
PARTITION_CHAIN=OURO-PARTITION

K8S_BIN="$OUROBOROS_CACHE/k8s/$K8S_VERSION/bin"
ETCD_BIN="$OUROBOROS_CACHE/etcd/$ETCD_VERSION/bin"
COREDNS="$OUROBOROS_CACHE/tools/coredns/v$COREDNS_VERSION/coredns"
MINIO="$OUROBOROS_CACHE/tools/minio/$MINIO_VERSION/minio"
CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN")

# --- processes --------------------------------------------------------------------------------------

# start NAME CMD...: runs CMD detached, logging to $LOGS/NAME.log, unless it is already running.
start() {
  local name=$1; shift
  if running "$name"; then return; fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
  start_time $! > "$RUN/$name.start"
}

# The kernel's start time of a process (field 22 of /proc/PID/stat, after the parenthesised name).
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  awk '{print $20}' <<<"$stat"
}

# A pid file names our process only while that process has the start time recorded with it: after
# a reboot the number may belong to anything (seen: `stop` on a stale pid file killed `make` itself).
running() {
  local pidfile="$RUN/$1.pid" pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -f "$RUN/$1.start" ]; then
    [ "$(start_time "$pid")" = "$(cat "$RUN/$1.start")" ]
  else
    # A pid file from before start times were recorded: ours if its command line names our paths.
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qE "$STATE|/var/cache/ouroboros"
  fi
}

stop() {
  local name=$1 pidfile="$RUN/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if running "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    # SIGKILL is asynchronous: a restart before the kernel reaps the process finds its port still bound.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile" "$RUN/$name.start"
}

# wait_for DESC SECONDS CMD...: polls CMD every half second; fails with DESC and the logs' tails.
wait_for() {
  local desc=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ -n "${WAIT_PROC:-}" ] && ! running "$WAIT_PROC"; then
      log "$WAIT_PROC exited while waiting for $desc; its log ends:"
      tail -n 15 "$LOGS/$WAIT_PROC.log" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${secs}s waiting for $desc"
      for f in "$LOGS"/*.log; do echo "--- $f" >&2; tail -n 15 "$f" >&2; done
      return 1
    fi
    sleep 0.5
  done
}

# --- host set-up --------------------------------------------------------------------------------------

host_prereqs() {
  local missing=()
  for b in containerd runc ctr iptables ip openssl curl nsenter; do command -v "$b" >/dev/null || missing+=("$b"); done
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages for: ${missing[*]}"
    "$REPO_ROOT/e2e/scripts/install-debs.sh"
  fi
  for f in "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-proxy" "$ETCD_BIN/etcd" "$COREDNS" "$MINIO"; do
    [ -x "$f" ] || { log "missing $f: run e2e/scripts/build-all.sh"; exit 1; }
  done
}

network_up() {
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "warning: bridge-nf-call-iptables unavailable"
  sysctl -qw fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=524288
  # The kubelet would set these itself; setting them first keeps its start quiet.
  sysctl -qw vm.overcommit_memory=1 kernel.panic=10 kernel.panic_on_oops=1 2>/dev/null || true
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service IPs that kube-proxy has not (yet) translated must not take the default route off the machine.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  # Pods may talk to each other and to the host, never through another interface.
  iptables -C FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null \
    || iptables -I FORWARD 1 -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null \
    || iptables -I FORWARD 1 -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
}

# --- certificates ---------------------------------------------------------------------------------------

# cert NAME CN ORG [SANS]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 org=$3 sans=${4:-}
  [ -f "$PKI/$name.crt" ] && return
  local subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org$subj"
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } > "$ext"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

pki() {
  mkdir -p "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=ouroboros-e2e-ca" -days 3650 -out "$PKI/ca.crt" 2>/dev/null
  fi
  cert apiserver kube-apiserver "" \
    "IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  cert admin kubernetes-admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kubelet-client "system:node:$NODE_NAME" system:nodes
  cert kubelet-serving "system:node:$NODE_NAME" system:nodes "IP:$NODE_IP,DNS:$NODE_NAME"
  cert kube-proxy system:kube-proxy ""
  cert coredns system:coredns ""
  [ -f "$PKI/sa.key" ] || { openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null; openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null; }
}

kubeconfig_for() {
  local name=$1 out=$2
  cat > "$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ouroboros-e2e
  cluster: {server: "$API_URL", certificate-authority: "$PKI/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$PKI/$name.crt", client-key: "$PKI/$name.key"}
contexts:
- name: ouroboros-e2e
  context: {cluster: ouroboros-e2e, user: $name}
current-context: ouroboros-e2e
EOF
}

# --- control plane ------------------------------------------------------------------------------------------

control_plane_up() {
  if [ -f "$ETCD_SERVERS_FILE" ]; then
    log "the API server runs on self-hosted etcd: $(cat "$ETCD_SERVERS_FILE")"
  else
    boot_etcd_up
  fi
  apiserver_up
}

boot_etcd_up() {
  start cp-etcd "$ETCD_BIN/etcd" --name cp --data-dir "$STATE/cp-etcd" \
    --listen-client-urls "$CP_ETCD_CLIENT,$BOOT_ETCD_CLIENT" --advertise-client-urls "$BOOT_ETCD_CLIENT" \
    --listen-peer-urls "$CP_ETCD_PEER" --initial-advertise-peer-urls "$CP_ETCD_PEER" \
    --initial-cluster "cp=$CP_ETCD_PEER" --listen-metrics-urls http://127.0.0.1:22381 \
    --quota-backend-bytes 4294967296
  wait_for "control-plane etcd" 30 curl -sf http://127.0.0.1:22379/health
}

apiserver_up() {
  local etcd_servers=$CP_ETCD_CLIENT,http://$SELF_HOSTED_ETCD_VIP:2379
  [ -f "$ETCD_SERVERS_FILE" ] && etcd_servers=$(cat "$ETCD_SERVERS_FILE")
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --etcd-servers "$etcd_servers" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --default-not-ready-toleration-seconds "$EVICTION_SECONDS" --default-unreachable-toleration-seconds "$EVICTION_SECONDS" \
    --profiling=false --v=1
  # Explicit: errexit does not apply where a caller tests this function (power-cycle's retry loop).
  WAIT_PROC=kube-apiserver wait_for "kube-apiserver /readyz" 90 "${KUBECTL[@]}" get --raw /readyz || return 1
  controllers_up
}

controllers_up() {

  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$CONF/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false \
    --node-monitor-period 2s --node-monitor-grace-period "$NODE_GRACE" \
    --v=1
  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$CONF/scheduler.kubeconfig" \
    --authentication-kubeconfig "$CONF/scheduler.kubeconfig" \
    --authorization-kubeconfig "$CONF/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --v=1
}

# --- node ---------------------------------------------------------------------------------------------------

node_config() {
  mkdir -p "$CONF/cni" "$STATE/containerd" "$RUN/containerd"
  cat > "$CONF/cni/10-ouroboros.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "ouroboros",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10",
              "rangeEnd": "10.244.0.250", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$STATE/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat > "$CONF/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/ouroboros/pause:3.10"
  # This machine withholds CAP_SYS_RESOURCE, so no process may lower oom_score_adj; the kubelet asks
  # for -998 (sandboxes) and -997 (Guaranteed pods) and runc init would die. Clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CONF/cni"
EOF
  # An empty resolv.conf: pods get cluster DNS and nothing of the host's search path or resolvers.
  : > "$CONF/resolv.conf"
  cat > "$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
staticPodPath: $STATIC_PODS/node1
failSwapOn: false
# See restrict_oom_score_adj in the containerd config: negative scores cannot be set here.
oomScoreAdj: 0
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $CONF/resolv.conf
address: $NODE_IP
healthzBindAddress: 127.0.0.1
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $PKI/ca.crt}}
authorization: {mode: Webhook}
serializeImagePulls: false
# Test settings (docs/local-cluster.md): a lost node is noticed in seconds, not in 50 s.
nodeStatusUpdateFrequency: 4s
nodeLeaseDurationSeconds: 8
maxPods: 60
EOF
  cat > "$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
clientConnection: {kubeconfig: $CONF/kube-proxy.kubeconfig}
conntrack: {maxPerCore: 0}
EOF
  cat > "$CONF/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 {
    bind $DNS_IP
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $CONF/coredns.kubeconfig ouroboros-e2e
        pods verified
        fallthrough in-addr.arpa
    }
    cache 2
}
.:53 {
    bind $DNS_IP
    # No upstream resolvers here: names outside the cluster do not exist.
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
  mkdir -p "$STATIC_PODS/node1" "$CHECKPOINT_SECRETS/node1"
}

node_up() {
  start containerd containerd --config "$CONF/containerd.toml"
  wait_for containerd 30 ctr -a "$CONTAINERD_SOCK" version
  "$REPO_ROOT/e2e/scripts/images.sh" import "$CONTAINERD_SOCK"
  kubelet_start
  start kube-proxy "$K8S_BIN/kube-proxy" --config "$CONF/kube-proxy.yaml"
  wait_for "node $NODE_NAME Ready" 90 node_ready
}

kubelet_start() {
  start kubelet "$K8S_BIN/kubelet" --config "$CONF/kubelet.yaml" --kubeconfig "$CONF/kubelet.kubeconfig" \
    --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --root-dir "$STATE/kubelet" \
    --cert-dir "$STATE/kubelet-pki" --v=1
}

# node_ready [NODE]: whether NODE (default node1) is Ready.
node_ready() {
  [ "$("${KUBECTL[@]}" get node "${1:-$NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# --- added nodes (NODES > 1) ------------------------------------------------------------------------
#
# Node K (2..9) is a network namespace `ouro-nodeK` joined to the bridge by a veth (`ouro-vK` on the
# host, `eth0` inside) with the node IP 10.244.0.K; its pods are on a bridge of its own inside it, in
# 10.244.K.0/24, routed by the host. Its containerd, kubelet and kube-proxy run in that namespace
# (nsenter --net: the mount namespace stays the machine's, so volumes and `down` see one world), with
# state under $STATE/nodes/nodeK and pod cgroups under /ouro-nodeK. Host-network pods of node K live in
# its namespace, so they get ports of their own and are cut off with the node.

node_index() {
  local name=${1:?node name} k
  k=${name#node}
  [[ $k =~ ^[2-9]$ ]] && [ "$k" -le "$NODES" ] || { log "no added node $name (nodes are node1..node$NODES; node1 is the machine)"; return 1; }
  echo "$k"
}
nns() { echo "ouro-node$1"; }
nip() { echo "10.244.0.$1"; }
ncidr() { echo "10.244.$1.0/24"; }
ndir() { echo "$STATE/nodes/node$1"; }
nrun() { echo "$RUN/nodes/node$1"; }
nsock() { echo "$(nrun "$1")/containerd.sock"; }
in_node() { local k=$1; shift; nsenter --net="/run/netns/$(nns "$k")" "$@"; }

node_network_up() {
  local k=$1 ns; ns=$(nns "$k")
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "ouro-v$k" >/dev/null 2>&1; then
    ip link add "ouro-v$k" type veth peer name eth0 netns "$ns"
    ip link set "ouro-v$k" master "$BRIDGE" up
  fi
  ip -n "$ns" link set lo up
  ip -n "$ns" addr replace "$(nip "$k")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$NODE_IP"
  in_node "$k" sysctl -qw net.ipv4.ip_forward=1
  in_node "$k" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || log "warning: bridge-nf-call-iptables unavailable in $ns"
  # The machine routes each node's pod range to that node.
  ip route replace "$(ncidr "$k")" via "$(nip "$k")" dev "$BRIDGE"
  # Pod cgroups of this node (the kubelet refuses a cgroupRoot that does not exist).
  local h
  for h in /sys/fs/cgroup/*/; do mkdir -p "$h/ouro-node$k" 2>/dev/null || true; done
}

node_extra_config() {
  local k=$1 name="node$k" dir run ip cidr
  dir=$(ndir "$k"); run=$(nrun "$k"); ip=$(nip "$k"); cidr=$(ncidr "$k")
  mkdir -p "$dir/cni" "$dir/containerd" "$STATIC_PODS/$name" "$CHECKPOINT_SECRETS/$name" "$dir/pod-logs" "$run"
  cert "kubelet-client-$name" "system:node:$name" system:nodes
  cert "kubelet-serving-$name" "system:node:$name" system:nodes "IP:$ip,DNS:$name"
  kubeconfig_for "kubelet-client-$name" "$dir/kubelet.kubeconfig"
  cat > "$dir/cni/10-ouroboros.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "ouroboros",
  "plugins": [
    {"type": "bridge", "bridge": "ouro-pods", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr", "rangeStart": "10.244.$k.10",
              "rangeEnd": "10.244.$k.250", "gateway": "10.244.$k.1"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$dir/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  sed -e "s#^root = .*#root = \"$dir/containerd\"#" -e "s#^state = .*#state = \"$run/state\"#" \
    -e "s#address = \"$CONTAINERD_SOCK\"#address = \"$(nsock "$k")\"#" -e "s#conf_dir = .*#conf_dir = \"$dir/cni\"#" \
    "$CONF/containerd.toml" > "$dir/containerd.toml"
  sed -e "s#^containerRuntimeEndpoint: .*#containerRuntimeEndpoint: unix://$(nsock "$k")#" \
    -e "s#^staticPodPath: .*#staticPodPath: $STATIC_PODS/$name#" -e "s#^address: .*#address: $ip#" \
    -e "s#^tlsCertFile: .*#tlsCertFile: $PKI/kubelet-serving-$name.crt#" \
    -e "s#^tlsPrivateKeyFile: .*#tlsPrivateKeyFile: $PKI/kubelet-serving-$name.key#" \
    -e "s#^maxPods: .*#maxPods: 40#" "$CONF/kubelet.yaml" > "$dir/kubelet.yaml"
  cat >> "$dir/kubelet.yaml" <<EOF
# Kubelets on one machine must not share pod cgroups or pod log directories: each would remove what
# it does not know of the others'.
cgroupRoot: /ouro-node$k
podLogsDir: $dir/pod-logs
EOF
  sed -e "s#^hostnameOverride: .*#hostnameOverride: $name#" -e "s#^bindAddress: .*#bindAddress: $ip#" \
    "$CONF/kube-proxy.yaml" > "$dir/kube-proxy.yaml"
}

node_extra_up() {
  local k=$1 name="node$k" dir; dir=$(ndir "$k")
  node_network_up "$k"
  start "containerd-$name" nsenter --net="/run/netns/$(nns "$k")" containerd --config "$dir/containerd.toml"
  wait_for "containerd of $name" 30 ctr -a "$(nsock "$k")" version
  "$REPO_ROOT/e2e/scripts/images.sh" import "$(nsock "$k")"
  node_extra_kubelet_start "$k"
  start "kube-proxy-$name" nsenter --net="/run/netns/$(nns "$k")" "$K8S_BIN/kube-proxy" --config "$dir/kube-proxy.yaml"
}

node_extra_kubelet_start() {
  local k=$1 name="node$k" dir; dir=$(ndir "$k")
  start "kubelet-$name" nsenter --net="/run/netns/$(nns "$k")" "$K8S_BIN/kubelet" --config "$dir/kubelet.yaml" \
    --kubeconfig "$dir/kubelet.kubeconfig" --node-ip "$(nip "$k")" --hostname-override "$name" \
    --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet-pki" --v=1
}

# Processes in the node's pod cgroups: its containers, whatever their shims' fate.
node_container_pids() {
  [ -d "/sys/fs/cgroup/pids/ouro-node$1" ] || return 0
  find "/sys/fs/cgroup/pids/ouro-node$1" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

# unmount_under PREFIX: lazily unmounts every mount whose path starts with PREFIX, deepest first.
unmount_under() {
  awk -v s="$1" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

node_power_off() {
  local k=$1 name="node$k" p pids=()
  for p in "kubelet-$name" "kube-proxy-$name" "containerd-$name"; do
    running "$p" && pids+=("$(cat "$RUN/$p.pid")")
  done
  # nsenter execs the program, so the recorded pid is the program's own.
  pids+=($(pgrep -f "containerd-shim-runc-v2 .*-address $(nsock "$k")" || true))
  pids+=($(node_container_pids "$k"))
  [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while [ -n "$(node_container_pids "$k")" ]; do
    [ $SECONDS -lt $deadline ] || { log "containers of $name still run after SIGKILL"; return 1; }
    kill -KILL $(node_container_pids "$k") 2>/dev/null || true
    sleep 0.2
  done
  for p in "kubelet-$name" "kube-proxy-$name" "containerd-$name"; do rm -f "$RUN/$p.pid" "$RUN/$p.start"; done
}

# node-stop NODE: a power loss of an added node: its kubelet, kube-proxy, containerd, shims and every
# container die at once (SIGKILL), and its network link goes down, so nothing answers at its addresses.
cmd_node_stop() {
  local k; k=$(node_index "${1:-}")
  ip link set "ouro-v$k" down
  node_power_off "$k"
  # What a reboot loses: every mount of the node (container root filesystems, tmpfs volumes) and the
  # runtime's state on tmpfs. Data on its disks (local PVs, the kubelet's directory) stays.
  unmount_under "$(nrun "$k")"
  unmount_under "$(ndir "$k")"
  unmount_under "$STATE/pv/node$k-"
  rm -rf "$(nrun "$k")/state"
  log "node$k: power off (kubelet, runtime and every container killed; link down)"
}

# node-start NODE: the node boots: link up, containerd, kubelet and kube-proxy start again.
cmd_node_start() {
  local k; k=$(node_index "${1:-}")
  ip link set "ouro-v$k" up
  node_extra_up "$k"
  wait_for "node node$k Ready" 120 node_ready "node$k"
  log "node$k: booted and Ready"
}

partition_chain() {
  iptables -N "$PARTITION_CHAIN" 2>/dev/null || true
  local c
  for c in INPUT OUTPUT FORWARD; do
    iptables -C "$c" -j "$PARTITION_CHAIN" 2>/dev/null || iptables -I "$c" 1 -j "$PARTITION_CHAIN"
  done
}

# partition NODE: the node keeps running but nothing reaches it or leaves it: not the other nodes,
# nor the API server, MinIO or DNS on the machine. Packets are dropped where the machine forwards or
# receives them (bridged traffic passes iptables through br_netfilter), so callers see timeouts.
cmd_partition() {
  local k a; k=$(node_index "${1:-}")
  partition_chain
  for a in "$(nip "$k")" "$(ncidr "$k")"; do
    iptables -C "$PARTITION_CHAIN" -s "$a" -j DROP 2>/dev/null || iptables -A "$PARTITION_CHAIN" -s "$a" -j DROP
    iptables -C "$PARTITION_CHAIN" -d "$a" -j DROP 2>/dev/null || iptables -A "$PARTITION_CHAIN" -d "$a" -j DROP
  done
  log "node$k: partitioned"
}

cmd_heal() {
  local k a; k=$(node_index "${1:-}")
  for a in "$(nip "$k")" "$(ncidr "$k")"; do
    iptables -D "$PARTITION_CHAIN" -s "$a" -j DROP 2>/dev/null || true
    iptables -D "$PARTITION_CHAIN" -d "$a" -j DROP 2>/dev/null || true
  done
  log "node$k: healed"
}

nodes_down() {
  local k c
  for k in $(seq 2 9); do
    for c in "kube-proxy-node$k" "kubelet-node$k"; do stop "$c"; done
    if running "containerd-node$k"; then
      kill_all_containers "$(nsock "$k")"
      stop "containerd-node$k"
    fi
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $(nsock "$k")" 2>/dev/null || true
    [ -z "$(node_container_pids "$k")" ] || kill -KILL $(node_container_pids "$k") 2>/dev/null || true
  done
  for c in INPUT OUTPUT FORWARD; do iptables -D "$c" -j "$PARTITION_CHAIN" 2>/dev/null || true; done
  iptables -F "$PARTITION_CHAIN" 2>/dev/null || true
  iptables -X "$PARTITION_CHAIN" 2>/dev/null || true
  for k in $(seq 2 9); do
    ip route del "$(ncidr "$k")" 2>/dev/null || true
    ip link del "ouro-v$k" 2>/dev/null || true
    if [ -e "/run/netns/$(nns "$k")" ]; then
      # Whatever the node's kube-proxy and CNI left dies with the namespace.
      ip netns del "$(nns "$k")" 2>/dev/null || true
    fi
  done
}

# Cgroups of added nodes, removed leaf-first once their processes are gone.
nodes_cgroups_down() {
  local h
  for h in /sys/fs/cgroup/*/ouro-node*; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# local_pv NAME NODE: makes the directory $STATE/pv/NAME and prints the local PersistentVolume
# local-NAME on it, tied to NODE.
local_pv() {
  mkdir -p "$STATE/pv/$1"
  cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-$1, labels: {ouroboros.dev/e2e: "true"}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  local: {path: "$STATE/pv/$1"}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$2]}]
EOF
}

# --- add-ons: RBAC for our own components, DNS, storage, S3 ----------------------------------------------------

addons_up() {
  "${KUBECTL[@]}" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "ouroboros-e2e:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "ouroboros-e2e:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "ouroboros-e2e:coredns"}
subjects: [{kind: User, name: "system:coredns"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "ouroboros-e2e:kube-proxy"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-proxier"}
subjects: [{kind: User, name: "system:kube-proxy"}]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
  start coredns "$COREDNS" -conf "$CONF/Corefile"
  local i k
  {
    for i in $(seq -w 1 "$PV_COUNT"); do local_pv "pv$i" "$NODE_NAME"; done
    for k in $(seq 2 "$NODES"); do
      for i in $(seq -w 1 "$NODE_PV_COUNT"); do local_pv "node$k-pv$i" "node$k"; done
    done
  } | "${KUBECTL[@]}" apply -f - >/dev/null
  minio_up
}

minio_up() {
  mkdir -p "$STATE/minio"
  MINIO_ROOT_USER=$MINIO_USER MINIO_ROOT_PASSWORD=$MINIO_PASSWORD MINIO_BROWSER=off \
    MINIO_UPDATE=off MINIO_CI_CD=1 start minio "$MINIO" server "$STATE/minio" --address "$MINIO_ADDR" --quiet
  wait_for "MinIO" 60 curl -sf "http://$MINIO_ADDR/minio/health/ready"
  # PUT on an existing bucket answers 409, which is fine: the bucket is there.
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" \
    --user "$MINIO_USER:$MINIO_PASSWORD" "http://$MINIO_ADDR/$MINIO_BUCKET")
  case $code in 200|409) ;; *) log "creating bucket $MINIO_BUCKET failed with HTTP $code"; return 1 ;; esac
}

# Released local PVs cannot be bound again; wipe them and make them Available for the next test.
pv_gc() {
  local pv path
  for pv in $("${KUBECTL[@]}" get pv -l ouroboros.dev/e2e=true \
      -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}'); do
    path=$("${KUBECTL[@]}" get pv "$pv" -o jsonpath='{.spec.local.path}')
    case $path in "$STATE"/pv/*) find "$path" -mindepth 1 -delete ;; *) continue ;; esac
    "${KUBECTL[@]}" patch pv "$pv" --type json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null
  done
}

# --- commands -----------------------------------------------------------------------------------------------

cmd_up() {
  local t0=$SECONDS
  # Processes die with the session that started them; their leftovers (mounts, shims, netns, a
  # half-written containerd state) are not worth trusting, so a dead control plane means a clean start.
  if [ -d "$RUN" ] && ! running kube-apiserver; then
    log "found state from a stopped cluster; cleaning it up first"
    cmd_down
  fi
  local recorded
  recorded=$(cat "$NODES_FILE" 2>/dev/null || echo 1)
  if [ -d "$RUN" ] && [ "$recorded" != "$REQUESTED_NODES" ]; then
    log "the running cluster has $recorded node(s), $REQUESTED_NODES wanted: rebuilding it"
    NODES=$recorded cmd_down
  elif [ -d "$RUN" ] && [ -f "$ETCD_SERVERS_FILE" ]; then
    # A self-hosted test moved the API server onto etcd in pods, for good: not what `up` makes.
    log "the running cluster's API server runs on self-hosted etcd: rebuilding it"
    NODES=$recorded cmd_down
  fi
  NODES=$REQUESTED_NODES
  mkdir -p "$RUN" "$LOGS" "$CONF"
  timed host-prereqs host_prereqs
  timed network network_up
  timed pki pki
  kubeconfig_for admin "$KUBECONFIG_ADMIN"
  kubeconfig_for controller-manager "$CONF/controller-manager.kubeconfig"
  kubeconfig_for scheduler "$CONF/scheduler.kubeconfig"
  kubeconfig_for kubelet-client "$CONF/kubelet.kubeconfig"
  kubeconfig_for kube-proxy "$CONF/kube-proxy.kubeconfig"
  kubeconfig_for coredns "$CONF/coredns.kubeconfig"
  [[ $NODES =~ ^[1-9]$ ]] || { log "NODES must be 1..9 (got $NODES)"; return 2; }
  echo "$NODES" > "$NODES_FILE"
  node_config
  local k
  for k in $(seq 2 "$NODES"); do node_extra_config "$k"; done
  timed control-plane control_plane_up
  timed node node_up
  log "node $NODE_NAME Ready $((SECONDS - t0))s after up started"
  for k in $(seq 2 "$NODES"); do timed "node$k" node_extra_up "$k"; done
  for k in $(seq 2 "$NODES"); do wait_for "node node$k Ready" 90 node_ready "node$k"; done
  [ "$NODES" -eq 1 ] || log "$NODES nodes Ready $((SECONDS - t0))s after up started"
  timed addons addons_up
  log "cluster up in $((SECONDS - t0))s; export KUBECONFIG=$KUBECONFIG_ADMIN"
}

# kill_all_containers [SOCK]: SIGKILL to every container of a containerd (default node1's).
kill_all_containers() {
  local t sock=${1:-$CONTAINERD_SOCK}
  for t in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr -a "$sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
}

# Kills every container again and says whether none runs any more.
no_container_runs() {
  kill_all_containers
  ! ctr -a "$CONTAINERD_SOCK" -n k8s.io tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"' | grep -q .
}

cmd_down() {
  local t0=$SECONDS
  if running kube-apiserver && running kubelet; then
    # Let the kubelet tear pods down properly (CNI DEL, volume unmounts) while it still can.
    # Bounded: after a self-hosted handover the API server stores its data in the pods being deleted.
    timeout 30 "${KUBECTL[@]}" delete pods --all -A --grace-period=0 --force --wait=false --request-timeout=20s >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while [ $SECONDS -lt $deadline ] && [ -n "$(ctr -a "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null)" ]; do sleep 1; done
  fi
  nodes_down
  for p in kube-proxy kubelet coredns minio kube-scheduler kube-controller-manager kube-apiserver cp-etcd; do stop "$p"; done
  if running containerd; then
    kill_all_containers
    stop containerd
  fi
  # Shims outlive containerd on purpose; ours are the ones using our socket's namespace root.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
  sleep 0.5
  # Unmount everything under the state dir, deepest first.
  if [ -d "$STATE" ]; then
    awk -v s="$STATE" '$2 ~ "^"s {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  awk '$2 ~ "^/run/netns/cni-" {print $2}' /proc/mounts | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -f /run/netns/cni-* 2>/dev/null || true
  # Pod processes whose shim died (a session that ended under them) keep running, reparented to
  # init: anything still in a /kubepods cgroup is ours and goes now, or the cgroups cannot be removed.
  local procs
  for procs in $(find /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods -name cgroup.procs 2>/dev/null); do
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$procs"
  done
  sleep 0.5
  # Pod cgroups (cgroupfs driver): remove leaf-first in every v1 hierarchy.
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  nodes_cgroups_down
  # kube-proxy's and the CNI plugins' iptables state.
  local table chain
  for table in filter nat mangle; do
    iptables -t "$table" -S 2>/dev/null | awk '/^-A / && / -j (KUBE-|CNI-)/' | sed 's/^-A/-D/' | while read -r rule; do
      eval iptables -t "$table" "$rule" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP 2>/dev/null || true
  iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  # Host veths of pods vanish with their netns; any left are ours by name prefix.
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | { grep '^veth' || true; } | while read -r v; do
    ip link del "$v" 2>/dev/null || true
  done
  # Keep built images' content store and PKI for a fast next `up`; drop cluster data.
  rm -rf "$STATE/cp-etcd" "$STATE/kubelet" "$STATE/pv" "$STATE/minio" "$STATE/cni-ipam" "$STATIC_PODS" "$CHECKPOINT_SECRETS" "$STATE/manifests" "$RUN" \
    "$ETCD_SERVERS_FILE" "$SELF_HOSTED_DATA" "$STATE/nodes" "$NODES_FILE"
  log "down in $((SECONDS - t0))s"
}

cmd_status() {
  local p ok=0
  local procs=(cp-etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns minio)
  # After a handover the boot etcd is gone for good.
  [ -f "$ETCD_SERVERS_FILE" ] && procs=("${procs[@]:1}")
  local k
  for k in $(seq 2 "$NODES"); do procs+=("containerd-node$k" "kubelet-node$k" "kube-proxy-node$k"); done
  for p in "${procs[@]}"; do
    if running "$p"; then echo "$p: running (pid $(cat "$RUN/$p.pid"))"; else echo "$p: stopped"; ok=1; fi
  done
  if [ $ok -eq 0 ]; then "${KUBECTL[@]}" get nodes -o wide; fi
  return $ok
}

cmd_env() {
  cat <<EOF
export KUBECONFIG=$KUBECONFIG_ADMIN
export OUROBOROS_STATE=$STATE
export OUROBOROS_K8S_BIN=$K8S_BIN
export OUROBOROS_ETCD_BIN=$ETCD_BIN
export OUROBOROS_ETCD_OLD_BIN=$OUROBOROS_CACHE/etcd/$ETCD_OLD_VERSION/bin
export OUROBOROS_ETCD_VERSION=$ETCD_VERSION
export OUROBOROS_ETCD_OLD_VERSION=$ETCD_OLD_VERSION
export OUROBOROS_MINIO_BIN=$MINIO
export OUROBOROS_S3_ENDPOINT=http://$MINIO_ADDR
export OUROBOROS_S3_BUCKET=$MINIO_BUCKET
export OUROBOROS_BOOT_ETCD=$BOOT_ETCD_CLIENT
export OUROBOROS_SELF_HOSTED_ETCD_VIP=$SELF_HOSTED_ETCD_VIP
export OUROBOROS_SELF_HOSTED_DATA=$SELF_HOSTED_DATA
export OUROBOROS_NODE_IP=$NODE_IP
export OUROBOROS_NODES=$NODES
# node1's; each node's are <root>/<node> (a node's kubelet runs the static pods of its own only).
export OUROBOROS_STATIC_POD_DIR=$STATIC_PODS/node1
export OUROBOROS_CHECKPOINT_SECRETS_DIR=$CHECKPOINT_SECRETS/node1
export OUROBOROS_STATIC_POD_ROOT=$STATIC_PODS
export OUROBOROS_CHECKPOINT_SECRETS_ROOT=$CHECKPOINT_SECRETS
export AWS_ACCESS_KEY_ID=$MINIO_USER
export AWS_SECRET_ACCESS_KEY=$MINIO_PASSWORD
# No test may reach a cloud metadata address: nothing of ours is there, and off a cloud VM it is
# traffic leaving the machine. The AWS SDK's IMDS client answers at once instead.
export AWS_EC2_METADATA_DISABLED=true
export PATH=$K8S_BIN:\$PATH
EOF
}

# use-etcd URLS: the last step of a self-hosted handover, as an installer does it: stop the boot etcd
# and restart the API server on the self-hosted members' client URLs (comma-separated).
cmd_use_etcd() {
  local urls=${1:?usage: $0 use-etcd URL[,URL...]}
  # The API server first: with the boot etcd gone it would hang in its graceful shutdown.
  stop kube-apiserver
  stop cp-etcd
  echo "$urls" > "$ETCD_SERVERS_FILE"
  apiserver_up
  log "kube-apiserver now runs on $urls"
}

# power-cycle: a power cut of the (one-node) control plane, short of the host's own network set-up:
# the kubelet, every container and the control-plane processes die at once (SIGKILL); then they start
# as a booting node starts them, the kubelet first and then the API server (static pods on a real
# node). Nothing may ask an API server for help: after a handover its etcd runs in those containers.
cmd_power_cycle() {
  local t0=$SECONDS
  power_cut
  kubelet_start
  apiserver_until_up
  wait_for "node $NODE_NAME Ready" 120 node_ready
  log "power-cycle: API server ready and node Ready $((SECONDS - t0))s after the cut"
}

# On a real node the API server is a static pod as well, and the kubelet restarts it until its etcd
# answers: kube-apiserver gives up by itself when etcd does not answer within about 20 s.
apiserver_until_up() {
  local deadline=$((SECONDS + 240)) tries=1
  until apiserver_up; do
    [ $SECONDS -lt $deadline ] || { log "kube-apiserver did not come back in 240s ($tries starts)"; return 1; }
    stop kube-apiserver
    tries=$((tries + 1))
    sleep 2
  done
  log "kube-apiserver ready after $tries start(s)"
}

# power-cycle-all: a power loss of every node (the whole site): the added nodes go down as node-stop
# takes them and node1 as power-cycle does, all within a few seconds; then every node boots, each
# kubelet starting the static pods of its own directory with no API server to ask, and the API
# server is started until its etcd answers.
cmd_power_cycle_all() {
  local t0=$SECONDS k
  for k in $(seq 2 "$NODES"); do cmd_node_stop "node$k"; done
  power_cut
  for k in $(seq 2 "$NODES"); do
    ip link set "ouro-v$k" up
    node_extra_up "$k"
  done
  kubelet_start
  apiserver_until_up
  wait_for "node $NODE_NAME Ready" 120 node_ready
  for k in $(seq 2 "$NODES"); do wait_for "node node$k Ready" 120 node_ready "node$k"; done
  log "power-cycle-all: API server ready and $NODES nodes Ready $((SECONDS - t0))s after the cut"
}

# control-plane NODE...: makes nodes control-plane nodes as kubeadm does: the node-role label and the
# NoSchedule taint (pods that do not tolerate it stay off; running ones stay).
cmd_control_plane() {
  [ $# -gt 0 ] || { echo "usage: $0 control-plane NODE..." >&2; return 2; }
  local n
  for n in "$@"; do
    "${KUBECTL[@]}" label node "$n" node-role.kubernetes.io/control-plane= --overwrite >/dev/null
    "${KUBECTL[@]}" taint node "$n" node-role.kubernetes.io/control-plane:NoSchedule --overwrite >/dev/null
  done
  log "control-plane nodes (labelled and tainted): $*"
}

# power-cut-losing PATH...: a power cut in which the given paths are lost for good (members' data
# directories and their static-pod checkpoints, say); the node boots again with only its kubelet. The
# API server is left down: with its etcd's quorum gone, bringing it back is the runbook's job.
cmd_power_cut_losing() {
  [ $# -gt 0 ] || { echo "usage: $0 power-cut-losing PATH..." >&2; return 2; }
  power_cut
  rm -rf "$@"
  log "lost for good: $*"
  kubelet_start
  log "power-cut-losing: the kubelet runs again; the API server stays down"
}

# boot-etcd-restore SNAPSHOT: after the whole control plane is lost, what an installer does on a new
# control-plane node: the boot etcd is restored from SNAPSHOT (a verified backup) with its revisions
# bumped and marked compacted, and a temporary API server, controller manager and scheduler start on it.
cmd_boot_etcd_restore() {
  local snapshot=${1:?usage: $0 boot-etcd-restore SNAPSHOT_DB}
  stop kube-apiserver
  stop cp-etcd
  rm -rf "$STATE/cp-etcd"
  "$ETCD_BIN/etcdutl" snapshot restore "$snapshot" --data-dir "$STATE/cp-etcd" --name cp \
    --initial-cluster "cp=$CP_ETCD_PEER" --initial-advertise-peer-urls "$CP_ETCD_PEER" \
    --bump-revision 1000000000 --mark-compacted >"$LOGS/etcdutl-restore.log" 2>&1 ||
    { cat "$LOGS/etcdutl-restore.log" >&2; return 1; }
  boot_etcd_up
  # As at installation: the boot etcd and the client Service IP the handover gives the members, so
  # the API server keeps its storage when the handover removes the boot member.
  rm -f "$ETCD_SERVERS_FILE"
  apiserver_up
  log "kube-apiserver runs on the boot etcd restored from $snapshot"
}

power_cut() {
  local p pids=() procs=(kubelet kube-apiserver kube-controller-manager kube-scheduler)
  for p in "${procs[@]}"; do
    running "$p" && pids+=("$(cat "$RUN/$p.pid")")
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  kill_all_containers
  wait_for "the killed processes to be gone" 30 bash -c "for p in ${pids[*]}; do kill -0 \$p 2>/dev/null && exit 1; done; exit 0"
  # A container the kubelet was starting when it died is started by containerd after the first
  # kill (seen: a power cut 30 s after a power cycle timed out here); a power loss takes it too.
  wait_for "every container to stop" 30 no_container_runs ||
    { ctr -a "$CONTAINERD_SOCK" -n k8s.io tasks ls >&2; return 1; }
  for p in "${procs[@]}"; do rm -f "$RUN/$p.pid" "$RUN/$p.start"; done
  log "power cut: kubelet, control plane and every container killed"
}

case "${1:-}" in
  up) cmd_up ;;
  power-cycle) cmd_power_cycle ;;
  power-cycle-all) cmd_power_cycle_all ;;
  control-plane) shift; cmd_control_plane "$@" ;;
  power-cut-losing) shift; cmd_power_cut_losing "$@" ;;
  boot-etcd-restore) cmd_boot_etcd_restore "${2:-}" ;;
  use-etcd) cmd_use_etcd "${2:-}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubeconfig) echo "$KUBECONFIG_ADMIN" ;;
  env) cmd_env ;;
  pv-gc) pv_gc ;;
  node-stop) cmd_node_stop "${2:-}" ;;
  node-start) cmd_node_start "${2:-}" ;;
  partition) cmd_partition "${2:-}" ;;
  heal) cmd_heal "${2:-}" ;;
  node-sock) if [ "${2:-}" = node1 ]; then echo "$CONTAINERD_SOCK"; else k=$(node_index "${2:-}") && nsock "$k"; fi ;;
  *) echo "usage: $0 up|down|status|kubeconfig|env|pv-gc|use-etcd URLS|power-cycle|power-cycle-all|control-plane NODE...|node-stop NODE|node-start NODE|partition NODE|heal NODE|node-sock NODE" >&2; exit 2 ;;
esac
