#!/usr/bin/env bash
# Restore benchmark (issue: disaster recovery), like against like, in one run on the local cluster
# with the operator deployed (make deploy):
#   1. an EtcdCluster is filled to MIB (default 1024) MiB and backed up to MinIO by an EtcdBackup;
#   2. by hand, 3 members, as etcd's disaster-recovery procedure does it, the strongest a user could
#      do on one host: download the archive once (curl, SigV4), unpack it, verify the snapshot
#      against the manifest's sha256, `etcdutl snapshot restore` for m0, m1 and m2 in parallel (one
#      --initial-cluster of three loopback peers, one token), start the three etcd processes and wait
#      until `endpoint health` passes on all three;
#   3. by hand, 1 member (the earlier comparison): download, unpack, `etcdutl snapshot restore`, one
#      etcd answering;
#   4. the operator, 3 members: the cluster and its claims are deleted and an EtcdRestore with a
#      3-member template restores the same backup (all three members from the snapshot in parallel:
#      Verifying, Restoring, Growing once every restored member is Ready, Succeeded), timed from its
#      creation to Succeeded, with where the time went (Events and each pod's own timestamps);
#   5. the operator, 1 member: that cluster and its claims are deleted and EtcdRestore r1 with a
#      `size: 1` template restores it again, timed to Succeeded.
# Prints a Markdown table for docs/benchmarks.md and appends rows (manual-3, operator-3, manual-1,
# operator-1) to $RESULTS/restore.csv (RESULTS defaults to docs/bench; `make bench-chart` draws it).
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
MIB=${MIB:-1024}
RESULTS=${RESULTS:-$REPO_ROOT/docs/bench}
NS=bench-restore
BIN=$CARGO_TARGET_DIR/release
ETCD=$OUROBOROS_ETCD_BIN
WORK=$(mktemp -d /var/tmp/ouroboros-bench-restore.XXXXXX)
RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
K=(kubectl -n "$NS")
now_ms() { date +%s%3N; }
pids=()
cleanup() {
  # set -e holds in a trap too: a failed kill here would skip the rest.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
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

# wait_phase NAME PHASE SECONDS: until EtcdRestore NAME is in PHASE or a later one, so a phase
# shorter than a poll (Growing of a cluster whose members all restored at once) is not waited for in
# vain; fails at once on Failed.
PHASES=(Pending Verifying Restoring Growing Succeeded)
wait_phase() {
  local deadline=$((SECONDS + $3)) want=0 have i
  for i in "${!PHASES[@]}"; do [ "${PHASES[$i]}" != "$2" ] || want=$i; done
  while :; do
    have=$("${K[@]}" get "etcdrestore/$1" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    [ "$have" != Failed ] || { log "EtcdRestore $1 failed"; "${K[@]}" get "etcdrestore/$1" -o yaml >&2; exit 1; }
    for i in "${!PHASES[@]}"; do
      if [ "${PHASES[$i]}" = "$have" ] && [ "$i" -ge "$want" ]; then return 0; fi
    done
    [ $SECONDS -lt $deadline ] || { log "timed out waiting for EtcdRestore $1 to reach $2 (phase: ${have:-none})"; "${K[@]}" get "etcdrestore/$1" -o yaml >&2; exit 1; }
    sleep 0.2
  done
}

# The by-hand members' loopback ports, in defrag.sh's scheme on a base of their own.
peer() { echo "http://127.0.0.1:$((42380 + 10 * $1))"; }
client() { echo "http://127.0.0.1:$((42379 + 10 * $1))"; }

# wait_healthy ENDPOINTS: until `etcdctl endpoint health` passes on every one (300 s at most).
wait_healthy() {
  local deadline=$((SECONDS + 300))
  until "$ETCD/etcdctl" --endpoints "$1" endpoint health >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "etcd at $1 not healthy"; tail -n 20 "$WORK"/m*.log >&2; exit 1; }
    sleep 0.05
  done
}

# stop_members: stops the by-hand etcd processes and removes their data.
stop_members() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  rm -rf "$WORK"/m? "$WORK"/m?.log "$WORK/snapshot.db" "$WORK/manifest.json" "$WORK/archive"
}

download() { # KEY: the archive, as a user would fetch it
  curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -o "$WORK/archive" "$OUROBOROS_S3_ENDPOINT/$1"
}

unpack() { # ENTRY...: from the archive, by its codec (the name says which)
  case $key in
    *.tar.zst) tar --zstd -xf "$WORK/archive" -C "$WORK" "$@" ;;
    *) tar -xzf "$WORK/archive" -C "$WORK" "$@" ;;
  esac
}

