#!/usr/bin/env bash
# What a backup costs the cluster's writers: put latency (p50, p99, max) of a steady writer on a
# 3-member etcd while the sidecar backs up a MIB (default 1024) MiB database from one follower,
# against the same writer with no backup, in the same run, for each codec in CODECS (default
# "gzip zstd"; "save" is a bare `etcdctl snapshot save` from the same follower, what any backup must
# at least do). CPU_LIMIT=<millicores> puts each sidecar under that CPU quota (a container limit).
#
# Plain etcd processes on loopback with the flags the operator gives members (an 8 GiB quota, as
# defrag.sh, and the defaults of spec.etcd), filled with `etcd-fill`; `put-probe` puts 1 KiB values
# back to back through one client of all three members the whole time (a put slower than 5 s counts
# as 5 s). Per codec: a fresh etcd-backup-sidecar attached to a follower (as in a member pod), IDLE
# seconds (default 40) with no backup, then one backup to MinIO (LEVEL, default 1), polled every
# 0.25 s until it reports `succeeded`. The idle window is the stretch just before the backup, as long
# as the backup took (clipped to IDLE, with a warning, if the backup took longer). MinIO, etcd, the
# sidecar and the probe share the machine's cores, as in backup.sh.
#
# Needs the local cluster's MinIO (make cluster-up) and a release build of the sidecar (make build).
# Prints a Markdown table for docs/benchmarks.md and appends one row per codec to
# $RESULTS/backup-cost.csv (RESULTS defaults to docs/bench).
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
MIB=${MIB:-1024}
CODECS=${CODECS:-"gzip zstd"}
IDLE=${IDLE:-40}
RESULTS=${RESULTS:-$REPO_ROOT/docs/bench}
# The sidecar's malloc settings in member pods (operator/src/controllers/cluster/resources.rs).
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4194304}
ETCD=$OUROBOROS_ETCD_BIN
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /var/tmp/ouroboros-bench-backup-cost.XXXXXX)
SIDECAR=bench.sidecar:18091
BUCKET=$OUROBOROS_S3_BUCKET
RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
now_ms() { date +%s%3N; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  s3_delete_prefix bench-cost/ || true
}
trap cleanup EXIT
trap "exit 130" INT TERM

peer() { echo "http://127.0.0.1:$((44380 + 10 * $1))"; }
client() { echo "http://127.0.0.1:$((44379 + 10 * $1))"; }
endpoints="$(client 0),$(client 1),$(client 2)"
cluster="m0=$(peer 0),m1=$(peer 1),m2=$(peer 2)"

cargo build --release --locked -q -p ouroboros-e2e --bin put-probe --bin etcd-fill
[ -x "$BIN/etcd-backup-sidecar" ] || { log "no $BIN/etcd-backup-sidecar: run make build"; exit 1; }

# The member flags of operator/src/objects/etcd_settings.rs at spec.etcd's defaults, with defrag.sh's
# 8 GiB quota (2 GiB, the default, is less than a 2 GiB fill).
for i in 0 1 2; do
  "$ETCD/etcd" --name "m$i" --data-dir "$WORK/m$i" --quota-backend-bytes=$((8 << 30)) \
    --auto-compaction-mode=periodic --auto-compaction-retention=1h \
    --heartbeat-interval=100 --election-timeout=1000 --snapshot-count=10000 \
    --feature-gates=InitialCorruptCheck=true,StopGRPCServiceOnDefrag=true \
    --listen-client-urls "$(client "$i")" --advertise-client-urls "$(client "$i")" \
    --listen-peer-urls "$(peer "$i")" --initial-advertise-peer-urls "$(peer "$i")" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level warn >"$WORK/m$i.log" 2>&1 &
  pids+=($!)
done
until "$ETCD/etcdctl" --endpoints "$endpoints" endpoint health >/dev/null 2>&1; do sleep 0.2; done
log "filling with $MIB MiB"
"$BIN/etcd-fill" "$(client 0)" "$MIB"

