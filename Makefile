# The two commands the README promises: `make demo` and `make test`. Every step is idempotent and
# cached outside the work tree (Go builds in $(OUROBOROS_CACHE), Cargo's target dir too), and every
# stage prints its time.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export OUROBOROS_CACHE ?= /var/cache/ouroboros
# One target dir per checkout: Cargo decides freshness by mtimes, so two checkouts sharing one would
# each take the other's newer artifacts for their own (seen: a clean clone's build made a later edit
# in another checkout look already built). The key is the checkout's path, so clones at the same path
# keep their cache.
CHECKOUT_KEY := $(shell printf '%s' '$(CURDIR)' | sha256sum | cut -c1-12)
export CARGO_TARGET_DIR ?= $(OUROBOROS_CACHE)/cargo-target/$(CHECKOUT_KEY)
export CARGO_TERM_COLOR ?= never
K8S_VERSION := $(shell sed -n 's/^K8S_VERSION=//p' e2e/scripts/versions.env)
KUBECTL := $(OUROBOROS_CACHE)/k8s/$(K8S_VERSION)/bin/kubectl --kubeconfig $(shell e2e/cluster.sh kubeconfig)
T := e2e/scripts/timed.sh
# Nodes of the local cluster: one for `make demo` and `make deploy`; `make test` runs every tier on
# three (node2 and node3 in network namespaces of their own, docs/local-cluster.md).
NODES ?= 1

.PHONY: help demo test deps build crds lint unit cluster-up cluster-down images deploy e2e self-hosted lifecycle helm containerfile-check multinode self-hosted-nodes undeploy clean-cache check-fresh-root bench-chart

help:
	@echo "make demo    - build everything, start the local cluster, deploy the operator, create an EtcdCluster"
	@echo "make test    - install, build and run every test tier (lint, unit, e2e on the local cluster)"
	@echo "make cluster-down - stop the local cluster and remove everything it created"

## deps: Debian packages and the upstream Go builds (Kubernetes, etcd, CoreDNS, MinIO).
## A checkout's first Cargo build starts from a copy of the newest other checkout's target dir
## (seed-cargo-target.sh says why that is safe): a fresh CI clone otherwise builds every crate cold.
deps:
	@$(T) deps e2e/scripts/build-all.sh
	@$(T) cargo-target-seed e2e/scripts/seed-cargo-target.sh

## build: the workspace's binaries in release (the images are made from them).
## The failpoints operator is built with the same package selection as the workspace build
## (--workspace), so Cargo unifies the same features and compiles every dependency once; only the
## operator crate is compiled twice. (With -p ouroboros-operator the operator's graph alone is unified
## and about a hundred dependency units were compiled a second time.) The plain build runs second: it
## points release/etcd-operator back at the binary without failpoints, which the last check asserts.
build: deps
	@$(T) cargo-build-failpoints bash -c 'cargo build --release --locked --workspace --bin etcd-operator \
	  --features ouroboros-operator/failpoints && \
	  cp $(CARGO_TARGET_DIR)/release/etcd-operator $(CARGO_TARGET_DIR)/release/etcd-operator-failpoints'
	@$(T) cargo-build cargo build --release --workspace --bins --locked
	@grep -q OUROBOROS_FAILPOINTS $(CARGO_TARGET_DIR)/release/etcd-operator-failpoints || \
	  { echo "etcd-operator-failpoints was built without the failpoints feature" >&2; exit 1; }
	@! grep -q OUROBOROS_FAILPOINTS $(CARGO_TARGET_DIR)/release/etcd-operator || \
	  { echo "etcd-operator holds the failpoints feature: it must never be deployed so" >&2; exit 1; }
	@$(T) cargo-build-member-lock env CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
	  cargo build --release --locked --target x86_64-unknown-linux-gnu -p ouroboros-member-lock

crds:
	cargo run --release --locked -q -p ouroboros-crds --bin crdgen

lint: deps
	@$(T) fmt cargo fmt --all --check
	@$(T) clippy cargo clippy --release --workspace --all-targets --locked -- -D warnings

## unit: every test that needs no cluster (pure logic, CRD drift, HTTP endpoints, real etcd processes),
## the Helm chart against the kustomize base (helm lint, rendered objects compared), and the alert
## rules' unit tests (promtool test rules).
unit: deps
	@$(T) unit-tests bash -c 'source <(e2e/cluster.sh env) && cargo test --release --workspace --locked --exclude ouroboros-e2e'
	@$(T) helm-check e2e/scripts/helm-check.sh
	@$(T) rules-check e2e/scripts/rules-check.sh

