#!/usr/bin/env bash
# Deploys the operator from deploy/ onto the local cluster and waits until it is Ready. Re-running it
# after a rebuild rolls the Deployment so the new image (same tag) is picked up.
#
#   deploy.sh               deploy/ (what `make deploy` runs)
#   deploy.sh self-hosted   deploy/self-hosted: also the member checkpointer, pointed at this local
#                           cluster's kubelet static-pod directories instead of /etc/kubernetes/manifests
#                           (the nodes share one file system, so each node's directories are
#                           <root>/<node>: the checkpointer's own node, from NODE_NAME)
source "$(dirname "$0")/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
# A fresh image under the same tag needs new pods; the annotation records which build runs.
digest=$(sha256sum "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/etcd-operator" | cut -c1-16)
build_patch="{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"ouroboros.dev/build\":\"$digest\"}}}}}"

case "${1:-}" in
  "") kubectl apply -k "$REPO_ROOT/deploy" >/dev/null ;;
  self-hosted)
    kubectl kustomize "$REPO_ROOT/deploy/self-hosted" |
      sed -e "s#value: /etc/kubernetes/manifests#value: $OUROBOROS_STATIC_POD_ROOT/\$(NODE_NAME)#" \
        -e "s#value: /var/lib/ouroboros/checkpoint-secrets#value: $OUROBOROS_CHECKPOINT_SECRETS_ROOT/\$(NODE_NAME)#" \
        -e "s#/etc/kubernetes/manifests#$OUROBOROS_STATIC_POD_ROOT#g" \
        -e "s#/var/lib/ouroboros/checkpoint-secrets#$OUROBOROS_CHECKPOINT_SECRETS_ROOT#g" |
      kubectl apply -f - >/dev/null
    kubectl -n ouroboros-system patch daemonset etcd-checkpointer --type merge -p "$build_patch" >/dev/null
    ;;
  *) echo "usage: $0 [self-hosted]" >&2; exit 2 ;;
esac
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl -n ouroboros-system patch deployment etcd-operator --type merge -p "$build_patch" >/dev/null
if ! kubectl -n ouroboros-system rollout status deployment/etcd-operator --timeout=120s; then
  kubectl -n ouroboros-system describe pods -l app.kubernetes.io/name=etcd-operator | tail -30
  kubectl -n ouroboros-system logs -l app.kubernetes.io/name=etcd-operator --tail=50 || true
  exit 1
fi
if [ "${1:-}" = self-hosted ] && ! kubectl -n ouroboros-system rollout status daemonset/etcd-checkpointer --timeout=120s; then
  kubectl -n ouroboros-system describe pods -l app.kubernetes.io/name=etcd-checkpointer | tail -30
  exit 1
fi
