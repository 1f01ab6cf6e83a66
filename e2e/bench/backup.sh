#!/usr/bin/env bash
# Backup pipeline benchmark (issue: backups), all in one run on this machine, at database sizes given
# by SIZES (MiB, default "256 1024"):
#   (a) etcdctl snapshot save to local disk;
#   (b) to (d): what a user would script: etcdctl snapshot save, then a compressor, then an upload
#       (curl PUT) to MinIO; (b) gzip -1, (c) pigz -1 -p 2 (gzip on both cores), (d) zstd -1 -T2;
#   the sidecar: for each codec in CODECS (default "gzip zstd"), a job POSTed to a real
#       etcd-backup-sidecar process (a fresh one per size and codec, for its peak RSS, VmHWM),
#       streamed to MinIO until the job reports `succeeded`.
# CPU seconds are the commands' own (etcdctl, the compressor and curl; the sidecar), never etcd's or
# MinIO's. Needs the local cluster's MinIO (make cluster-up) and a release build (make build). Prints
# a Markdown table for docs/benchmarks.md and appends one row per size and method to
# $RESULTS/backup.csv (RESULTS defaults to docs/bench; `make bench-chart` draws it).
# LEVEL (default 1) is the sidecar's compressionLevel; DEST=dir makes the sidecar write to a local
# directory instead of MinIO (its CSV methods are then named apart: sidecar-<codec>-level<L>-dir).
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
SIZES=${SIZES:-"256 1024"}
CODECS=${CODECS:-"gzip zstd"}
RESULTS=${RESULTS:-$REPO_ROOT/docs/bench}
# The sidecar's malloc settings in member pods (operator/src/controllers/cluster/resources.rs).
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4194304}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /var/tmp/ouroboros-bench-backup.XXXXXX)
ETCD_PORT=32379 SIDECAR=bench.sidecar:18090
BUCKET=$OUROBOROS_S3_BUCKET
RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for tool in gzip pigz zstd; do
  command -v "$tool" >/dev/null || { log "$tool is missing (e2e/scripts/install-debs.sh installs it)"; exit 1; }
done
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

# CPU seconds (user + system) of the children this shell has waited for: its difference across a
# method is the CPU of the method's own commands, not of etcd (a child not yet waited for).
children_cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($16 + $17) / t}' "/proc/$$/stat"; }

# measure CMD...: runs CMD; sets took (wall ms) and cpu (children's CPU seconds).
measure() {
  local c0 t0
  c0=$(children_cpu); t0=$(now_ms)
  "$@"
  took=$(( $(now_ms) - t0 ))
  cpu=$(awk -v a="$c0" -v b="$(children_cpu)" 'BEGIN {printf "%.1f", b - a}')
}

save() { # FILE
  "$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" snapshot save "$1" >/dev/null
}

# scripted FILE COMPRESSED KEY COMPRESSOR...: the user's script: save to FILE, compress it in place
# (the compressor writes COMPRESSED and removes FILE), upload COMPRESSED as KEY.
scripted() {
  local file=$1 compressed=$2 key=$3; shift 3
  save "$file"
  "$@" "$file"
  put_s3 "$compressed" "$key"
}

secs() { awk -v ms="$1" 'BEGIN {printf "%.3f", ms / 1000}'; }
# ratio A B: A/B to two decimals, or – when either was not measured.
ratio() { if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; else echo –; fi; }

source "$(dirname "$0")/sidecar-tls.sh"

# sidecar_backup MIB CODEC: a fresh sidecar, one job; sets took (ms), hwm (KiB) and cpu (s).
sidecar_backup() {
  local mib=$1 codec=$2 id="bench-$1-$2" sc_pid job st t0
  # SIDECAR_WRAP (for example "valgrind --tool=callgrind") runs the sidecar under a profiler.
  OUROBOROS_SIDECAR_ADDR=127.0.0.1:${SIDECAR#*:} ${SIDECAR_WRAP:-} "$BIN/etcd-backup-sidecar" --api-tls-dir "$TLS" \
    --etcd-endpoint "http://127.0.0.1:$ETCD_PORT" >"$WORK/sidecar-$codec.log" 2>&1 &
  sc_pid=$!; pids+=("$sc_pid")
  for _ in $(seq 600); do scurl "https://$SIDECAR/healthz" >/dev/null && break; sleep 0.1; done
  job=$(printf '{"id":"%s","name":"%s","clusterName":"bench","member":"bench","compressionLevel":%s,"codec":"%s","destination":{"s3":{"bucket":"%s","prefix":"bench/","endpoint":"%s","region":"us-east-1","force_path_style":true,"credentials":["%s","%s",null]}}}' \
    "$id" "$id" "${LEVEL:-1}" "$codec" "$BUCKET" "$OUROBOROS_S3_ENDPOINT" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY")
  # DEST=dir writes to a local directory instead, to tell the store's share of time and memory.
  if [ "${DEST:-s3}" = dir ]; then
    job=$(printf '{"id":"%s","name":"%s","clusterName":"bench","member":"bench","compressionLevel":%s,"codec":"%s","destination":{"dir":{"path":"%s/out"}}}' \
      "$id" "$id" "${LEVEL:-1}" "$codec" "$WORK")
  fi
  t0=$(now_ms)
  scurl -X POST -H 'content-type: application/json' -d "$job" "https://$SIDECAR/v1/backups" >/dev/null
  # The end is the sidecar's own "backup finished" log line, not the poll that sees it: polling
  # every 50 ms (a curl and a TLS handshake each, on the same two cores) took CPU from the sidecar
  # it was timing.
  while :; do
    st=$(scurl "https://$SIDECAR/v1/backups/$id")
    case $st in *'"phase":"running"'*) sleep 0.5 ;; *) break ;; esac
  done
  local end
  end=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/sidecar-$codec.log" | awk '/backup finished/ {print $1; exit}')
  [ -n "$end" ] || { log "no \"backup finished\" line in the sidecar's log"; exit 1; }
  took=$(( $(date -d "$end" +%s%3N) - t0 ))
  case $st in *'"phase":"succeeded"'*) ;; *) log "sidecar backup ($codec) failed: $st"; exit 1 ;; esac
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$sc_pid/status")
  cpu=$(awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$sc_pid/stat")
  kill "$sc_pid"; wait "$sc_pid" 2>/dev/null || true
  rm -rf "$WORK/out"
}

