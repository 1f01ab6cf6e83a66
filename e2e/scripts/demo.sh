#!/usr/bin/env bash
# The demo: on the local cluster with the operator deployed (make deploy did that), create the sample
# EtcdCluster and show what the operator reports about it.
source "$(dirname "$0")/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
NS=ouroboros-demo
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
sed "s/namespace: default/namespace: $NS/" "$REPO_ROOT/deploy/samples/etcdcluster.yaml" | kubectl apply -f -

echo; echo "== waiting for the cluster to grow from its seed to 3 members (seed, then one learner at a time)"
kubectl -n "$NS" wait etcd/example --for=jsonpath='{.status.phase}'=Running --timeout=180s
kubectl -n "$NS" wait etcd/example --for=jsonpath='{.status.readyMembers}'=3 --timeout=180s

echo; echo "== nodes"; kubectl get nodes -o wide
echo; echo "== the operator (two replicas, one holds the Lease)"
kubectl -n ouroboros-system get deploy,pods -o wide
echo "leader: $(kubectl -n ouroboros-system get lease ouroboros-etcd-operator -o jsonpath='{.spec.holderIdentity}')"
echo; echo "== the EtcdCluster"; kubectl -n "$NS" get etcdclusters,pods,pvc,svc,pdb
echo; echo "== its members and conditions"
kubectl -n "$NS" get etcd example -o jsonpath='{range .status.members[*]}{.name}  id={.id}  leader={.isLeader}  learner={.isLearner}  healthy={.healthy}  version={.version}{"\n"}{end}'
kubectl -n "$NS" get etcd example -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo; echo "== what etcd itself says"
ip=$(kubectl -n "$NS" get pod example-0 -o jsonpath='{.status.podIP}')
"$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$ip:2379" member list -w table
"$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$ip:2379" put demo-key "hello from the demo" >/dev/null
echo "read back: $("$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$ip:2379" get demo-key --print-value-only)"
echo; echo "== Events"; kubectl -n "$NS" get events --field-selector involvedObject.kind=EtcdCluster --sort-by=.lastTimestamp | tail -8

echo; echo "== an on-demand backup to the local MinIO"
kubectl -n "$NS" create secret generic minio-credentials --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
backup="demo-$(date +%s)"
cat <<YAML | kubectl apply -f -
apiVersion: etcd.ouroboros.dev/v1alpha1
kind: EtcdBackup
metadata: {name: $backup, namespace: $NS}
spec:
  clusterName: example
  destination:
    s3: {bucket: $OUROBOROS_S3_BUCKET, prefix: demo/, endpoint: "$OUROBOROS_S3_ENDPOINT", forcePathStyle: true, credentialsSecret: minio-credentials}
YAML
kubectl -n "$NS" wait "etcdbackup/$backup" --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s
kubectl -n "$NS" get etcdbackups
kubectl -n "$NS" get "etcdbackup/$backup" -o jsonpath='location={.status.location}{"\n"}member={.status.member} revision={.status.revision} sha256={.status.sha256}{"\n"}'
echo "lastSuccessfulBackup: $(kubectl -n "$NS" get etcd example -o jsonpath='{.status.lastSuccessfulBackup.name} at revision {.status.lastSuccessfulBackup.revision}')"

echo; echo "== a restore: a key written after the backup, then the cluster rebuilt from the backup"
member_ip() { kubectl -n "$NS" get pod "$(kubectl -n "$NS" get etcd example -o jsonpath='{.status.members[0].name}')" -o jsonpath='{.status.podIP}'; }
"$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$(member_ip):2379" put demo-after-backup "not in the backup" >/dev/null
restore="restore-$(date +%s)"
cat <<YAML | kubectl apply -f -
apiVersion: etcd.ouroboros.dev/v1alpha1
kind: EtcdRestore
metadata: {name: $restore, namespace: $NS}
spec: {clusterName: example, source: {backupName: $backup}}
YAML
kubectl -n "$NS" wait "etcdrestore/$restore" --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s
kubectl -n "$NS" wait etcd/example --for=jsonpath='{.status.readyMembers}'=3 --timeout=180s
kubectl -n "$NS" get etcdrestores
kubectl -n "$NS" get events --field-selector involvedObject.kind=EtcdRestore --sort-by=.lastTimestamp | tail -6
echo "restoredFrom: $(kubectl -n "$NS" get etcd example -o jsonpath='{.status.restoredFrom.name} at revision {.status.restoredFrom.revision}')"
ip=$(member_ip)
"$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$ip:2379" member list -w table
echo "demo-key (written before the backup): $("$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$ip:2379" get demo-key --print-value-only)"
echo "demo-after-backup (written after it): '$("$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$ip:2379" get demo-after-backup --print-value-only)' (gone, as it should be)"
echo "revision now: $("$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "http://$ip:2379" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])') (bumped past every revision seen before)"
cat <<MSG

Try:
  source <(e2e/cluster.sh env)
  kubectl -n $NS patch etcd example --type merge -p '{"spec":{"size":5}}'   # grow to 5, one learner at a time
  kubectl -n $NS delete pod example-4                                     # it comes back on its own claim
  kubectl apply --dry-run=server -f deploy/samples/invalid/size-zero.yaml   # refused by the schema
  make cluster-down                                                         # remove everything
  kubectl -n $NS patch etcd example --type merge -p '{"spec":{"backup":{"schedule":"* * * * *","retention":{"maxCount":3}}}}'
                                                                            # a backup every minute, three kept
MSG
