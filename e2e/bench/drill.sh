#!/usr/bin/env bash
# Restore drill benchmark (issue: verified backups), in one run on this machine, at database sizes
# given by SIZES (MiB, default "256 1024"): a backup taken by a real etcd-backup-sidecar into MinIO,
# then drilled twice:
#   (a) by hand, as the runbook does it: download with curl, tar xzf, etcdutl snapshot restore, etcd
#       alone on it, etcdctl endpoint hashkv at the backup's revision;
#   (b) the drill Job's own steps, as processes: etcd-backup-sidecar fetch (download and verify),
#       etcdutl snapshot restore, etcd alone on it, etcd-backup-sidecar drill-check.
# Each step's wall time, CPU seconds and peak RSS (etcd's from /proc, the others' from getrusage)
# are printed as Markdown tables for docs/benchmarks.md. The Job itself adds its pod's start (about
# 3 s on the local cluster, see the closing note of the drill tests). Needs the local cluster's MinIO
# (make cluster-up) and a release build (make build).
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
SIZES=${SIZES:-"256 1024"}
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4194304}
BIN=$CARGO_TARGET_DIR/release
ETCD=$OUROBOROS_ETCD_BIN
WORK=$(mktemp -d /var/tmp/ouroboros-bench-drill.XXXXXX)
SIDECAR=bench.sidecar:18091
BUCKET=$OUROBOROS_S3_BUCKET
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  s3_delete_prefix bench-drill/ || true
}
trap cleanup EXIT
trap "exit 130" INT TERM
source "$(dirname "$0")/sidecar-tls.sh"

now_ms() { date +%s%3N; }
# measure NAME CMD...: runs CMD and appends "NAME wall-ms cpu-s peak-MiB" to $WORK/steps.
measure() {
  local name=$1; shift
  python3 - "$name" "$WORK/steps" "$@" <<'PY'
import resource, subprocess, sys, time
name, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t = time.monotonic()
r = subprocess.run(cmd, stdout=subprocess.DEVNULL)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "a") as f:
    f.write(f"{name} {(time.monotonic() - t) * 1000:.0f} {u.ru_utime + u.ru_stime:.1f} {u.ru_maxrss // 1024}\n")
sys.exit(r.returncode)
PY
}
# serve DIR PORT: etcd alone on the restored DIR; waits until it answers. Sets etcd_pid.
serve() {
  "$ETCD/etcd" --name drill --data-dir "$1" --listen-client-urls "http://127.0.0.1:$2" \
    --advertise-client-urls "http://127.0.0.1:$2" --listen-peer-urls "http://127.0.0.1:$(($2 + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$(($2 + 1))" --initial-cluster "drill=http://127.0.0.1:$(($2 + 1))" \
    --auto-compaction-retention=0 --quota-backend-bytes=$((8 << 30)) --log-level error >"$WORK/drill-etcd.log" 2>&1 &
  etcd_pid=$!; pids+=("$etcd_pid")
  for _ in $(seq 600); do "$ETCD/etcdctl" --endpoints "127.0.0.1:$2" endpoint health >/dev/null 2>&1 && return; sleep 0.05; done
  log "etcd did not start on $1"; exit 1
}
stop_etcd() { # prints etcd's CPU seconds and peak MiB, then stops it
  awk -v t="$(getconf CLK_TCK)" '{printf "%.1f ", ($14 + $15) / t}' "/proc/$etcd_pid/stat"
  awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$etcd_pid/status"
  kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
}
# restore_step SNAPSHOT DIR PORT: etcdutl snapshot restore, measured as "restore".
restore_step() {
  measure restore "$ETCD/etcdutl" snapshot restore "$1" --data-dir "$2" --name drill \
    --initial-cluster "drill=http://127.0.0.1:$(($3 + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$(($3 + 1))"
}

