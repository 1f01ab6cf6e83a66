#!/usr/bin/env bash
# Debian packages the builds, the cluster and the tests need. Idempotent: apt-get skips what is there.
source "$(dirname "$0")/lib.sh"
PKGS=(protobuf-compiler containerd runc containernetworking-plugins iptables conntrack ethtool socat
      busybox-static catatonit iproute2 openssl curl kmod)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then log "Debian packages present"; exit 0; fi
log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
