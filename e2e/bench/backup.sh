#!/usr/bin/env bash
# Backup pipeline benchmark (issue: backups), all in one run on this machine:
#   (a) etcdctl snapshot save to local disk;
#   (b) what a user would script: etcdctl snapshot save, then gzip -1, then an upload (curl PUT);
#   (c) the sidecar: POST a job to a real etcd-backup-sidecar process, streamed to MinIO;
# at database sizes given by SIZES (MiB, default "256 1024"), plus the sidecar's peak RSS (VmHWM) at
# each size, with a fresh sidecar per size. Needs the local cluster's MinIO (make cluster-up) and a
# release build (make build). Prints a Markdown table for docs/benchmarks.md.
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
SIZES=${SIZES:-"256 1024"}
# The sidecar's malloc settings in member pods (operator/src/controllers/cluster/resources.rs).
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4194304}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /var/tmp/ouroboros-bench-backup.XXXXXX)
ETCD_PORT=32379 SIDECAR=bench.sidecar:18090
BUCKET=$OUROBOROS_S3_BUCKET
now_ms() { date +%s%3N; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  s3_delete_prefix bench/ || true
}
trap cleanup EXIT
# A killed benchmark cleans up too: bash runs no EXIT trap on a signal it does not trap.
trap "exit 130" INT TERM

put_s3() { # FILE KEY
  curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -T "$1" "$OUROBOROS_S3_ENDPOINT/$BUCKET/$2" >/dev/null
}

source "$(dirname "$0")/sidecar-tls.sh"

rows=()
for mib in $SIZES; do
  log "== $mib MiB"
  rm -rf "$WORK/etcd" "$WORK"/*.db "$WORK"/*.gz
  "$OUROBOROS_ETCD_BIN/etcd" --name bench --data-dir "$WORK/etcd" --quota-backend-bytes=$((8 << 30)) \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls http://127.0.0.1:32380 --initial-advertise-peer-urls http://127.0.0.1:32380 \
    --initial-cluster bench=http://127.0.0.1:32380 --log-level error >"$WORK/etcd.log" 2>&1 &
  etcd_pid=$!; pids+=("$etcd_pid")
  for _ in $(seq 100); do "$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN/etcd-fill" "http://127.0.0.1:$ETCD_PORT" "$mib"
  db=$("$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
  log "database: $((db >> 20)) MiB"

  t0=$(now_ms)
  "$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" snapshot save "$WORK/a.db" >/dev/null
  a=$(( $(now_ms) - t0 ))
  t0=$(now_ms)
  "$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" snapshot save "$WORK/b.db" >/dev/null
  gzip -1 "$WORK/b.db"
  put_s3 "$WORK/b.db.gz" "bench/manual-$mib.db.gz"
  b=$(( $(now_ms) - t0 ))

  # SIDECAR_WRAP (for example "valgrind --tool=callgrind") runs the sidecar under a profiler.
  OUROBOROS_SIDECAR_ADDR=127.0.0.1:${SIDECAR#*:} ${SIDECAR_WRAP:-} "$BIN/etcd-backup-sidecar" --api-tls-dir "$TLS" --etcd-endpoint "http://127.0.0.1:$ETCD_PORT" >"$WORK/sidecar.log" 2>&1 &
  sc_pid=$!; pids+=("$sc_pid")
  for _ in $(seq 600); do scurl "https://$SIDECAR/healthz" >/dev/null && break; sleep 0.1; done
  job=$(printf '{"id":"bench-%s","name":"bench-%s","clusterName":"bench","member":"bench","compressionLevel":%s,"destination":{"s3":{"bucket":"%s","prefix":"bench/","endpoint":"%s","region":"us-east-1","force_path_style":true,"credentials":["%s","%s",null]}}}' \
    "$mib" "$mib" "${LEVEL:-1}" "$BUCKET" "$OUROBOROS_S3_ENDPOINT" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY")
  # DEST=dir writes to a local directory instead, to tell the store's share of time and memory.
  if [ "${DEST:-s3}" = dir ]; then
    job=$(printf '{"id":"bench-%s","name":"bench-%s","clusterName":"bench","member":"bench","compressionLevel":%s,"destination":{"dir":{"path":"%s/out"}}}' "$mib" "$mib" "${LEVEL:-1}" "$WORK")
  fi
  t0=$(now_ms)
  scurl -X POST -H 'content-type: application/json' -d "$job" "https://$SIDECAR/v1/backups" >/dev/null
  while :; do
    st=$(scurl "https://$SIDECAR/v1/backups/bench-$mib")
    case $st in *'"phase":"running"'*) sleep 0.05 ;; *) break ;; esac
  done
  c=$(( $(now_ms) - t0 ))
  case $st in *'"phase":"succeeded"'*) ;; *) log "sidecar backup failed: $st"; exit 1 ;; esac
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$sc_pid/status")
  cpu=$(awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$sc_pid/stat")
  kill "$sc_pid" "$etcd_pid"; wait "$sc_pid" "$etcd_pid" 2>/dev/null || true
  raw=$(stat -c %s "$WORK/a.db")
  rows+=("| $((raw >> 20)) MiB | $a | $b | $c | $(awk "BEGIN {printf \"%.2f\", $c/$a}") | $(awk "BEGIN {printf \"%.2f\", $c/$b}") | $((hwm / 1024)) MiB | $cpu s |")
done
echo
echo "| Snapshot | (a) etcdctl snapshot save, ms | (b) save + gzip -1 + upload, ms | sidecar to MinIO, ms | sidecar / (a) | sidecar / (b) | sidecar peak RSS | sidecar CPU |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
