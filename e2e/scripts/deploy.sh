#!/usr/bin/env bash
# Deploys the operator from deploy/ onto the local cluster and waits until it is Ready. Re-running it
# after a rebuild rolls the Deployment so the new image (same tag) is picked up.
source "$(dirname "$0")/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
kubectl apply -k "$REPO_ROOT/deploy" >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
# A fresh image under the same tag needs new pods; the annotation records which build runs.
digest=$(sha256sum "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/etcd-operator" | cut -c1-16)
kubectl -n ouroboros-system patch deployment etcd-operator --type merge \
  -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"ouroboros.dev/build\":\"$digest\"}}}}}" >/dev/null
if ! kubectl -n ouroboros-system rollout status deployment/etcd-operator --timeout=120s; then
  kubectl -n ouroboros-system describe pods -l app.kubernetes.io/name=etcd-operator | tail -30
  kubectl -n ouroboros-system logs -l app.kubernetes.io/name=etcd-operator --tail=50 || true
  exit 1
fi