suffix=
[ "${LEVEL:-1}" = 1 ] || suffix+="-level$LEVEL"
[ "${DEST:-s3}" = s3 ] || suffix+="-$DEST"
CSV=$RESULTS/backup.csv
HEADER=date,size_mib,method,seconds,peak_rss_mib,cpu_s
rows=()
declare -A sc # codec -> the sidecar's ms, at the current size
for mib in $SIZES; do
  log "== $mib MiB"
  rm -rf "$WORK/etcd" "$WORK"/*.db "$WORK"/*.gz "$WORK"/*.zst
  "$OUROBOROS_ETCD_BIN/etcd" --name bench --data-dir "$WORK/etcd" --quota-backend-bytes=$((8 << 30)) \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls http://127.0.0.1:32380 --initial-advertise-peer-urls http://127.0.0.1:32380 \
    --initial-cluster bench=http://127.0.0.1:32380 --log-level error >"$WORK/etcd.log" 2>&1 &
  etcd_pid=$!; pids+=("$etcd_pid")
  for _ in $(seq 100); do "$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  "$BIN/etcd-fill" "http://127.0.0.1:$ETCD_PORT" "$mib"
  db=$("$OUROBOROS_ETCD_BIN/etcdctl" --endpoints "127.0.0.1:$ETCD_PORT" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
  log "database: $((db >> 20)) MiB"

  measure save "$WORK/a.db"; a=$took a_cpu=$cpu
  raw=$(stat -c %s "$WORK/a.db"); rm -f "$WORK/a.db"
  measure scripted "$WORK/b.db" "$WORK/b.db.gz" "bench/manual-$mib.db.gz" gzip -1; b=$took b_cpu=$cpu
  rm -f "$WORK/b.db.gz"
  # Its own object name: an upload that replaces an object is not the same work as a new one.
  measure scripted "$WORK/c.db" "$WORK/c.db.gz" "bench/manual-pigz-$mib.db.gz" pigz -1 -p 2; c=$took c_cpu=$cpu
  rm -f "$WORK/c.db.gz"
  measure scripted "$WORK/d.db" "$WORK/d.db.zst" "bench/manual-$mib.db.zst" zstd -1 -T2 -q --rm; d=$took d_cpu=$cpu
  rm -f "$WORK/d.db.zst"
  log "(a) $a ms, (b) gzip $b ms, (c) pigz $c ms, (d) zstd $d ms"
  csv_row "$CSV" "$HEADER" "$RUN_DATE" "$mib" etcdctl-save "$(secs "$a")" "" "$a_cpu"
  csv_row "$CSV" "$HEADER" "$RUN_DATE" "$mib" save+gzip-1+upload "$(secs "$b")" "" "$b_cpu"
  csv_row "$CSV" "$HEADER" "$RUN_DATE" "$mib" save+pigz-1+upload "$(secs "$c")" "" "$c_cpu"
  csv_row "$CSV" "$HEADER" "$RUN_DATE" "$mib" save+zstd-1+upload "$(secs "$d")" "" "$d_cpu"

  sc=() cells=
  for codec in $CODECS; do
    sidecar_backup "$mib" "$codec"
    sc[$codec]=$took
    log "sidecar $codec: $took ms, $cpu s CPU, peak RSS $((hwm / 1024)) MiB"
    cells+=" $took ms, $cpu s CPU, $((hwm / 1024)) MiB |"
    csv_row "$CSV" "$HEADER" "$RUN_DATE" "$mib" "sidecar-$codec$suffix" "$(secs "$took")" "$((hwm / 1024))" "$cpu"
  done
  kill "$etcd_pid"; wait "$etcd_pid" 2>/dev/null || true
  s3_delete_prefix bench/ || true
  rows+=("| $((raw >> 20)) MiB | $a ms, $a_cpu s | $b ms, $b_cpu s | $c ms, $c_cpu s | $d ms, $d_cpu s |$cells $(ratio "${sc[gzip]:-}" "$c") | $(ratio "${sc[zstd]:-}" "$d") | $(ratio "${sc[zstd]:-}" "$a") |")
done
head="| Snapshot | (a) etcdctl snapshot save | (b) save + gzip -1 + upload | (c) save + pigz -1 -p 2 + upload | (d) save + zstd -1 -T2 + upload |"
rule="|---|---|---|---|---|"
for codec in $CODECS; do head+=" sidecar $codec (time, CPU, peak RSS) |"; rule+="---|"; done
echo
echo "Times in ms with the commands' CPU seconds; sidecar at level ${LEVEL:-1}, to ${DEST:-s3}; results also in $CSV."
echo
echo "$head sidecar gzip / (c) | sidecar zstd / (d) | sidecar zstd / (a) |"
echo "$rule---|---|---|"
printf '%s\n' "${rows[@]}"
