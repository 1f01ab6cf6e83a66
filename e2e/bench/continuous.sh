#!/usr/bin/env bash
# Continuous backups (issue #23), in one run:
#   1. the recovery point under a steady write load: a MIB (default 1024) MiB etcd, its full
#      snapshot, then the sidecar follows it into MinIO (period PERIOD, default 10 s, the default of
#      spec.backup.continuous) while `put-probe` puts 1 KiB values back to back for LOAD seconds
#      (default 60); every second the age of the sidecar's recovery point (now minus
#      `recoveryPointMs` of GET /v1/continuous) is sampled, and the sidecar's CPU seconds and memory
#      (VmRSS each second, VmHWM at the end) are read from /proc;
#   2. a burst: `etcd-fill` writes DELTA_MIB (default 100) MiB in 64 KiB values as fast as etcd takes
#      them, while the sidecar follows (its memory must stay bounded by maxBytes, not the burst);
#   3. restore time at the end of the chain: `etcd-backup-sidecar replay` (what a restore's fetch Job
#      runs after the download) takes the full snapshot along the chain, then `etcdutl snapshot
#      restore` (what the seed runs), against the strongest thing a user could do instead: a full
#      `etcdctl snapshot save` at the same point and its `etcdutl snapshot restore` (which needs a
#      full snapshot taken at the very moment of the disaster, so it is the floor, not an option).
#
# A plain etcd process on loopback with the members' flags (one member: the follow reads one
# member's watch either way); MinIO, etcd, the sidecar and the load share the machine's cores. Needs
# the local cluster's MinIO (make cluster-up) and a release build (make build). Prints a Markdown
# table for docs/benchmarks.md.
source "$(dirname "$0")/../scripts/lib.sh"
source <("$REPO_ROOT/e2e/cluster.sh" env)
MIB=${MIB:-1024}
DELTA_MIB=${DELTA_MIB:-100}
PERIOD=${PERIOD:-10}
LOAD=${LOAD:-60}
# The sidecar's malloc settings in member pods (operator/src/controllers/cluster/resources.rs).
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-4194304}
ETCD=$OUROBOROS_ETCD_BIN
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /var/tmp/ouroboros-bench-continuous.XXXXXX)
SIDECAR=bench.sidecar:18092
BUCKET=$OUROBOROS_S3_BUCKET
PREFIX=bench-continuous/
now_ms() { date +%s%3N; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  s3_delete_prefix "$PREFIX" || true
}
trap cleanup EXIT
trap "exit 130" INT TERM

CLIENT=http://127.0.0.1:45379
PEER=http://127.0.0.1:45380
cargo build --release --locked -q -p ouroboros-e2e --bin put-probe --bin etcd-fill
[ -x "$BIN/etcd-backup-sidecar" ] || { log "no $BIN/etcd-backup-sidecar: run make build"; exit 1; }
s3_delete_prefix "$PREFIX" || true

"$ETCD/etcd" --name m0 --data-dir "$WORK/m0" --quota-backend-bytes=$((8 << 30)) \
  --auto-compaction-mode=periodic --auto-compaction-retention=1h \
  --heartbeat-interval=100 --election-timeout=1000 --snapshot-count=10000 \
  --listen-client-urls "$CLIENT" --advertise-client-urls "$CLIENT" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" \
  --initial-cluster "m0=$PEER" --initial-cluster-state new --log-level warn >"$WORK/m0.log" 2>&1 &
