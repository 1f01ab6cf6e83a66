#!/usr/bin/env bash
# The Helm chart on the local cluster, as a user installs it (#24): `helm install` into a namespace of
# its own, an EtcdCluster becoming Available, `helm upgrade` with a changed value rolling the operator
# while the members keep running untouched, the EtcdCluster deleted, `helm uninstall` removing the
# operator and its RBAC and leaving the CRDs. Runs on a cluster without the kustomize install (make
# test runs it after `lifecycle` brought the cluster back up empty); it leaves only the CRDs behind,
# which a later `kubectl apply -k deploy` adopts.
source "$(dirname "$0")/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)

CHART="$REPO_ROOT/deploy/helm/ouroboros"
HELM="$OUROBOROS_CACHE/tools/helm/$HELM_VERSION/helm"
NS=ouroboros-helm
APP=etcd-helm
[ -x "$HELM" ] || { log "missing $HELM: run e2e/scripts/build-all.sh"; exit 1; }
tmp="$(mktemp -d)"
export HELM_CACHE_HOME="$tmp/cache" HELM_CONFIG_HOME="$tmp/config" HELM_DATA_HOME="$tmp/data"

if [ -n "$(kubectl get deployment -A -l app.kubernetes.io/name=etcd-operator -o name 2>/dev/null)" ]; then
  log "an operator is already installed (kubectl get deploy -A -l app.kubernetes.io/name=etcd-operator);"
  log "the Helm tier needs a cluster without one: two operators would both reconcile every cluster"
  exit 2
fi

dump() {
  kubectl -n "$NS" get pods -o wide || true
  kubectl -n "$NS" describe etcd "$APP" | tail -30 || true
  kubectl -n "$NS" logs deploy/etcd-operator --tail=40 || true
}
trap 'rc=$?; [ $rc = 0 ] || dump; rm -rf "$tmp"; exit $rc' EXIT

# Leader election's Lease and the sidecar CA live in the release namespace (POD_NAMESPACE).
log "helm install"
"$HELM" install ouroboros "$CHART" --namespace "$NS" --create-namespace --wait --timeout 3m >/dev/null
kubectl -n "$NS" rollout status deployment/etcd-operator --timeout=120s >/dev/null

kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: etcd.ouroboros.dev/v1alpha1
kind: EtcdCluster
metadata: {name: $APP}
spec: {size: 3, pod: {antiAffinity: None}}
EOF
# Available comes with the seed's quorum of one; three ready voters is the whole cluster.
kubectl -n "$NS" wait --for=jsonpath='{.status.readyMembers}'=3 "etcd/$APP" --timeout=240s >/dev/null
kubectl -n "$NS" wait --for=condition=Available "etcd/$APP" --timeout=60s >/dev/null
members() { kubectl -n "$NS" get pods -l "etcd.ouroboros.dev/cluster=$APP" -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}' | sort; }
before="$(members)"
[ "$(echo "$before" | wc -l)" = 3 ] || { log "expected 3 member pods, found: $before"; exit 1; }
log "EtcdCluster $APP Available with 3 members under the chart's operator"

log "helm upgrade (logFormat text)"
old_rs="$(kubectl -n "$NS" get deployment etcd-operator -o jsonpath='{.metadata.generation}')"
"$HELM" upgrade ouroboros "$CHART" --namespace "$NS" --reuse-values --set logFormat=text --wait --timeout 3m >/dev/null
kubectl -n "$NS" rollout status deployment/etcd-operator --timeout=120s >/dev/null
new_rs="$(kubectl -n "$NS" get deployment etcd-operator -o jsonpath='{.metadata.generation}')"
args="$(kubectl -n "$NS" get deployment etcd-operator -o jsonpath='{.spec.template.spec.containers[0].args}')"
[ "$new_rs" -gt "$old_rs" ] && [[ "$args" == *'--log-format=text'* ]] ||
  { log "the upgrade did not reach the Deployment (generation $old_rs -> $new_rs, args $args)"; exit 1; }
# The new operator adopts the running members: same pods, still Available after it reconciled.
sleep 10
kubectl -n "$NS" wait --for=condition=Available "etcd/$APP" --timeout=120s >/dev/null
after="$(members)"
[ "$after" = "$before" ] || { log "member pods changed across the operator upgrade: $before -> $after"; exit 1; }
log "upgraded; the members kept running (same pods) and the cluster stayed Available"

log "EtcdCluster deleted, then helm uninstall"
kubectl -n "$NS" delete etcd "$APP" --wait --timeout=120s >/dev/null
"$HELM" uninstall ouroboros --namespace "$NS" --wait --timeout 2m >/dev/null
left="$(kubectl get clusterrole,clusterrolebinding -o name | grep -F 'ouroboros:etcd-operator' || true)
$(kubectl -n "$NS" get deployment,serviceaccount -o name 2>/dev/null | grep etcd-operator || true)"
[ -z "$(echo "$left" | tr -d '[:space:]')" ] || { log "left behind by helm uninstall: $left"; exit 1; }
for crd in etcdclusters etcdbackups etcdrestores; do
  kubectl get crd "$crd.etcd.ouroboros.dev" >/dev/null ||
    { log "helm uninstall removed CRD $crd: every EtcdCluster would go with it"; exit 1; }
done
kubectl delete namespace "$NS" --wait --timeout=120s >/dev/null
log "helm uninstall removed the operator and its RBAC and kept the three CRDs"
