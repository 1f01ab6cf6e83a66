#!/usr/bin/env bash
# check-fresh-root.sh [deps|build]: runs the project's install and build steps in a minimal Debian 12
# root (mmdebstrap --variant=minbase), holding only what the README names as prerequisites: root,
# make, Go >= 1.26 and Rust 1.95 (the host's toolchains, bind-mounted read-only). It reports the first
# dependency the scripts fail to install. A machine that already holds a package installed by hand
# cannot show this: CI there is green while a newcomer's first command fails.
#
#   deps   e2e/scripts/install-debs.sh only (a minute or two)
#   build  then `make build`: the Go builds (taken from this machine's cache unless FRESH_GO=1, since
#          they need nothing from Debian beyond what install-debs checks) and a cold Cargo build of
#          the whole workspace (etcd-client's protoc step, the C build scripts, the linker)
#
# Not part of `make test` (the cold Cargo build alone takes ~15 min on 2 cores); run it with
# `make check-fresh-root` after changing install steps, and note the result in docs/local-cluster.md.
source "$(dirname "$0")/lib.sh"
MODE=${1:-build}
ROOT=${FRESH_ROOT:-/var/tmp/ouroboros-fresh-root}
GO_ROOT=$(go env GOROOT)
RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
MOUNTS=()

cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

bind() { # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  MOUNTS+=("$2")
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

if ! command -v mmdebstrap >/dev/null; then
  log "installing mmdebstrap (Debian's package) to make the minimal root"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; }
fi

umount -R "$ROOT" 2>/dev/null || true
rm -rf "$ROOT"
# The host's own Debian sources, so the root sees the same archive a user's machine would.
SOURCES=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 || true)
log "minimal Debian 12 root in $ROOT (minbase + make)"
timed fresh-root-debootstrap mmdebstrap --quiet --variant=minbase --include=make bookworm "$ROOT" \
  ${SOURCES:+"$SOURCES"}

bind /proc "$ROOT/proc"
bind /sys "$ROOT/sys"
bind /dev "$ROOT/dev"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The prerequisites, read-only: nothing the scripts do may install into them.
bind "$GO_ROOT" "$ROOT/usr/local/go" ro
# rustup writes its own settings and temp files as it runs, so its home cannot be read-only.
bind "$RUSTUP_HOME" "$ROOT/root/.rustup"
mkdir -p "$ROOT/root/.cargo"
bind "$CARGO_HOME/bin" "$ROOT/root/.cargo/bin" ro
# Downloaded crates are only a cache of crates.io: share them to spare the download.
mkdir -p "$CARGO_HOME/registry"
bind "$CARGO_HOME/registry" "$ROOT/root/.cargo/registry"
if [ "${FRESH_GO:-0}" != 1 ]; then bind "$OUROBOROS_CACHE" "$ROOT/var/cache/ouroboros"; fi

mkdir -p "$ROOT/src"
# The work tree as it is (tracked files, uncommitted edits included), not the last commit.
git -C "$REPO_ROOT" ls-files -z | tar -C "$REPO_ROOT" --null -T - -c | tar -x -C "$ROOT/src"

case $MODE in
  deps) STEPS='e2e/scripts/install-debs.sh' ;;
  build) STEPS='e2e/scripts/install-debs.sh && CARGO_TARGET_DIR=/var/tmp/cargo-target make build' ;;
  *) echo "usage: $0 [deps|build]" >&2; exit 2 ;;
esac
log "running in the minimal root: $STEPS"
start=$SECONDS
if chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
  PATH=/usr/local/go/bin:/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  RUSTUP_TOOLCHAIN="$(sed -n 's/^channel = "\(.*\)"/\1/p' "$REPO_ROOT/rust-toolchain.toml")" \
  bash -c "cd /src && $STEPS" >"$ROOT/check.log" 2>&1; then
  log "fresh root: '$MODE' passed in $((SECONDS - start))s (log: $ROOT/check.log)"
else
  log "fresh root: '$MODE' FAILED after $((SECONDS - start))s; the first missing piece is in the log's end:"
  grep -m5 -E 'missing|not found|No such file|cannot find|error' "$ROOT/check.log" >&2 || true
  tail -30 "$ROOT/check.log" >&2
  exit 1
fi