hand=() job=()
for mib in $SIZES; do
  log "== $mib MiB"
  rm -rf "$WORK"/src "$WORK"/a "$WORK"/b "$WORK/steps"
  "$ETCD/etcd" --name src --data-dir "$WORK/src" --quota-backend-bytes=$((8 << 30)) \
    --listen-client-urls http://127.0.0.1:33379 --advertise-client-urls http://127.0.0.1:33379 \
    --listen-peer-urls http://127.0.0.1:33380 --initial-advertise-peer-urls http://127.0.0.1:33380 \
    --initial-cluster src=http://127.0.0.1:33380 --log-level error >"$WORK/src.log" 2>&1 &
  src_pid=$!; pids+=("$src_pid")
  for _ in $(seq 100); do "$ETCD/etcdctl" --endpoints 127.0.0.1:33379 endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN/etcd-fill" http://127.0.0.1:33379 "$mib"
  OUROBOROS_SIDECAR_ADDR=127.0.0.1:${SIDECAR#*:} "$BIN/etcd-backup-sidecar" --api-tls-dir "$TLS" \
    --etcd-endpoint http://127.0.0.1:33379 >"$WORK/sidecar.log" 2>&1 &
  sc_pid=$!; pids+=("$sc_pid")
  for _ in $(seq 600); do scurl "https://$SIDECAR/healthz" >/dev/null && break; sleep 0.1; done
  job_json=$(printf '{"id":"drill-%s","name":"drill-%s","clusterName":"bench","member":"bench","compressionLevel":1,"destination":{"s3":{"bucket":"%s","prefix":"bench-drill/","endpoint":"%s","region":"us-east-1","force_path_style":true,"credentials":["%s","%s",null]}}}' \
    "$mib" "$mib" "$BUCKET" "$OUROBOROS_S3_ENDPOINT" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY")
  scurl -X POST -H 'content-type: application/json' -d "$job_json" "https://$SIDECAR/v1/backups" >/dev/null
  while st=$(scurl "https://$SIDECAR/v1/backups/drill-$mib") && [[ $st == *'"phase":"running"'* ]]; do sleep 0.2; done
  [[ $st == *'"phase":"succeeded"'* ]] || { log "backup failed: $st"; exit 1; }
  kill "$sc_pid" "$src_pid"; wait "$sc_pid" "$src_pid" 2>/dev/null || true
  read -r location rev hash compact sha raw < <(python3 -c '
import json, sys
s = json.loads(sys.argv[1])
m, h = s["manifest"], s["manifest"]["kvHash"]
print(s["location"], m["revision"], h["hash"], h["compactRevision"], m["sha256"], m["rawSize"])' "$st")
  key=${location#s3://$BUCKET/}
  log "backup: revision $rev, $((raw >> 20)) MiB raw, hash $hash"

  # (a) by hand
  mkdir -p "$WORK/a"; t0=$(now_ms)
  measure download curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -o "$WORK/a/archive.tar.gz" "$OUROBOROS_S3_ENDPOINT/$BUCKET/$key"
  measure unpack tar xzf "$WORK/a/archive.tar.gz" -C "$WORK/a"
  rm "$WORK/a/archive.tar.gz"
  restore_step "$WORK/a/snapshot.db" "$WORK/a/data" 34379
  serve "$WORK/a/data" 34379
  got=$("$ETCD/etcdctl" --endpoints 127.0.0.1:34379 endpoint hashkv --rev "$rev" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["HashKV"]["hash"])')
  total_a=$(( $(now_ms) - t0 ))
  read -r etcd_cpu etcd_mib < <(stop_etcd)
  [ "$got" = "$hash" ] || { log "by hand: hash $got, recorded $hash"; exit 1; }
  hand+=("| $((raw >> 20)) MiB | $(awk '{printf "%s ms, %s s CPU, %s MiB | ", $2, $3, $4}' "$WORK/steps")$etcd_cpu s CPU, $etcd_mib MiB | $total_a ms |")
  rm -rf "$WORK/a" "$WORK/steps"

  # (b) the drill's steps
  mkdir -p "$WORK/b"; t0=$(now_ms)
  measure fetch "$BIN/etcd-backup-sidecar" fetch --location "$location" --out "$WORK/b" --sha256 "$sha" \
    --endpoint "$OUROBOROS_S3_ENDPOINT" --force-path-style
  restore_step "$WORK/b/snapshot.db" "$WORK/b/data" 35379
  serve "$WORK/b/data" 35379
  measure check "$BIN/etcd-backup-sidecar" drill-check --endpoint http://127.0.0.1:35379 --revision "$rev" \
    --kv-hash "$hash" --compact-revision "$compact"
  total_b=$(( $(now_ms) - t0 ))
  read -r etcd_cpu etcd_mib < <(stop_etcd)
  job+=("| $((raw >> 20)) MiB | $(awk '{printf "%s ms, %s s CPU, %s MiB | ", $2, $3, $4}' "$WORK/steps")$etcd_cpu s CPU, $etcd_mib MiB | $total_b ms | $(awk "BEGIN {printf \"%.2f\", $total_b/$total_a}") |")
  rm -rf "$WORK/b"
  s3_delete_prefix bench-drill/ || true
done
echo
echo "(a) by hand"
echo
echo "| Snapshot | download (curl) | unpack (tar xzf) | etcdutl snapshot restore | etcd alone (start to hashed) | total |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${hand[@]}"
echo
echo "(b) the drill's steps"
echo
echo "| Snapshot | fetch (download + verify) | etcdutl snapshot restore | drill-check | etcd alone (start to checked) | total | (b) / (a) |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${job[@]}"
