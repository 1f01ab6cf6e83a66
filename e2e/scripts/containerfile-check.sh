#!/usr/bin/env bash
# containerfile-check.sh: builds images/operator.Containerfile and images/sidecar.Containerfile with a
# real buildah, from the contexts e2e/scripts/image-context.sh assembles out of `make build`'s
# binaries, and checks what came out:
#   - the OCI labels (version and revision as passed, licenses and source as in Cargo.toml), the user
#     (the Deployment's runAsUser:runAsGroup for the operator, UNPRIVILEGED_ID for the sidecar) and
#     the entrypoint;
#   - the image's files are the context's (same paths, types, modes, sizes, symlink targets), all
#     owned by root, with the binaries and, in the sidecar, the static helpers and /bin/cp;
#   - each binary runs inside its image as 65532 (`buildah run`, runc, no network): --help loads
#     every shared library from the image alone; the sidecar's /bin/cp copies member-lock and
#     restore-once into a volume exactly as the operator's init containers do (copy_helper);
#   - a second, separately assembled operator context builds to the same image ID (--timestamp 0).
# Rootful buildah with the vfs driver and a throwaway storage under /var/tmp, removed at exit; it
# needs no registry (both images are FROM scratch). Exits non-zero on any failure.
source "$(dirname "$0")/lib.sh"
# shellcheck source=image-files.sh
source "$SCRIPTS_DIR/image-files.sh"

command -v buildah >/dev/null || { log "buildah missing (e2e/scripts/install-debs.sh installs it)"; exit 1; }
[ "$(id -u)" = 0 ] || { log "containerfile-check: run as root (rootful buildah)"; exit 1; }

WORK=$(mktemp -d /var/tmp/containerfile-check.XXXXXX)
B=(buildah --storage-driver vfs --root "$WORK/storage" --runroot "$WORK/run")
cleanup() {
  "${B[@]}" rm --all >/dev/null 2>&1 || true
  # --one-file-system: never follow a mount that outlived its container into the host.
  rm -rf --one-file-system "$WORK" || log "containerfile-check: could not remove $WORK"
}
trap cleanup EXIT

VERSION=$APP_VERSION
REVISION=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
LICENSE=$(sed -n 's/^license = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -1)
SOURCE=$(sed -n 's/^repository = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -1)
OPERATOR_USER="$(sed -n 's/^ *runAsUser: *//p' "$REPO_ROOT/deploy/base/deployment.yaml" | head -1):$(sed -n 's/^ *runAsGroup: *//p' "$REPO_ROOT/deploy/base/deployment.yaml" | head -1)"
UNPRIVILEGED=$(sed -n 's/^pub const UNPRIVILEGED_ID: i64 = \([0-9]*\);/\1/p' "$REPO_ROOT/operator/src/vocabulary.rs")
SIDECAR_USER="$UNPRIVILEGED:$UNPRIVILEGED"

name_of() { case $1 in operator) echo etcd-operator ;; sidecar) echo etcd-backup-sidecar ;; esac; }
ref_of() { echo "localhost/ouroboros-check/$(name_of "$1"):$VERSION"; }

make_contexts() {
  bash "$SCRIPTS_DIR/image-context.sh" operator "$WORK/ctx-operator" &&
    bash "$SCRIPTS_DIR/image-context.sh" sidecar "$WORK/ctx-sidecar"
}

# build IMAGE CONTEXT TAG: buildah bud as `docker build` would, reproducibly (fixed timestamps, no
# buildah version label); prints the image ID.
build() {
  nice -n 19 "${B[@]}" bud --quiet --layers=false --timestamp 0 --identity-label=false \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg SOURCE="$SOURCE" \
    -f "$REPO_ROOT/images/$1.Containerfile" -t "$3" "$2"
}

build_image() {
  build "$1" "$WORK/ctx-$1" "$(ref_of "$1")" >"$WORK/id-$1"
}