kubectl delete ns "$NS" --wait=true >/dev/null 2>&1 || true
kubectl create ns "$NS" >/dev/null
"${K[@]}" create secret generic minio --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" >/dev/null
# etcd's default quota (2 GiB) is below a 2 GiB database: larger runs raise it, for the cluster and
# for the etcds run by hand alike (at 1 GiB and below everything keeps etcd's defaults).
QUOTA=$(( MIB > 1024 ? MIB * 3 * 1048576 : 2147483648 ))
CLAIM_GI=$(( MIB > 1024 ? MIB * 4 / 1024 : 4 ))
spec() { # SIZE
  cat <<EOF
size: $1
pod: {antiAffinity: None}
storage: {persistentVolumeClaim: {size: ${CLAIM_GI}Gi}}
etcd: {quotaBackendBytes: $QUOTA}
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
key=${location#s3://}

# --- by hand, 3 members ------------------------------------------------------------------------------
# etcd's disaster-recovery procedure: every member restored from the same snapshot with the whole
# new membership, then all started together.
cluster3="m0=$(peer 0),m1=$(peer 1),m2=$(peer 2)"
t0=$(now_ms)
download "$key"
t_download=$(now_ms)
unpack snapshot.db manifest.json
rm "$WORK/archive"
t_unpack=$(now_ms)
# The manifest's sha256 is the database's (etcd's trailer): the snapshot file without its last 32
# bytes must hash to it. (etcdutl checks the trailer itself; this checks the archive's own record.)
want=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["sha256"])' "$WORK/manifest.json")
got=$(head -c -32 "$WORK/snapshot.db" | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] || { log "by hand: snapshot.db hashes to $got, the manifest says $want"; exit 1; }
t_verify=$(now_ms)
restores=()
for i in 0 1 2; do
  "$ETCD/etcdutl" snapshot restore "$WORK/snapshot.db" --data-dir "$WORK/m$i" --name "m$i" \
    --initial-cluster "$cluster3" --initial-cluster-token bench-restore-manual \
    --initial-advertise-peer-urls "$(peer "$i")" \
    --bump-revision 1000000000 --mark-compacted >"$WORK/etcdutl-m$i.log" 2>&1 &
  restores+=($!)
done
for p in "${restores[@]}"; do
  wait "$p" || { log "etcdutl snapshot restore failed"; cat "$WORK"/etcdutl-m?.log >&2; exit 1; }
done
t_restore=$(now_ms)
for i in 0 1 2; do
  "$ETCD/etcd" --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "$(client "$i")" --advertise-client-urls "$(client "$i")" \
    --listen-peer-urls "$(peer "$i")" --initial-advertise-peer-urls "$(peer "$i")" \
    --quota-backend-bytes "$QUOTA" --log-level error >"$WORK/m$i.log" 2>&1 &
  pids+=($!)
done
wait_healthy "$(client 0),$(client 1),$(client 2)"
t_manual3=$(now_ms)
stop_members
rm -f "$WORK"/etcdutl-m?.log
manual3=$((t_manual3 - t0))
manual3_steps="$((t_download - t0)) + $((t_unpack - t_download)) + $((t_verify - t_unpack)) + $((t_restore - t_verify)) + $((t_manual3 - t_restore))"
log "by hand, 3 members: ${manual3} ms (download, unpack, verify, 3 etcdutl in parallel, 3 healthy: $manual3_steps)"

# --- by hand, 1 member --------------------------------------------------------------------------------
t0=$(now_ms)
download "$key"
t_download=$(now_ms)
unpack snapshot.db
rm "$WORK/archive"
t_unpack=$(now_ms)
"$ETCD/etcdutl" snapshot restore "$WORK/snapshot.db" --data-dir "$WORK/m0" --name m0 \
  --initial-cluster "m0=$(peer 0)" --initial-advertise-peer-urls "$(peer 0)" \
  --bump-revision 1000000000 --mark-compacted >/dev/null 2>&1
t_restore=$(now_ms)
"$ETCD/etcd" --name m0 --data-dir "$WORK/m0" \
  --listen-client-urls "$(client 0)" --advertise-client-urls "$(client 0)" \
  --listen-peer-urls "$(peer 0)" --quota-backend-bytes "$QUOTA" --log-level error >"$WORK/m0.log" 2>&1 &
pids+=($!)
wait_healthy "$(client 0)"
t_manual1=$(now_ms)
stop_members
manual1=$((t_manual1 - t0))
manual1_steps="$((t_download - t0)) + $((t_unpack - t_download)) + $((t_restore - t_unpack)) + $((t_manual1 - t_restore))"
log "by hand, 1 member: ${manual1} ms (download, unpack, etcdutl, answering: $manual1_steps)"

# --- the operator ------------------------------------------------------------------------------------
# restore_with NAME SIZE: deletes the cluster and its claims, applies EtcdRestore NAME with a SIZE-member
# template; sets t0, t_verified, t_growing, t_done (ms) and leaves the fetch and member pods as they were
# at Restoring and Growing in $WORK/NAME-*.json.
restore_with() {
  local name=$1 size=$2
  "${K[@]}" delete etcd rb --wait=true >/dev/null
  "${K[@]}" delete pvc --all --wait=true >/dev/null
  # The released local volumes are wiped now, not at exit: each holds a copy of the database.
  "$REPO_ROOT/e2e/cluster.sh" pv-gc || true
  { printf 'apiVersion: etcd.ouroboros.dev/v1alpha1\nkind: EtcdRestore\nmetadata: {name: %s}\nspec:\n  clusterName: rb\n  source: {backupName: b}\n  clusterTemplate:\n' "$name"
    spec "$size" | sed 's/^/    /'; } > "$WORK/$name.yaml"
  t0=$(now_ms)
  "${K[@]}" apply -f "$WORK/$name.yaml" >/dev/null
  wait_phase "$name" Restoring 900
  t_verified=$(now_ms)
  "${K[@]}" get pods -l job-name -o json > "$WORK/$name-fetch-pods.json"
  wait_phase "$name" Growing 900
  t_growing=$(now_ms)
  "${K[@]}" get pods -l etcd.ouroboros.dev/cluster=rb -o json > "$WORK/$name-member-pods.json"
  wait_phase "$name" Succeeded 1800
  t_done=$(now_ms)
}

# timeline NAME: where the operator's time went, from the restore's and the cluster's Events and each
# pod's own timestamps (seconds, relative to the EtcdRestore's creation), so a change to one step
# shows up in the step. Pods from before the restore (an earlier restore's) are left out.
timeline() {
  local name=$1 created
  created=$("${K[@]}" get etcdrestore "$name" -o jsonpath='{.metadata.creationTimestamp}')
  "${K[@]}" get events.events.k8s.io -o json > "$WORK/events.json"
  log "timeline of EtcdRestore $name:"
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
  python3 - "$created" "$WORK/$name-fetch-pods.json" "$WORK/$name-member-pods.json" <<'PY' >&2
import json, sys
from datetime import datetime
def t(s): return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
t0 = t(sys.argv[1])
for f in sys.argv[2:]:
    for p in json.load(open(f))["items"]:
        if t(p["metadata"]["creationTimestamp"]) < t0 - 1:
            continue
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
}

restore_with r 3
operator3=$((t_done - t0))
operator3_steps="verified $((t_verified - t0)) ms, 3 restored members Ready (Growing) $((t_growing - t0)) ms"
log "operator, 3 members: ${operator3} ms to Succeeded ($operator3_steps)"
timeline r

# The first restore is done with: its fetch Jobs would otherwise be counted among the second's pods.
"${K[@]}" delete etcdrestore r --wait=true >/dev/null
restore_with r1 1
operator1=$((t_done - t0))
operator1_steps="verified $((t_verified - t0)) ms, restored member Ready (Growing) $((t_growing - t0)) ms"
log "operator, 1 member: ${operator1} ms to Succeeded ($operator1_steps)"
timeline r1

CSV=$RESULTS/restore.csv
HEADER=date,size_mib,method,seconds
secs() { awk -v ms="$1" 'BEGIN {printf "%.3f", ms / 1000}'; }
csv_row "$CSV" "$HEADER" "$RUN_DATE" "$MIB" manual-3 "$(secs "$manual3")"
csv_row "$CSV" "$HEADER" "$RUN_DATE" "$MIB" operator-3 "$(secs "$operator3")"
csv_row "$CSV" "$HEADER" "$RUN_DATE" "$MIB" manual-1 "$(secs "$manual1")"
csv_row "$CSV" "$HEADER" "$RUN_DATE" "$MIB" operator-1 "$(secs "$operator1")"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "By hand, 3 members: download + unpack + verify + 3 etcdutl in parallel + 3 healthy; by hand, 1 member:"
echo "download + unpack + etcdutl + answering. The operator: from creating the EtcdRestore to Succeeded."
echo "Results also in $CSV."
echo
echo "| Snapshot | 3 members: by hand | 3 members: operator | operator / by hand | 1 member: by hand | 1 member: operator | operator / by hand |"
echo "|---|---|---|---|---|---|---|"
echo "| $((raw >> 20)) MiB | ${manual3} ms ($manual3_steps) | ${operator3} ms ($operator3_steps) | $(ratio "$operator3" "$manual3") | ${manual1} ms ($manual1_steps) | ${operator1} ms | $(ratio "$operator1" "$manual1") |"
