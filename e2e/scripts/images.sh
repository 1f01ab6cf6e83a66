#!/usr/bin/env bash
# Container images, built offline into OCI archives and imported into the cluster's containerd under
# the names deploy/ and the operator use:
#   localhost/ouroboros/pause:3.10                  the pod sandbox (catatonit in pause mode)
#   localhost/ouroboros/etcd:v<version>             etcd, etcdctl, etcdutl only, shaped like the
#                                                   upstream images: no shell, no libc, no tools
#   localhost/ouroboros/etcd-operator:<crate ver>   the operator (and :<ver>-failpoints for tests)
#   localhost/ouroboros/etcd-backup-sidecar:<ver>   the backup sidecar
#
#   images.sh build            builds pause and etcd images (and the Rust ones when built in release)
#   images.sh import SOCKET    builds what is missing and imports everything into containerd
source "$(dirname "$0")/lib.sh"
# shellcheck source=image-files.sh
source "$SCRIPTS_DIR/image-files.sh"
OUT="$OUROBOROS_CACHE/images"
MK="$SCRIPTS_DIR/mkimage.py"
mkdir -p "$OUT"

# newer_than ARCHIVE INPUT...: true when the archive is missing or older than any input.
stale() {
  local out=$1; shift
  [ -f "$out" ] || return 0
  local f; for f in "$@"; do [ "$f" -nt "$out" ] && return 0; done
  return 1
}

build_pause() {
  local out="$OUT/pause-3.10.tar"
  stale "$out" /usr/bin/catatonit "$MK" || return 0
  python3 "$MK" "$out" localhost/ouroboros/pause:3.10 '["/pause","-P"]' /usr/bin/catatonit:/pause
}

build_etcd() {
  local v=$1 bin="$OUROBOROS_CACHE/etcd/$1/bin" out="$OUT/etcd-v$1.tar"
  [ -x "$bin/etcd" ] || { log "etcd $v not built; skipping its image"; return 0; }
  stale "$out" "$bin/etcd" "$MK" "$SCRIPTS_DIR/images.sh" || return 0
  # Nothing but the (static) binaries, as in etcd's and Kubernetes' published images: the e2e tiers
  # prove that members, restores and drills need no shell or tools in the etcd image.
  python3 "$MK" "$out" "localhost/ouroboros/etcd:v$v" '["/usr/local/bin/etcd"]' \
    "$bin/etcd:/usr/local/bin/etcd" "$bin/etcdctl:/usr/local/bin/etcdctl" "$bin/etcdutl:/usr/local/bin/etcdutl" \
    "tmp/" "var/lib/etcd/"
}

# build_rust NAME [VARIANT [SRC:DEST...]]: the image of target/release/NAME[-VARIANT], tagged
# VERSION[-VARIANT], with any extra files given.
build_rust() {
  local name=$1 variant=${2:+-$2}
  shift $(( $# < 2 ? $# : 2 ))
  local extra=("$@") bin="$RELEASE_DIR/$name$variant" out="$OUT/$name-$APP_VERSION$variant.tar" e
  [ -x "$bin" ] || { log "$bin not built (cargo build --release); skipping its image"; return 0; }
  for e in "${extra[@]}"; do
    [ -x "${e%%:*}" ] || { log "${e%%:*} not built (make build); skipping the $name image"; return 0; }
  done
  stale "$out" "$bin" "$MK" "$SCRIPTS_DIR/images.sh" "$SCRIPTS_DIR/image-files.sh" "${extra[@]%%:*}" || return 0
  local entries; mapfile -t entries < <(rust_image_entries "$bin" "$name" "${extra[@]}")
  python3 "$MK" "$out" "localhost/ouroboros/$name:$APP_VERSION$variant" "[\"/usr/local/bin/$name\"]" "${entries[@]}"
}

build_all() {
  build_pause
  build_etcd "$ETCD_VERSION"
  build_etcd "$ETCD_OLD_VERSION"
  build_rust etcd-operator
  # Compiled with the `failpoints` feature, for the restart-proof e2e only; never deployed by deploy/.
  build_rust etcd-operator failpoints
  build_rust etcd-backup-sidecar "" "${SIDECAR_HELPERS[@]}"
}

import_all() {
  local sock=$1 f
  build_all
  for f in "$OUT"/*.tar; do
    # Importing an unchanged archive is cheap, but skip it when containerd already has that digest.
    ctr -a "$sock" -n k8s.io images import "$f" >/dev/null
  done
  log "images in containerd: $(ctr -a "$sock" -n k8s.io images ls -q | grep -c '^localhost/ouroboros/')"
}

case "${1:-}" in
  build) timed images-build build_all ;;
  import) timed images-import import_all "${2:?containerd socket}" ;;
  *) echo "usage: $0 build | import SOCKET" >&2; exit 2 ;;
esac
