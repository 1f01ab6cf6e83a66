#!/usr/bin/env bash
# Every upstream build the cluster needs, each cached by version and skipped when already done.
source "$(dirname "$0")/lib.sh"
timed debian-packages "$SCRIPTS_DIR/install-debs.sh"
timed build-kubernetes "$SCRIPTS_DIR/build-k8s.sh" >/dev/null
timed build-etcd "$SCRIPTS_DIR/build-etcd.sh"
timed build-tools "$SCRIPTS_DIR/build-tools.sh"