# verify_image IMAGE: every check above for one image; each prints one line, all run, any failure
# fails the stage.
verify_image() {
  local img=$1 name ref ctx c mnt rc=0 user f
  name=$(name_of "$img") ref=$(ref_of "$img") ctx="$WORK/ctx-$img/rootfs"
  check() { local what=$1; shift; if "$@"; then log "  ok   $img: $what"; else log "  FAIL $img: $what"; rc=1; fi; }
  [ "$img" = operator ] && user=$OPERATOR_USER || user=$SIDECAR_USER

  "${B[@]}" inspect --type image "$ref" >"$WORK/inspect-$img.json" || return 1
  check "labels, user $user, entrypoint" python3 - "$WORK/inspect-$img.json" "$name" "$VERSION" "$REVISION" \
    "$LICENSE" "$SOURCE" "$user" <<'PY'
import json, sys
path, name, version, revision, license, source, user = sys.argv[1:]
config = json.load(open(path))["OCIv1"]["config"]
labels = config.get("Labels") or {}
want = {"title": name, "version": version, "revision": revision, "licenses": license, "source": source}
bad = [f"label {k}: {labels.get('org.opencontainers.image.' + k)!r} != {v!r}"
       for k, v in want.items() if labels.get("org.opencontainers.image." + k) != v]
if not labels.get("org.opencontainers.image.description"):
    bad.append("label description missing")
if config.get("User") != user:
    bad.append(f"user {config.get('User')!r} != {user!r}")
if config.get("Entrypoint") != [f"/usr/local/bin/{name}"]:
    bad.append(f"entrypoint {config.get('Entrypoint')!r}")
for b in bad:
    print("    " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY

  c=$("${B[@]}" from --pull=never "$ref") && mnt=$("${B[@]}" mount "$c") || return 1
  listing() { (cd "$1" && find . -mindepth 1 -printf '%p %y %m %s %l\n' | sort); }
  check "files are the context's ($(find "$ctx" -mindepth 1 | wc -l) entries)" \
    diff <(listing "$ctx") <(listing "$mnt")
  check "every file owned by 0:0" test -z "$(find "$mnt" \( ! -user 0 -o ! -group 0 \) -print -quit)"
  local want=("/usr/local/bin/$name")
  [ "$img" = sidecar ] && want+=(/usr/local/bin/member-lock /usr/local/bin/restore-once /bin/cp)
  for f in "${want[@]}"; do check "$f executable" test -x "$mnt$f"; done

  local run=("${B[@]}" run --network none)
  check "runs as $user" test "$("${run[@]}" "$c" -- /bin/id -u):$("${run[@]}" "$c" -- /bin/id -g)" = "$user"
  check "$name --help runs inside the image" "${run[@]}" "$c" -- "/usr/local/bin/$name" --help >/dev/null
  if [ "$img" = sidecar ]; then
    # copy_helper's command, into a volume as a member pod's emptyDir (writable by the pod's user).
    mkdir -p "$WORK/helpers" && chmod 1777 "$WORK/helpers"
    for f in member-lock restore-once; do
      check "/bin/cp hands $f to a volume as copy_helper does" \
        "${run[@]}" -v "$WORK/helpers:/ouroboros" "$c" -- /bin/cp "/usr/local/bin/$f" "/ouroboros/$f"
      check "the copy of $f is intact" cmp -s "$ctx/usr/local/bin/$f" "$WORK/helpers/$f"
    done
  fi
  "${B[@]}" rm "$c" >/dev/null || rc=1
  return "$rc"
}

# A context assembled again elsewhere builds to the same image: nothing of the build's time or place
# leaks into it.
reproducible() {
  local again
  bash "$SCRIPTS_DIR/image-context.sh" operator "$WORK/ctx-again" || return 1
  again=$(build operator "$WORK/ctx-again" "localhost/ouroboros-check/again:$VERSION") || return 1
  if [ "$again" = "$(cat "$WORK/id-operator")" ]; then
    log "  ok   operator: rebuilt from a new context to the same image ${again:0:12}"
  else
    log "  FAIL operator: rebuilt to ${again:0:12}, first build was $(cut -c1-12 "$WORK/id-operator")"
    return 1
  fi
}

failed=()
log "containerfile-check: $VERSION, revision $REVISION, $(buildah --version), storage $WORK"
timed containerfile-contexts make_contexts || exit 1
for img in operator sidecar; do
  if timed "containerfile-build-$img" build_image "$img"; then
    log "  $(ref_of "$img") $(cut -c1-12 "$WORK/id-$img"), $("${B[@]}" images --noheading --format '{{.Size}}' "$(ref_of "$img")")"
    timed "containerfile-verify-$img" verify_image "$img" || failed+=("verify-$img")
  else
    failed+=("build-$img")
  fi
done
[ ${#failed[@]} -gt 0 ] || timed containerfile-reproducible reproducible || failed+=(reproducible)
if [ ${#failed[@]} -gt 0 ]; then
  log "containerfile-check: FAILED: ${failed[*]}"
  exit 1
fi
log "containerfile-check: both images built and checked"
