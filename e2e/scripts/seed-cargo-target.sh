#!/usr/bin/env bash
# seed-cargo-target.sh: a checkout's first build starts from a copy of another checkout's target dir.
#
# Why: target dirs are one per checkout (Cargo judges a workspace crate's freshness by file times, so
# two checkouts sharing one take each other's newer artifacts for their own), and CI builds in a fresh
# clone at a path of its own: a cold Cargo build there is about 30 minutes of CI's 90 on 2 cores.
# Why a copy is safe: crates from crates.io are fingerprinted by their version and flags, not by
# times, so their copied artifacts are reused as they are; the workspace's own crates are rebuilt,
# because every file of a new clone is newer than anything in the copy (and their fingerprints name
# the old checkout's paths). A plain copy, not hard links: rustc rewrites some outputs in place.
#
# Only target dirs under $OUROBOROS_CACHE/cargo-target are seeded or pruned, and of those only
# Cargo's own (CACHEDIR.TAG), unused for PRUNE_DAYS days, with no build holding their lock.
source "$(dirname "$0")/lib.sh"
PRUNE_DAYS=${PRUNE_DAYS:-3}

target=$CARGO_TARGET_DIR
parent=$OUROBOROS_CACHE/cargo-target
if [ "$(dirname "$target")" != "$parent" ]; then
  echo "cargo target $target is not under $parent; not seeding or pruning anything"
  exit 0
fi
mkdir -p "$parent"

# When a target dir was last used: the newest of itself, its release dir and its deps (Cargo adds
# files there at every build that compiles something).
last_used() {
  stat -c %Y "$1" "$1/release" "$1/release/deps" 2>/dev/null | sort -n | tail -1
}
cargo_dirs() {
  find "$parent" -mindepth 1 -maxdepth 1 -type d ! -name '*.seeding.*' -exec test -f '{}/CACHEDIR.TAG' ';' -print
}

if [ -d "$target" ]; then
  echo "cargo target $target exists; nothing to seed"
else
  seed=$(cargo_dirs | while read -r d; do echo "$(last_used "$d") $d"; done | sort -rn | head -1 | cut -d' ' -f2-)
  if [ -z "$seed" ]; then
    echo "no other checkout's target dir to seed $target from: a cold build"
  else
    echo "seeding $target from $seed ($(du -sh "$seed" | cut -f1))"
    tmp="$target.seeding.$$"
    # Copied aside and renamed, so a copy cut short never looks like a target dir.
    cp -a "$seed" "$tmp"
    mv "$tmp" "$target"
  fi
fi
mkdir -p "$target"
touch "$target"

# Copies cut short, then Cargo's target dirs unused for PRUNE_DAYS days that no build holds.
find "$parent" -mindepth 1 -maxdepth 1 -type d -name '*.seeding.*' -mmin +120 -exec rm -rf '{}' + 2>/dev/null || true
now=$(date +%s)
cargo_dirs | while read -r d; do
  [ "$d" = "$target" ] && continue
  age_days=$(( (now - $(last_used "$d")) / 86400 ))
  [ "$age_days" -lt "$PRUNE_DAYS" ] && continue
  lock="$d/release/.cargo-lock"
  if [ -f "$lock" ] && ! flock -n "$lock" true; then
    continue
  fi
  echo "removing the target dir $d, unused for $age_days days"
  rm -rf "$d"
done