images: build
	@$(T) images e2e/scripts/images.sh build

## containerfile-check: images/*.Containerfile built by buildah (from Debian) from the release binaries,
## their labels, user and files checked, and each binary run inside its image.
containerfile-check: build
	@$(T) containerfile-check e2e/scripts/containerfile-check.sh


## cluster-up retries once after a clean `down`: the first `up` over the leftovers of a killed session
## (processes gone, state and shims left) was seen to time out once, and the retry came up in 8 s.
cluster-up: deps images
	@$(T) cluster-up bash -c 'NODES=$(NODES) e2e/cluster.sh up || { echo "cluster up failed; retrying once after a clean down" >&2; e2e/cluster.sh down; NODES=$(NODES) e2e/cluster.sh up; }'

cluster-down:
	@$(T) cluster-down e2e/cluster.sh down

## deploy: the operator from deploy/ exactly as a user would, then wait for it to be Ready.
deploy: cluster-up
	@$(T) deploy e2e/scripts/deploy.sh

undeploy:
	$(KUBECTL) delete -k deploy --ignore-not-found --wait=false

## e2e: Rust tests against the running local cluster with the operator deployed.
e2e: deploy
	@$(T) pv-gc e2e/cluster.sh pv-gc
	@$(T) e2e-tests bash -c 'source <(e2e/cluster.sh env) && cargo test --release --locked -p ouroboros-e2e -- --test-threads=1'

## multinode: the several-node tests (#18): nodes stopped, partitioned, drained.
multinode: NODES = 3
multinode: deploy
	@$(T) pv-gc-multinode e2e/cluster.sh pv-gc
	@$(T) e2e-multinode bash -c 'source <(e2e/cluster.sh env) && cargo test --release --locked -p ouroboros-e2e --test e2e -- --ignored --test-threads=1 multinode::'

## self-hosted: kuberception, the cluster's own API server moved onto etcd the operator manages, its
## members on node1. It changes the cluster for good, so it runs after every other e2e test and
## before lifecycle rebuilds it.
self-hosted: e2e
	@$(T) e2e-self-hosted bash -c 'source <(e2e/cluster.sh env) && cargo test --release --locked -p ouroboros-e2e --test e2e -- --ignored --test-threads=1 self_hosted::'

## lifecycle: `down` leaves nothing behind and `up` comes back (it restarts the cluster).
lifecycle: self-hosted
	@$(T) cluster-lifecycle env NODES=$(NODES) e2e/scripts/check-lifecycle.sh

## helm: the Helm chart installed, upgraded and uninstalled on the cluster `lifecycle` brought back
## up empty (no other operator may run beside it), with an EtcdCluster under it.
helm: lifecycle
	@$(T) e2e-helm e2e/scripts/helm-tier.sh

## self-hosted-nodes: kuberception on three control-plane nodes, one member each, then power cycles
## of one node and of all; on a fresh cluster (`up` rebuilds one whose etcd was moved), and it moves
## the etcd again, so it runs last.
self-hosted-nodes: deps images
	@$(T) self-hosted-nodes-up bash -c 'NODES=3 e2e/cluster.sh up'
	@$(T) self-hosted-nodes-deploy e2e/scripts/deploy.sh
	@$(T) e2e-self-hosted-nodes bash -c 'source <(e2e/cluster.sh env) && cargo test --release --locked -p ouroboros-e2e --test e2e -- --ignored --test-threads=1 self_hosted_nodes::'

## test: every tier on the three-node cluster.
test: NODES = 3
test: lint unit containerfile-check e2e multinode self-hosted lifecycle helm self-hosted-nodes
	@echo "make test: all tiers passed"

demo: deploy
	@$(T) demo e2e/scripts/demo.sh

## check-fresh-root: the install and build steps in a minimal Debian root, holding only the README's
## prerequisites (docs/local-cluster.md, "A fresh machine"). Not in `test`: its cold Cargo build is long.
check-fresh-root:
	@$(T) check-fresh-root e2e/scripts/check-fresh-root.sh build

## bench-chart: docs/bench/backup-restore.svg from the rows the backup and restore benchmarks append
## to docs/bench/*.csv (docs/benchmarks.md); the newest row of each size and method is drawn.
bench-chart:
	@$(T) bench-chart python3 e2e/bench/chart.py

clean-cache:
	rm -rf $(OUROBOROS_CACHE)
