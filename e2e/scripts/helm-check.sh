#!/usr/bin/env bash
# Offline checks of the Helm chart deploy/helm/ouroboros; no cluster is contacted.
#  1. the chart's crds/ are byte-identical copies of crds/*.yaml (crdgen's output);
#  2. `helm lint --strict`, with the default values and with every optional part on;
#  3. the default render installs what `kubectl kustomize deploy/base` does, and with
#     checkpointer.enabled what deploy/self-hosted does: the same objects (kind, name, namespace)
#     with the same contents, less Helm's standard labels and the Namespace object, which the chart
#     leaves to `--create-namespace`. The operator's env may hold more variables than the base's
#     only where each is a flag of operator/src/cli.rs set to that flag's default;
#  4. the optional parts fit together (Service, ServiceMonitor, PrometheusRule, NetworkPolicy,
#     checkpointer), and values the operator would refuse are refused at render time.
# Needs helm (e2e/scripts/build-tools.sh) and kubectl (build-k8s.sh). Prints what differs; exits 1.
source "$(dirname "$0")/lib.sh"

CHART="$REPO_ROOT/deploy/helm/ouroboros"
HELM="${HELM:-$OUROBOROS_CACHE/tools/helm/$HELM_VERSION/helm}"
KUBECTL="${KUBECTL:-$OUROBOROS_CACHE/k8s/$K8S_VERSION/bin/kubectl}"
for bin in "$HELM" "$KUBECTL"; do
  [ -x "$bin" ] || { log "missing $bin: run e2e/scripts/build-all.sh"; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || { log "python3-yaml is missing (e2e/scripts/install-debs.sh)"; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Keep Helm off the user's config and off any cluster: a KUBECONFIG that does not exist.
export HELM_CACHE_HOME="$tmp/helm/cache" HELM_CONFIG_HOME="$tmp/helm/config" HELM_DATA_HOME="$tmp/helm/data"
export KUBECONFIG="$tmp/no-cluster"
failed=0
fail() { log "FAIL: $*"; failed=1; }

# 1. CRD copies.
crds=(etcdclusters.yaml etcdbackups.yaml etcdrestores.yaml)
for f in "${crds[@]}"; do
  cmp -s "$REPO_ROOT/crds/$f" "$CHART/crds/$f" ||
    fail "deploy/helm/ouroboros/crds/$f differs from crds/$f (copy it: cp crds/$f deploy/helm/ouroboros/crds/)"
done
extra="$(ls "$CHART/crds" | grep -vxF "$(printf '%s\n' "${crds[@]}")" || true)"
[ -z "$extra" ] || fail "deploy/helm/ouroboros/crds/ holds files crds/ does not: $extra"
[ "$failed" = 1 ] || log "crds: the chart's 3 CRDs are identical to crds/*.yaml"

# 2. Lint.
all_on="$CHART/ci/all-enabled-values.yaml"
"$HELM" lint --strict --kube-version "$K8S_VERSION" "$CHART" >"$tmp/lint.out" 2>&1 || { cat "$tmp/lint.out" >&2; fail "helm lint --strict (defaults)"; }
"$HELM" lint --strict --kube-version "$K8S_VERSION" "$CHART" -f "$all_on" >"$tmp/lint.out" 2>&1 ||
  { cat "$tmp/lint.out" >&2; fail "helm lint --strict (ci/all-enabled-values.yaml)"; }
[ "$failed" = 1 ] || log "lint: helm lint --strict passes with the defaults and with every optional part on"

# 3. Equality with the kustomize bases.
# For the Kubernetes version the tests run (helm template's own default is 1.20, below the chart's
# kubeVersion).
render() { "$HELM" template ouroboros "$CHART" --namespace ouroboros-system --include-crds --kube-version "$K8S_VERSION" "$@"; }
render >"$tmp/chart.yaml"
render --set checkpointer.enabled=true >"$tmp/chart-self-hosted.yaml"
render -f "$all_on" >"$tmp/chart-all.yaml"
"$KUBECTL" kustomize "$REPO_ROOT/deploy/base" >"$tmp/base.yaml"
"$KUBECTL" kustomize "$REPO_ROOT/deploy/self-hosted" >"$tmp/self-hosted.yaml"

# 4. Values the operator refuses must not render; the accepted forms must reach the operator.
printf 'etcdImage: {tagFormat: "{version}-0"}\n' >"$tmp/k8s-tags.yaml"
render -f "$tmp/k8s-tags.yaml" >"$tmp/chart-k8s-tags.yaml"
refused() { # refused WHAT ARGS...: the render must fail
  local what=$1; shift
  if render "$@" >/dev/null 2>&1; then fail "the chart renders $what"; fi
}
printf 'etcdImage: {tagFormat: "latest"}\n' >"$tmp/bad-tag.yaml"
refused 'etcdImage.tagFormat without {version}' -f "$tmp/bad-tag.yaml"
refused 'logFormat=xml' --set logFormat=xml
refused 'two replicas without leader election' --set leaderElection=false
refused 'a networkPolicy cluster without a namespace' --set networkPolicy.enabled=true --set 'networkPolicy.clusters[0].name=x'

python3 - "$REPO_ROOT" "$tmp" <<'PY' || failed=1
import json, re, sys, yaml

root, tmp = sys.argv[1], sys.argv[2]
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
               "app.kubernetes.io/version"}
problems = []


def load(name):
    with open(f"{tmp}/{name}") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def cli_defaults():
    """env var -> the operator's default for it, from operator/src/cli.rs's #[arg(...)] attributes."""
    src = open(f"{root}/operator/src/cli.rs").read()
    cargo = open(f"{root}/Cargo.toml").read()
    version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
    out = {}
    for attr in re.findall(r"#\[arg\((.*?)\)\]\s*pub ", src, re.S):
        env = re.search(r'env = "([^"]+)"', attr)
        if not env:
            continue
        m = re.search(r'default_value = concat!\("([^"]*)", env!\("CARGO_PKG_VERSION"\)\)', attr)
        if m:
            out[env.group(1)] = m.group(1) + version
        elif m := re.search(r'default_value = "([^"]*)"', attr):
            out[env.group(1)] = m.group(1)
        elif m := re.search(r"default_value_t = ([\w:]+)", attr):
            v = m.group(1)
            out[env.group(1)] = v.split("::")[-1].lower() if "::" in v else v
        else:
            out[env.group(1)] = None  # required, or no default
    return out


def strip_helm_labels(obj):
    for meta in (obj.get("metadata"), ((obj.get("spec") or {}).get("template") or {}).get("metadata")):
        if meta and "labels" in meta:
            meta["labels"] = {k: v for k, v in meta["labels"].items() if k not in HELM_LABELS}


def diff(a, b, path, out):
    """Paths where a (the base's) and b (the chart's) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                out.append(f"{path}.{k}: only in the base: {json.dumps(a[k])}")
            elif k not in a:
                out.append(f"{path}.{k}: only in the chart: {json.dumps(b[k])}")
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: base {json.dumps(a)} != chart {json.dumps(b)}")


def compare(base_file, chart_file, defaults):
    base, chart = load(base_file), load(chart_file)
    key = lambda o: (o["kind"], o["metadata"]["name"])
    chart_by = {key(o): o for o in chart}
    seen, allowed = set(), []
    for want in base:
        if want["kind"] == "Namespace":
            continue  # the chart installs into --namespace (--create-namespace makes it)
        k = key(want)
        seen.add(k)
        got = chart_by.get(k)
        if got is None:
            problems.append(f"{chart_file}: no {k[0]}/{k[1]} (deploy/{base_file} has it)")
            continue
        strip_helm_labels(want)
        strip_helm_labels(got)
        if want["kind"] in ("Deployment", "DaemonSet"):
            for i, (wc, gc) in enumerate(zip(want["spec"]["template"]["spec"]["containers"],
                                             got["spec"]["template"]["spec"]["containers"])):
                wenv = {e["name"]: e for e in wc.get("env", [])}
                genv = {e["name"]: e for e in gc.get("env", [])}
                for name in [n for n in genv if n not in wenv]:
                    e = genv[name]
                    if name not in defaults:
                        problems.append(f"vs deploy/{base_file[:-5]}: {k[0]}/{k[1]} container {gc['name']}: env {name} is no flag of operator/src/cli.rs")
                    elif "valueFrom" in e or e.get("value") != defaults[name]:
                        problems.append(f"vs deploy/{base_file[:-5]}: {k[0]}/{k[1]} container {gc['name']}: env {name}={json.dumps(e.get('value'))}"
                                        f" but the operator's default is {json.dumps(defaults[name])}")
                    else:
                        allowed.append(name)
                # Compared by name; the extras checked above.
                wc["env"] = wenv
                gc["env"] = {n: e for n, e in genv.items() if n in wenv}
        out = []
        diff(want, got, f"vs deploy/{base_file[:-5]}: {k[0]}/{k[1]}", out)
        problems.extend(out)
    for k in chart_by:
        if k not in seen:
            problems.append(f"{chart_file}: {k[0]}/{k[1]} is not in deploy/{base_file}")
    note = f"; env at the operator's defaults: {', '.join(sorted(set(allowed)))}" if allowed else ""
    return f"{len(seen)} objects equal (Namespace skipped, Helm labels ignored{note})"


defaults = cli_defaults()
n = len(problems)
msg = compare("base.yaml", "chart.yaml", defaults)
print(f"[equal] default values = deploy/base: {msg}" if len(problems) == n else "[equal] default values != deploy/base", file=sys.stderr)
n = len(problems)
msg = compare("self-hosted.yaml", "chart-self-hosted.yaml", defaults)
print(f"[equal] checkpointer.enabled = deploy/self-hosted: {msg}" if len(problems) == n else "[equal] checkpointer.enabled != deploy/self-hosted", file=sys.stderr)

# The optional parts, all on.
n = len(problems)
objs = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in load("chart-all.yaml")}
def one(kind, name, ns="ouroboros-system"):
    o = objs.get((kind, ns, name))
    if o is None:
        problems.append(f"all optional parts on: no {kind} {ns}/{name}")
    return o or {}
subset = lambda small, big: all(big.get(k) == v for k, v in small.items())
dep, svc, sm = one("Deployment", "etcd-operator"), one("Service", "etcd-operator-metrics"), one("ServiceMonitor", "etcd-operator")
pr, ds = one("PrometheusRule", "etcd-operator"), one("DaemonSet", "etcd-checkpointer")
if dep and svc and sm and pr and ds:
    pod = dep["spec"]["template"]
    container = pod["spec"]["containers"][0]
    if not subset(svc["spec"]["selector"], pod["metadata"]["labels"]):
        problems.append("the metrics Service selects no operator pod")
    if not subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]):
        problems.append("the ServiceMonitor selects no metrics Service")
    if sm["spec"]["endpoints"][0]["port"] not in [p["name"] for p in svc["spec"]["ports"]]:
        problems.append("the ServiceMonitor's port is not the Service's")
    if svc["spec"]["ports"][0]["targetPort"] not in [p["name"] for p in container["ports"]]:
        problems.append("the metrics Service's targetPort is no port of the operator")
    rules = yaml.safe_load(open(f"{root}/deploy/helm/ouroboros/files/ouroboros.rules.yaml")) or {}
    if pr["spec"]["groups"] != (rules.get("groups") or []):
        problems.append("the PrometheusRule's groups differ from files/ouroboros.rules.yaml")
    if ds["spec"]["template"]["spec"]["containers"][0]["image"] != container["image"]:
        problems.append("the checkpointer's image is not the operator's")
    env = {e["name"]: e.get("value") for e in container["env"]}
    if env.get("OUROBOROS_WATCH_NAMESPACE") != "default":
        problems.append("watchNamespace does not reach OUROBOROS_WATCH_NAMESPACE")
    for name in ("example", "other"):
        np = one("NetworkPolicy", f"{name}-etcd", "default")
        if np:
            peer = np["spec"]["ingress"][0]["from"][0]
            if peer["namespaceSelector"]["matchLabels"] != {"kubernetes.io/metadata.name": "ouroboros-system"} \
                    or not subset(peer["podSelector"]["matchLabels"], pod["metadata"]["labels"]):
                problems.append(f"NetworkPolicy {name}-etcd does not admit the operator's pods")
    one("NetworkPolicy", "etcd-restore-drills", "default")
    drills = [k for k in objs if k[0] == "NetworkPolicy" and k[2] == "etcd-restore-drills"]
    if len(drills) != 1:
        problems.append(f"expected one drill NetworkPolicy per namespace, got {len(drills)}")
k8s = [o for o in load("chart-k8s-tags.yaml") if o["kind"] == "Deployment"][0]
if {"name": "OUROBOROS_ETCD_IMAGE_TAG_FORMAT", "value": "{version}-0"} not in k8s["spec"]["template"]["spec"]["containers"][0]["env"]:
    problems.append("etcdImage.tagFormat {version}-0 does not reach OUROBOROS_ETCD_IMAGE_TAG_FORMAT")
if len(problems) == n:
    print(f"[fit] all optional parts on: {len(objs)} objects; Service, ServiceMonitor, PrometheusRule "
          "(files/ouroboros.rules.yaml), NetworkPolicies and checkpointer fit the operator", file=sys.stderr)

for p in problems:
    print(f"DIFF: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

if [ "$failed" = 1 ]; then log "helm-check: FAILED"; exit 1; fi
log "helm-check: chart deploy/helm/ouroboros passed (helm $HELM_VERSION)"
