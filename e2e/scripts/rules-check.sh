#!/usr/bin/env bash
# Offline checks of the Prometheus alerts the chart ships (deploy/helm/ouroboros/files/); no cluster
# or Prometheus is contacted:
#  1. `promtool check rules` (syntax, PromQL, templates; lint findings are fatal);
#  2. every alert has a `severity` of critical or warning, `summary`, `description` and a
#     `runbook_url` whose anchor is a heading of docs/runbooks.md (GitHub's anchors);
#  3. the unit tests cover every alert and severity with an evaluation where it fires, and every
#     alert with one where it must not;
#  4. `promtool test rules` on those unit tests.
# Needs promtool (e2e/scripts/build-tools.sh). Exits 1 on any failure.
source "$(dirname "$0")/lib.sh"

FILES="$REPO_ROOT/deploy/helm/ouroboros/files"
RULES="$FILES/ouroboros.rules.yaml"
TESTS="$FILES/ouroboros.rules.test.yaml"
PROMTOOL="${PROMTOOL:-$OUROBOROS_CACHE/tools/promtool/$PROMETHEUS_VERSION/promtool}"
[ -x "$PROMTOOL" ] || { log "missing $PROMTOOL: run e2e/scripts/build-tools.sh"; exit 1; }
python3 -c 'import yaml' 2>/dev/null || { log "python3-yaml is missing (e2e/scripts/install-debs.sh)"; exit 1; }
failed=0

log "promtool: $("$PROMTOOL" --version 2>&1 | head -1) ($PROMETHEUS_VERSION)"

# 1.
timed promtool-check "$PROMTOOL" check rules --lint=all --lint-fatal "$RULES" || failed=1

# 2 and 3.
python3 - "$RULES" "$TESTS" "$REPO_ROOT/docs/runbooks.md" <<'EOF' || failed=1
import re, sys, yaml
rules_path, tests_path, runbooks_path = sys.argv[1:]
RUNBOOK = "https://github.com/ouroboros-operator/ouroboros/blob/main/docs/runbooks.md#"

def slug(heading):
    # GitHub: lower case, drop punctuation but for '-' and '_', spaces to '-'.
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")

anchors = set()
for line in open(runbooks_path):
    m = re.match(r"#{1,6} (.*)", line)
    if m:
        anchors.add(slug(m.group(1)))

problems = []
alerts = {}  # name -> set of severities
for group in yaml.safe_load(open(rules_path))["groups"]:
    for rule in group["rules"]:
        if "alert" not in rule:
            continue
        name, labels, ann = rule["alert"], rule.get("labels", {}), rule.get("annotations", {})
        sev = labels.get("severity")
        if sev not in ("critical", "warning"):
            problems.append(f"{name}: severity {sev!r} is not critical or warning")
        alerts.setdefault(name, set()).add(sev)
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                problems.append(f"{name} ({sev}): no {key} annotation")
        url = ann.get("runbook_url", "")
        if url and not url.startswith(RUNBOOK):
            problems.append(f"{name}: runbook_url {url} is not under {RUNBOOK}")
        elif url and url[len(RUNBOOK):] not in anchors:
            problems.append(f"{name}: runbook_url anchor #{url[len(RUNBOOK):]} is no heading of docs/runbooks.md")

fires, silent = {}, set()
for test in yaml.safe_load(open(tests_path))["tests"]:
    for t in test.get("alert_rule_test", []):
        name = t["alertname"]
        exp = t.get("exp_alerts") or []
        if not exp:
            silent.add(name)
        for a in exp:
            fires.setdefault(name, set()).add(a.get("exp_labels", {}).get("severity"))
for name, sevs in sorted(alerts.items()):
    for sev in sorted(sevs - fires.get(name, set())):
        problems.append(f"{name}: no unit test where it fires with severity {sev}")
    if name not in silent:
        problems.append(f"{name}: no unit test where it must not fire")
for name in sorted(set(fires) | silent):
    if name not in alerts:
        problems.append(f"unit tests name {name}, which is no alert")

for p in problems:
    print(f"FAIL: {p}", file=sys.stderr)
n = sum(len(s) for s in alerts.values())
if not problems:
    print(f"{n} alerts ({len(alerts)} names): annotations, runbook anchors and test coverage complete", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

# 4. promtool resolves rule_files against the test file's directory.
timed promtool-test "$PROMTOOL" test rules "$TESTS" || failed=1

if [ "$failed" = 1 ]; then log "rules-check: FAILED"; exit 1; fi
log "rules-check: all passed"