pids+=($!)
until "$ETCD/etcdctl" --endpoints "$CLIENT" endpoint health >/dev/null 2>&1; do sleep 0.2; done
log "filling with $MIB MiB"
"$BIN/etcd-fill" "$CLIENT" "$MIB"
"$ETCD/etcdctl" --endpoints "$CLIENT" snapshot save "$WORK/full.db" >/dev/null 2>&1
base=$("$ETCD/etcdutl" snapshot status "$WORK/full.db" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
log "full snapshot at revision $base ($(du -m "$WORK/full.db" | cut -f1) MiB)"

source "$(dirname "$0")/sidecar-tls.sh"
OUROBOROS_SIDECAR_ADDR=127.0.0.1:${SIDECAR#*:} "$BIN/etcd-backup-sidecar" --api-tls-dir "$TLS" \
  --etcd-endpoint "$CLIENT" >"$WORK/sidecar.log" 2>&1 &
sc_pid=$!; pids+=("$sc_pid")
for _ in $(seq 600); do scurl "https://$SIDECAR/healthz" >/dev/null && break; sleep 0.1; done
follow=$(printf '{"backup":"full","stored":%s,"periodSeconds":%s,"maxBytes":16777216,"destination":{"s3":{"bucket":"%s","prefix":"%s","endpoint":"%s","region":"us-east-1","force_path_style":true,"credentials":["%s","%s",null]}}}' \
  "$base" "$PERIOD" "$BUCKET" "$PREFIX" "$OUROBOROS_S3_ENDPOINT" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY")
scurl -X PUT -H 'content-type: application/json' -d "$follow" "https://$SIDECAR/v1/continuous" >/dev/null

cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$sc_pid/stat"; }
status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$sc_pid/status"; }
state() { scurl "https://$SIDECAR/v1/continuous"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['position']['$1'])"; }

# sample SECONDS LABEL: every second, the recovery point's age (ms) and the sidecar's RSS (KiB).
sample() {
  local end=$((SECONDS + $1)) rp
  while [ $SECONDS -lt $end ]; do
    rp=$(state | field recoveryPointMs)
    [ "$rp" = 0 ] || echo "$2 $(( $(now_ms) - rp )) $(status_kib VmRSS)" >>"$WORK/samples"
    sleep 1
  done
}

# 1. Steady load.
sleep "$PERIOD"
"$BIN/put-probe" --for "$LOAD" "$CLIENT" >"$WORK/probe.out" 2>"$WORK/probe.log" &
probe_pid=$!; pids+=("$probe_pid")
c0=$(cpu_s); t0=$(now_ms)
sample "$LOAD" steady
wait "$probe_pid" || { log "put-probe failed"; cat "$WORK/probe.log" >&2; exit 1; }
c1=$(cpu_s); t1=$(now_ms)
puts=$(awk '{print $2}' "$WORK/probe.out")
rev_steady=$("$ETCD/etcdctl" --endpoints "$CLIENT" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')

# 2. Burst.
log "burst: $DELTA_MIB MiB"
c2=$(cpu_s); t2=$(now_ms)
"$BIN/etcd-fill" "$CLIENT" "$DELTA_MIB" &
fill_pid=$!; pids+=("$fill_pid")
while kill -0 "$fill_pid" 2>/dev/null; do sample 1 burst; done
wait "$fill_pid"
t_fill=$(now_ms)
head=$("$ETCD/etcdctl" --endpoints "$CLIENT" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
until [ "$(state | field storedRevision)" -ge "$head" ]; do sample 1 burst; done
t3=$(now_ms); c3=$(cpu_s)
hwm=$(status_kib VmHWM)
chunks=$(state | field chunks); bytes=$(state | field bytes)
scurl -X DELETE "https://$SIDECAR/v1/continuous" >/dev/null || true

# 3. Restore at the end of the chain, against a full snapshot at the same point.
# timed CMD...: runs CMD (its stdout to $WORK/timed.out), prints its wall time in ms.
timed() { local t=$(now_ms); "$@" >"$WORK/timed.out" 2>"$WORK/timed.log" || { cat "$WORK/timed.log" >&2; exit 1; }; echo $(( $(now_ms) - t )); }
replay_ms=$(timed "$BIN/etcd-backup-sidecar" replay --snapshot "$WORK/full.db" --out "$WORK/point.db" \
  --backup full --base-revision "$base" --chain "s3://$BUCKET/$PREFIX" --scratch "$WORK/scratch" \
  --etcd-bin-dir "$ETCD" --endpoint "$OUROBOROS_S3_ENDPOINT" --force-path-style)
reached=$(cat "$WORK/timed.out")
restore_point_ms=$(timed "$ETCD/etcdutl" snapshot restore "$WORK/point.db" --data-dir "$WORK/r1" \
  --bump-revision 1000000000 --mark-compacted)
"$ETCD/etcdctl" --endpoints "$CLIENT" snapshot save "$WORK/now.db" >/dev/null 2>&1
restore_full_ms=$(timed "$ETCD/etcdutl" snapshot restore "$WORK/now.db" --data-dir "$WORK/r2" \
  --bump-revision 1000000000 --mark-compacted)

python3 - "$WORK/samples" <<EOF
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def ages(label): return sorted(int(r[1]) for r in rows if r[0] == label)
def rss(label): return max(int(r[2]) for r in rows if r[0] == label)
def q(v, p): return v[min(len(v) - 1, int(p * len(v)))]
s, b = ages("steady"), ages("burst")
steady_s = ($t1 - $t0) / 1000
print(f"full snapshot: revision $base, $MIB MiB; follow period ${PERIOD} s, maxBytes 16 MiB")
print()
print("| Phase | Writes | Recovery point age p50 / p99 / max | Sidecar CPU | Sidecar RSS max |")
print("|---|---|---|---|---|")
print(f"| steady, {steady_s:.0f} s | $puts puts of 1 KiB ({$puts / steady_s:.0f}/s), to revision $rev_steady | {q(s,.5)/1000:.1f} / {q(s,.99)/1000:.1f} / {s[-1]/1000:.1f} s | {($c1 - $c0):.1f} s ({100 * ($c1 - $c0) / steady_s:.0f} % of a core) | {rss('steady')/1024:.0f} MiB |")
burst_s = ($t3 - $t2) / 1000
print(f"| burst: $DELTA_MIB MiB in 64 KiB values, {($t_fill - $t2)/1000:.0f} s, stored {burst_s:.0f} s after it began | to revision $head | {q(b,.5)/1000:.1f} / {q(b,.99)/1000:.1f} / {b[-1]/1000:.1f} s | {($c3 - $c2):.1f} s ({100 * ($c3 - $c2) / burst_s:.0f} % of a core) | {rss('burst')/1024:.0f} MiB (VmHWM {$hwm/1024:.0f} MiB) |")
print()
print(f"chain: $chunks chunks, {$bytes/1048576:.1f} MiB compressed, revisions $base..$head")
print()
print("| Restore at the chain's end (revision $head) | Time |")
print("|---|---|")
print(f"| replay the chain on the full snapshot (\`etcd-backup-sidecar replay\`) | {$replay_ms/1000:.1f} s |")
print(f"| then \`etcdutl snapshot restore\` of the result | {$restore_point_ms/1000:.1f} s |")
print(f"| **total, chain** | **{($replay_ms + $restore_point_ms)/1000:.1f} s** |")
print(f"| floor: \`etcdutl snapshot restore\` of a full snapshot taken at that very point | {$restore_full_ms/1000:.1f} s |")
EOF
echo
echo "replay: $reached"
