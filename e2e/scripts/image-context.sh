#!/usr/bin/env bash
# image-context.sh operator|sidecar DIR: the build context of images/<operator|sidecar>.Containerfile
# in DIR, from the release binaries `make build` made: DIR/rootfs holds the files of the image (the
# same entries e2e/scripts/images.sh puts into its archives: the binary, the shared libraries `ldd`
# names, busybox, and the sidecar's static helpers), which the Containerfile copies onto scratch.
# DIR/rootfs is replaced; mtimes are fixed, so unchanged binaries give the same layer.
#
#   e2e/scripts/image-context.sh operator /tmp/ctx
#   docker build -f images/operator.Containerfile --build-arg VERSION=0.1.0 -t <ref> /tmp/ctx
source "$(dirname "$0")/lib.sh"
# shellcheck source=image-files.sh
source "$SCRIPTS_DIR/image-files.sh"

case "${1:-}" in
  operator) name=etcd-operator extra=() ;;
  sidecar) name=etcd-backup-sidecar extra=("${SIDECAR_HELPERS[@]}") ;;
  *) echo "usage: $0 operator|sidecar DIR" >&2; exit 2 ;;
esac
dir=${2:?usage: $0 operator|sidecar DIR}
bin="$RELEASE_DIR/$name"
for f in "$bin" "${extra[@]%%:*}" /bin/busybox; do
  [ -x "$f" ] || { log "image-context: $f is missing (make build; busybox-static for /bin/busybox)"; exit 1; }
done

# populate ROOT ENTRY...: the files of mkimage.py's entries (see image-files.sh) under ROOT.
populate() {
  local root=$1 spec src dest; shift
  for spec in "$@"; do
    case $spec in
      *:*) src=${spec%%:*} dest=$root/${spec#*:}
           mkdir -p "$(dirname "$dest")"
           cp --preserve=mode "$src" "$dest" ;;
      *@*) dest=$root/${spec%%@*}
           mkdir -p "$(dirname "$dest")"
           ln -sfn "${spec#*@}" "$dest" ;;
      */)  mkdir -p "$root/$spec" ;;
      *)   log "image-context: bad entry $spec"; return 1 ;;
    esac
  done
}

umask 022
mkdir -p "$dir"
rm -rf "$dir/rootfs"
mapfile -t entries < <(rust_image_entries "$bin" "$name" "${extra[@]}")
populate "$dir/rootfs" "${entries[@]}"
# Like mkimage.py's layers: every mtime 0, so the context (and a COPY of it) is reproducible.
find "$dir/rootfs" -exec touch -h -d @0 {} +
log "image-context: $name $APP_VERSION in $dir/rootfs ($(find "$dir/rootfs" -type f | wc -l) files, $(du -sh "$dir/rootfs" | cut -f1))"
