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
# Only the newest KEEP target dirs are kept (each clone at a new path leaves one, several GiB).
source "$(dirname "$0")/lib.sh"
KEEP=${KEEP:-3}

target=$CARGO_TARGET_DIR
parent=$(dirname "$target")
if [ -d "$target" ]; then
  echo "cargo target $target exists; nothing to seed"
elif [ "$parent" != "$OUROBOROS_CACHE/cargo-target" ]; then
  echo "cargo target $target is not under $OUROBOROS_CACHE/cargo-target; not seeding it"
else
  # The most recently used sibling: its artifacts are the likeliest to match Cargo.lock.
  seed=$(find "$parent" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2-)
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
touch "$target"   # the newest used, for the next seed and for the pruning below

# Leftovers of copies cut short, then every target dir past the newest KEEP.
find "$parent" -mindepth 1 -maxdepth 1 -type d -name '*.seeding.*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
find "$parent" -mindepth 1 -maxdepth 1 -type d ! -name '*.seeding.*' -printf '%T@ %p\n' | sort -rn |
  tail -n +$((KEEP + 1)) | cut -d' ' -f2- | while read -r old; do
    [ "$old" = "$target" ] && continue
    echo "removing the unused target dir $old"
    rm -rf "$old"
  done
