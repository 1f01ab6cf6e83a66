#!/usr/bin/env bash
# Debian packages the builds, the cluster and the tests need, then a check of what the build really
# uses (files and commands, not package names), so a missing piece fails here, naming its package,
# before any long build starts. Idempotent: apt-get skips what is there.
#
# Why each package (the minimal-root check, e2e/scripts/check-fresh-root.sh, finds a missing one):
#   protobuf-compiler + libprotobuf-dev  etcd-client's build runs protoc on etcd's .proto files, which
#                                        import google/protobuf/descriptor.proto (only in -dev)
#   gcc libc6-dev                        Rust links with `cc`; build scripts (ring) compile C
#   python3                              e2e/scripts/mkimage.py builds the images offline
#   python3-yaml                         e2e/scripts/helm-check.sh compares the chart's objects with
#                                        the kustomize base's
#   ca-certificates                      the Go module proxy and crates.io over HTTPS
#   containerd runc containernetworking-plugins iptables conntrack ethtool socat kmod iproute2
#                                        the local cluster's kubelet, runtime, CNI and kube-proxy
#   busybox-static catatonit             the images' shell and pause process
#   openssl curl                         certificates and S3/HTTP calls in the scripts
#   util-linux procps                    flock, setsid, mount; pkill in the cluster scripts
#   age                                  the e2e opens encrypted backups with the age CLI, as a user would
#   pigz zstd                            the backup benchmark's baselines: what a user would script
#                                        with a parallel gzip, or with zstd (e2e/bench/backup.sh)
#   buildah                              e2e/scripts/containerfile-check.sh builds images/*.Containerfile
#                                        as `docker build` would; rootful with the vfs driver it needs
#                                        no fuse-overlayfs, and `buildah run` uses runc (listed above)
source "$(dirname "$0")/lib.sh"

PKGS=(protobuf-compiler libprotobuf-dev gcc libc6-dev python3 python3-yaml ca-certificates
      containerd runc containernetworking-plugins iptables conntrack ethtool socat
      busybox-static catatonit iproute2 openssl curl kmod util-linux procps age pigz zstd buildah)

# What a fresh machine must bring itself (README "Quick start"): the scripts cannot install these.
check_prerequisites() {
  local bad=()
  [ "$(id -u)" = 0 ] || bad+=("root (the scripts install Debian packages and run a kubelet)")
  command -v apt-get >/dev/null || bad+=("a Debian system with apt-get (Debian 12 is tested)")
  if command -v go >/dev/null; then
    local gv; gv=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    # sort -V puts the smaller first: 1.26 must not sort after the installed version.
    [ "$(printf '1.26\n%s\n' "$gv" | sort -V | head -1)" = 1.26 ] || bad+=("Go >= 1.26 (found go$gv)")
  else
    bad+=("Go >= 1.26 on PATH (go)")
  fi
  command -v cargo >/dev/null || bad+=("Rust 1.95 on PATH (cargo; rust-toolchain.toml pins the version)")
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'install-debs: this machine lacks a prerequisite the scripts cannot install:\n' >&2
    printf '  - %s\n' "${bad[@]}" >&2
    exit 1
  fi
}

# check_installed: every file and command the later stages use, each with the package that brings it.
check_installed() {
  local bad=() entry what pkg
  local files=(
    "/usr/include/google/protobuf/descriptor.proto:libprotobuf-dev"
    "/usr/lib/cni/bridge:containernetworking-plugins"
    "/usr/lib/cni/host-local:containernetworking-plugins"
    "/usr/lib/cni/loopback:containernetworking-plugins"
    "/bin/busybox:busybox-static"
    "/usr/bin/catatonit:catatonit"
    "/etc/ssl/certs/ca-certificates.crt:ca-certificates"
    "/usr/lib/python3/dist-packages/yaml/__init__.py:python3-yaml"
    "/etc/containers/policy.json:golang-github-containers-common"
  )
  local cmds=(protoc:protobuf-compiler cc:gcc python3:python3 containerd:containerd
    containerd-shim-runc-v2:containerd ctr:containerd runc:runc iptables:iptables conntrack:conntrack
    ethtool:ethtool socat:socat ip:iproute2 openssl:openssl curl:curl modprobe:kmod flock:util-linux
    setsid:util-linux pkill:procps age:age age-keygen:age pigz:pigz zstd:zstd buildah:buildah)
  for entry in "${files[@]}"; do
    what=${entry%%:*} pkg=${entry##*:}
    [ -e "$what" ] || bad+=("file $what (Debian package $pkg)")
  done
  for entry in "${cmds[@]}"; do
    what=${entry%%:*} pkg=${entry##*:}
    command -v "$what" >/dev/null || bad+=("command $what (Debian package $pkg)")
  done
  # The C toolchain must link, not only exist: crt1.o and libc.so come from libc6-dev.
  if command -v cc >/dev/null && ! printf 'int main(void){return 0;}' | cc -x c -o /dev/null - 2>/dev/null; then
    bad+=("a working C compiler and linker: 'cc' cannot link a program (Debian packages gcc libc6-dev)")
  fi
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'install-debs: missing after install:\n' >&2
    printf '  - %s\n' "${bad[@]}" >&2
    exit 1
  fi
}

check_prerequisites
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  log "Debian packages present"
else
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
check_installed
log "build and cluster dependencies checked"
