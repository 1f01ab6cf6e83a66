#!/usr/bin/env bash
# Restore benchmark (issue: disaster recovery), in one run on the local cluster with the operator
# deployed (make deploy):
#   1. an EtcdCluster is filled to MIB (default 1024) MiB and backed up to MinIO by an EtcdBackup;
#   2. by hand, on this host, the steps a user would take: download the archive (curl, SigV4), unpack
#      it, `etcdutl snapshot restore`, start one etcd member and wait until it answers;
#   3. the operator: the cluster is deleted and an EtcdRestore with a 3-member template restores the
#      same backup; timed from its creation to the seed answering (phase Growing) and to Succeeded
#      (an Available cluster of 3 voters).
# Prints a Markdown table for docs/benchmarks.md.
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
MIB=${MIB:-1024}
NS=bench-restore
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /var/tmp/ouroboros-bench-restore.XXXXXX)
K=(kubectl -n "$NS")
now_ms() { date +%s%3N; }
etcd_pid=
cleanup() {
  # set -e holds in a trap too: a failed kill here would skip the rest.
  if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
  # Its claims' data (local PVs are retained) and the archives are gigabytes each.
  kubectl delete ns "$NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  "$REPO_ROOT/e2e/cluster.sh" pv-gc || true
  s3_delete_prefix bench-restore/ || true
}
trap cleanup EXIT
# A killed benchmark cleans up too: bash runs no EXIT trap on a signal it does not trap.
trap "exit 130" INT TERM

wait_jsonpath() { # KIND/NAME JSONPATH WANT SECONDS
  local deadline=$((SECONDS + $4))
  until [ "$("${K[@]}" get "$1" -o jsonpath="$2" 2>/dev/null)" = "$3" ]; do
    [ $SECONDS -lt $deadline ] || { log "timed out waiting for $1 $2=$3"; "${K[@]}" get "$1" -o yaml >&2; exit 1; }
    sleep 0.2
  done
}

kubectl delete ns "$NS" --wait=true >/dev/null 2>&1 || true
kubectl create ns "$NS" >/dev/null
"${K[@]}" create secret generic minio --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" >/dev/null
spec() { # SIZE
  cat <<EOF
size: $1
pod: {antiAffinity: None}
storage: {persistentVolumeClaim: {size: 4Gi}}
backup:
  schedule: '0 0 1 1 *'
  destination: {s3: {bucket: $OUROBOROS_S3_BUCKET, prefix: bench-restore/, endpoint: '$OUROBOROS_S3_ENDPOINT', forcePathStyle: true, credentialsSecret: minio}}
EOF
}
{ printf 'apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdCluster\nmetadata: {name: rb}\nspec:\n'; spec 1 | sed 's/^/  /'; } |
  "${K[@]}" apply -f - >/dev/null
wait_jsonpath etcd/rb '{.status.phase}' Running 180
ip=$("${K[@]}" get svc rb-client -o jsonpath='{.spec.clusterIP}')
wait_etcd_answers "$ip:2379" rb-client
log "filling rb with $MIB MiB"
"$BIN/etcd-fill" "http://$ip:2379" "$MIB"
printf 'apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdBackup\nmetadata: {name: b}\nspec: {clusterName: rb}\n' | "${K[@]}" apply -f - >/dev/null
wait_jsonpath etcdbackup/b '{.status.phase}' Succeeded 600
location=$("${K[@]}" get etcdbackup b -o jsonpath='{.status.location}')
raw=$("${K[@]}" get etcdbackup b -o jsonpath='{.status.rawSize}')
log "backup: $location ($((raw >> 20)) MiB raw)"

