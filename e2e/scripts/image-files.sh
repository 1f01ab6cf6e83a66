# What goes into the operator's and the sidecar's images, as entries for mkimage.py: SRC:DEST (a file
# copied to DEST), DEST@LINK (a symlink) or DEST/ (a directory). Both image builds read them:
# images.sh writes the OCI archives the local cluster imports, image-context.sh the build context of
# images/*.Containerfile. Source it after lib.sh.
APP_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -1)
RELEASE_DIR="$CARGO_TARGET_DIR/release"
STATIC_DIR="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"
# member-lock and restore-once are static: self-hosted and restored members copy them into etcd
# containers, whose images may have no shell and no libc (see backup-sidecar/member-lock). The copy
# runs the sidecar image's /bin/cp (operator/src/objects/member_pod.rs, copy_helper).
SIDECAR_HELPERS=("$STATIC_DIR/member-lock:/usr/local/bin/member-lock"
                 "$STATIC_DIR/restore-once:/usr/local/bin/restore-once")

BUSYBOX_APPLETS=(sh ls cat cp mv rm mkdir rmdir ln echo sleep test "[" env ps kill wget nslookup hostname df du find grep sed head tail wc tar gzip gunzip sha256sum date id true false)

busybox_entries() {
  echo "/bin/busybox:/bin/busybox"
  for a in "${BUSYBOX_APPLETS[@]}"; do echo "bin/$a@busybox"; done
  echo "tmp/"
}

# Shared libraries a dynamically linked binary needs, as SRC:DEST entries at the same paths.
lib_entries() {
  # mawk has no \s: match the loader line by its leading tab instead.
  ldd "$1" | awk '/=> \// {print $3} /^[ \t]*\// {print $1}' | sort -u | while read -r lib; do
    echo "$(readlink -f "$lib"):$lib"
  done
}

# rust_image_entries BIN NAME [SRC:DEST...]: every entry of a Rust binary's image: BIN as
# /usr/local/bin/NAME, its shared libraries, busybox and the extra files given.
rust_image_entries() {
  local bin=$1 name=$2; shift 2
  echo "$bin:/usr/local/bin/$name"
  lib_entries "$bin"
  busybox_entries
  local e; for e in "$@"; do echo "$e"; done
}
