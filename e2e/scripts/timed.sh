#!/usr/bin/env bash
# timed.sh NAME CMD...: runs CMD and prints how long the stage took (also on failure).
name=$1; shift
start=$(date +%s)
printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$name" >&2
set +e
"$@"
rc=$?
printf '<== [%s] %s: %ss (exit %s)\n' "$(date +%H:%M:%S)" "$name" "$(( $(date +%s) - start ))" "$rc" >&2
exit $rc