# --- by hand ---------------------------------------------------------------------------------------
key=${location#s3://}
t0=$(now_ms)
curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
  -o "$WORK/archive.tar.gz" "$OUROBOROS_S3_ENDPOINT/$key"
t_download=$(now_ms)
tar -xzf "$WORK/archive.tar.gz" -C "$WORK" snapshot.db
t_unpack=$(now_ms)
"$OUROBOROS_ETCD_BIN/etcdutl" snapshot restore "$WORK/snapshot.db" --data-dir "$WORK/data" --name manual \
  --initial-cluster manual=http://127.0.0.1:42380 --initial-advertise-peer-urls http://127.0.0.1:42380 \
  --bump-revision 1000000000 --mark-compacted >/dev/null 2>&1
t_restore=$(now_ms)
"$OUROBOROS_ETCD_BIN/etcd" --name manual --data-dir "$WORK/data" \
  --listen-client-urls http://127.0.0.1:42379 --advertise-client-urls http://127.0.0.1:42379 \
  --listen-peer-urls http://127.0.0.1:42380 --log-level error >"$WORK/etcd.log" 2>&1 &
etcd_pid=$!
until "$OUROBOROS_ETCD_BIN/etcdctl" --endpoints 127.0.0.1:42379 endpoint health >/dev/null 2>&1; do sleep 0.05; done
t_manual=$(now_ms)
kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true; etcd_pid=
rm -rf "$WORK/data" "$WORK/snapshot.db" "$WORK/archive.tar.gz"
manual=$((t_manual - t0))
log "by hand: ${manual} ms (download $((t_download - t0)), unpack $((t_unpack - t_download)), etcdutl $((t_restore - t_unpack)), start $((t_manual - t_restore)))"

# --- the operator ------------------------------------------------------------------------------------
"${K[@]}" delete etcd rb --wait=true >/dev/null
"${K[@]}" delete pvc --all --wait=true >/dev/null
{ printf 'apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {name: r}\nspec:\n  clusterName: rb\n  source: {backupName: b}\n  clusterTemplate:\n'; spec 3 | sed 's/^/    /'; } > "$WORK/restore.yaml"
t0=$(now_ms)
"${K[@]}" apply -f "$WORK/restore.yaml" >/dev/null
wait_jsonpath etcdrestore/r '{.status.phase}' Restoring 900
t_verified=$(now_ms)
"${K[@]}" get pods -l job-name -o json > "$WORK/fetch-pods.json"
wait_jsonpath etcdrestore/r '{.status.phase}' Growing 900
t_seed=$(now_ms)
"${K[@]}" get pods -l etcd.ouroboros.dev/cluster=rb -o json > "$WORK/seed-pods.json"
wait_jsonpath etcdrestore/r '{.status.phase}' Succeeded 1800
t_done=$(now_ms)
seed=$((t_seed - t0)); done_=$((t_done - t0))
log "operator: verified $((t_verified - t0)) ms, seed answering ${seed} ms, 3 voters ${done_} ms"

# Where the operator's time went: each pod's own timestamps (seconds, relative to the EtcdRestore's
# creation), so a change to one step shows up in the step.
created=$("${K[@]}" get etcdrestore r -o jsonpath='{.metadata.creationTimestamp}')
"${K[@]}" get events.events.k8s.io -o json > "$WORK/events.json"
python3 - "$created" "$WORK/events.json" <<'PY' >&2
import json, sys
from datetime import datetime
def t(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
t0 = t(sys.argv[1])
marks = [(t(e["eventTime"]), e["regarding"]["kind"], e["reason"], e.get("note", ""))
         for e in json.load(open(sys.argv[2]))["items"]
         if e.get("eventTime") and e["regarding"]["kind"] in ("EtcdCluster", "EtcdRestore")]
for at, kind, reason, note in sorted(marks):
    if at >= t0: print(f"{at - t0:6.1f}s {kind} {reason}: {note[:90]}")
PY
python3 - "$created" "$WORK/fetch-pods.json" "$WORK/seed-pods.json" <<'PY' >&2
import json, sys
from datetime import datetime
def t(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
t0 = t(sys.argv[1])
for f in sys.argv[2:]:
    for p in json.load(open(f))["items"]:
        st = p.get("status", {})
        marks = [("created", p["metadata"]["creationTimestamp"])]
        marks += [(c["type"], c["lastTransitionTime"]) for c in st.get("conditions", []) if c["status"] == "True"]
        for kind in ("initContainerStatuses", "containerStatuses"):
            for c in st.get(kind, []):
                for state in ("running", "terminated"):
                    s = c.get("state", {}).get(state) or c.get("lastState", {}).get(state) or {}
                    if "startedAt" in s: marks.append((c["name"] + " started", s["startedAt"]))
                    if "finishedAt" in s: marks.append((c["name"] + " finished", s["finishedAt"]))
        marks.sort(key=lambda m: t(m[1]))
        print(p["metadata"]["name"] + ": " + ", ".join(f"{n} {t(v) - t0:.0f}s" for n, v in marks))
PY

ratio() { awk "BEGIN {printf \"%.2f\", $1/$2}"; }
echo
echo "| Snapshot | by hand: download + unpack + etcdutl + start 1 member | EtcdRestore: archive verified | seed member answering | 3-member cluster Available | seed / by hand | Available / by hand |"
echo "|---|---|---|---|---|---|---|"
echo "| $((raw >> 20)) MiB | ${manual} ms | $((t_verified - t0)) ms | ${seed} ms | ${done_} ms | $(ratio "$seed" "$manual") | $(ratio "$done_" "$manual") |"
