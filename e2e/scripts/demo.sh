#!/usr/bin/env bash
# The demo: on the local cluster with the operator deployed (make deploy did that), create the sample
# EtcdCluster and show what the operator reports about it.
source "$(dirname "$0")/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
NS=ouroboros-demo
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
sed "s/namespace: default/namespace: $NS/" "$REPO_ROOT/deploy/samples/etcdcluster.yaml" | kubectl apply -f -

echo
echo "== nodes"; kubectl get nodes -o wide
echo; echo "== the operator"; kubectl -n ouroboros-system get deploy,pods -o wide
echo; echo "== EtcdClusters"; kubectl -n "$NS" get etcdclusters
echo; echo "== what the operator logged about it"
sleep 2
kubectl -n ouroboros-system logs deploy/etcd-operator --tail=200 | grep -E "EtcdCluster|watch synced|CRD established" | tail -8
cat <<MSG

The operator is deployed and watching; it does not manage members yet (the lifecycle issue is open),
so the EtcdCluster above has no status. Try:
  source <(e2e/cluster.sh env)
  kubectl explain etcdcluster.spec
  kubectl apply --dry-run=server -f deploy/samples/invalid/size-zero.yaml   # refused by the schema
  make cluster-down                                                        # remove everything
MSG
