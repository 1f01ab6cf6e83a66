#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl from the
# published k8s.io/kubernetes module. k/k's go.mod replaces its staging modules with local paths, so `go install`
# refuses it; a wrapper module replaces each with its published tag instead.
source "$(dirname "$0")/lib.sh"
V=$K8S_VERSION; M=0.${V#1.}; MINOR=$(echo "$V" | cut -d. -f2)
W="$OUROBOROS_CACHE/k8s/$V"; BIN="$W/bin"
P=k8s.io/kubernetes/cmd
CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)

built() {
  for c in "${CMDS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
  "$BIN/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes v$V"
}

build() {
  if built; then log "kubernetes v$V already built in $BIN"; return; fi
  mkdir -p "$W" && cd "$W"
  [ -f go.mod ] || go mod init local/k8sbins >/dev/null 2>&1
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client
    cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
    kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils
    pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming)
  for m in "${staging[@]}"; do go mod edit -replace="k8s.io/$m=k8s.io/$m@v$M"; done
  go mod edit -godebug=default=go1.26
  local tools=(); for c in "${CMDS[@]}"; do tools+=("$P/$c@v$V"); done
  timed k8s-download go get -tool "${tools[@]}"
  local ldf="-s -w"
  for kv in gitVersion=v$V gitMajor=1 gitMinor=$MINOR gitTreeState=clean gitCommit=v$V; do
    ldf="$ldf -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  mkdir -p "$BIN"
  local pkgs=(); for c in "${CMDS[@]}"; do pkgs+=("$P/$c"); done
  CGO_ENABLED=0 timed k8s-compile go build -p "$(nproc)" -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags "$ldf" -o "$BIN/" "${pkgs[@]}"
  built
}

with_lock "$OUROBOROS_CACHE/k8s.lock" build
echo "$BIN"