# A follower: a member whose own ID is not the leader it reports.
follower=$("$ETCD/etcdctl" --endpoints "$endpoints" endpoint status -w json | python3 -c '
import json, sys
for i, m in enumerate(json.load(sys.stdin)):
    if m["Status"]["header"]["member_id"] != m["Status"]["leader"]:
        print(i)
        break')
[ -n "$follower" ] || { log "no follower found"; exit 1; }
log "backups from follower m$follower ($(client "$follower"))"

source "$(dirname "$0")/sidecar-tls.sh"

"$BIN/put-probe" --until "$WORK/stop" --ready "$WORK/ready" --windows "$WORK/windows" \
  "$(client 0)" "$(client 1)" "$(client 2)" >"$WORK/probe.out" 2>"$WORK/probe.log" &
probe_pid=$!; pids+=("$probe_pid")
until [ -e "$WORK/ready" ]; do
  kill -0 "$probe_pid" 2>/dev/null || { log "put-probe failed"; cat "$WORK/probe.log" >&2; exit 1; }
  sleep 0.1
done

declare -A backup_ms
# CPU_LIMIT=<millicores> runs each sidecar in a CPU cgroup with that quota (cgroup v1 cpu.cfs_quota_us,
# what a container's CPU limit is), to show the trade-off between backup time and put latency.
limited() { # PID
  local g=/sys/fs/cgroup/cpu/ouroboros-bench-sidecar
  mkdir -p "$g"
  echo 100000 >"$g/cpu.cfs_period_us"
  echo $((CPU_LIMIT * 100)) >"$g/cpu.cfs_quota_us"
  echo "$1" >"$g/cgroup.procs"
}
for codec in $CODECS; do
  id="cost-$MIB-$codec"
  if [ "$codec" = save ]; then
    # What every backup must at least do: the follower streams its snapshot (etcdctl to a file).
    log "$codec: $IDLE s idle"
    idle_from=$(now_ms)
    sleep "$IDLE"
    t0=$(now_ms)
    "$ETCD/etcdctl" --endpoints "$(client "$follower")" snapshot save "$WORK/save.db" >/dev/null 2>&1
    t1=$(now_ms)
    rm -f "$WORK/save.db"
  else
    OUROBOROS_SIDECAR_ADDR=127.0.0.1:${SIDECAR#*:} "$BIN/etcd-backup-sidecar" --api-tls-dir "$TLS" \
      --etcd-endpoint "$(client "$follower")" >"$WORK/sidecar-$codec.log" 2>&1 &
    sc_pid=$!; pids+=("$sc_pid")
    [ -z "${CPU_LIMIT:-}" ] || limited "$sc_pid"
    for _ in $(seq 600); do scurl "https://$SIDECAR/healthz" >/dev/null && break; sleep 0.1; done
    job=$(printf '{"id":"%s","name":"%s","clusterName":"bench","member":"m%s","compressionLevel":%s,"codec":"%s","destination":{"s3":{"bucket":"%s","prefix":"bench-cost/","endpoint":"%s","region":"us-east-1","force_path_style":true,"credentials":["%s","%s",null]}}}' \
      "$id" "$id" "$follower" "${LEVEL:-1}" "$codec" "$BUCKET" "$OUROBOROS_S3_ENDPOINT" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY")
    log "$codec: $IDLE s idle"
    idle_from=$(now_ms)
    sleep "$IDLE"
    t0=$(now_ms)
    scurl -X POST -H 'content-type: application/json' -d "$job" "https://$SIDECAR/v1/backups" >/dev/null
    while st=$(scurl "https://$SIDECAR/v1/backups/$id") && [[ $st == *'"phase":"running"'* ]]; do sleep 0.25; done
    t1=$(now_ms)
    [[ $st == *'"phase":"succeeded"'* ]] || { log "sidecar backup ($codec) failed: $st"; exit 1; }
    kill "$sc_pid"; wait "$sc_pid" 2>/dev/null || true
    s3_delete_prefix bench-cost/ || true
  fi
  took=$((t1 - t0)); backup_ms[$codec]=$took
  from=$((t0 - took))
  if [ "$from" -lt "$idle_from" ]; then
    log "warning: the $codec backup took $took ms, longer than IDLE=$IDLE s; its idle window is shorter"
    from=$idle_from
  fi
  printf '%s %s idle-%s\n%s %s backup-%s\n' "$from" "$t0" "$codec" "$t0" "$t1" "$codec" >>"$WORK/windows"
  log "$codec: backup $took ms"
done

touch "$WORK/stop"
wait "$probe_pid" || { log "put-probe failed"; cat "$WORK/probe.log" >&2; exit 1; }
cat "$WORK/probe.out" >&2

CSV=$RESULTS/backup-cost.csv
HEADER=date,size_mib,codec,backup_s,idle_puts,idle_p50_ms,idle_p99_ms,idle_max_ms,backup_puts,backup_p50_ms,backup_p99_ms,backup_max_ms
echo
echo "$MIB MiB, backups by the sidecar from follower m$follower (level ${LEVEL:-1}) to MinIO; idle: the same length just before. Results also in $CSV."
echo
echo "| Codec | idle p50 | idle p99 | idle max | during backup p50 | during backup p99 | during backup max | p99 during / idle | backup |"
echo "|---|---|---|---|---|---|---|---|---|"
for codec in $CODECS; do
  IFS=$'\t' read -r _ in_ ip50 ip99 imax < <(grep "^idle-$codec"$'\t' "$WORK/probe.out")
  IFS=$'\t' read -r _ bn bp50 bp99 bmax < <(grep "^backup-$codec"$'\t' "$WORK/probe.out")
  s=$(awk -v ms="${backup_ms[$codec]}" 'BEGIN {printf "%.2f", ms / 1000}')
  r=$(awk -v a="$bp99" -v b="$ip99" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "–"}')
  echo "| $codec${CPU_LIMIT:+ (sidecar limited to ${CPU_LIMIT}m)} | $ip50 ms | $ip99 ms | $imax ms | $bp50 ms | $bp99 ms | $bmax ms | $r | $s s |"
  label=$codec
  [ "$codec" = save ] || [ -z "${CPU_LIMIT:-}" ] || label+="@${CPU_LIMIT}m"
  csv_row "$CSV" "$HEADER" "$RUN_DATE" "$MIB" "$label" "$s" "$in_" "$ip50" "$ip99" "$imax" "$bn" "$bp50" "$bp99" "$bmax"
done
