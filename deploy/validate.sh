#!/usr/bin/env bash
# Validates what can be validated without Docker or a cluster: the alert
# rules (promtool, installed from Debian if missing) and their unit tests
# (prometheus/alerts.test.yml: every alert fires and stays silent in at
# least one case each), the Prometheus config,
# the Grafana dashboard (regenerated and compared, JSON structure, every
# metric it plots is one riskhost exports), the YAML of the compose file,
# and the Kubernetes manifests: their schema (kubernetes-validate --strict),
# policy (checkov, with the commented allow-list deploy/k8s/.checkov.yaml)
# and what they say of the server (settings it reads, secrets as files,
# image version, ports). Both Kubernetes tools come from PyPI, pinned, each
# into its own virtualenv under ${XDG_CACHE_HOME:-$HOME/.cache}/riskhost,
# installed on first use (checkov takes about a minute) and never again.
set -euo pipefail
cd "$(dirname "$0")"

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
# The manifests must be valid for the oldest Kubernetes they are meant for
# and the newest kubernetes-validate knows: an API or field missing from
# either fails.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)

cache="${XDG_CACHE_HOME:-$HOME/.cache}/riskhost"
# venv NAME MODULE SPEC: the virtualenv $cache/NAME holding SPEC, made and
# filled unless MODULE already imports there.
venv() {
    if ! "$cache/$1/bin/python" -c "import $2" >/dev/null 2>&1; then
        echo "installing $3 into $cache/$1" >&2
        python3 -m venv "$cache/$1"
        "$cache/$1/bin/pip" install --quiet --disable-pip-version-check "$3" >&2
    fi
}

if ! command -v promtool >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
promtool check rules prometheus/alerts.yml
promtool test rules prometheus/alerts.test.yml
# The config references the rules by their in-container path; check a copy.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed "s#/etc/prometheus/alerts.yml#$PWD/prometheus/alerts.yml#" prometheus/prometheus.yml > "$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

python3 grafana/build-dashboard.py >/dev/null
git diff --quiet -- grafana/dashboards/riskhost.json 2>/dev/null \
    || { echo "grafana/dashboards/riskhost.json is stale: commit the output of build-dashboard.py"; exit 1; }

# Every manifest but kustomization.yaml (not a Kubernetes object; the
# python checks below hold it to the manifests), against the API schemas,
# rejecting unknown fields.
manifests=()
for f in k8s/*.yaml; do [ "$f" = k8s/kustomization.yaml ] || manifests+=("$f"); done
venv "kubernetes-validate-$KUBERNETES_VALIDATE_VERSION" kubernetes_validate "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
for version in "${KUBERNETES_VERSIONS[@]}"; do
    "$cache/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION/bin/kubernetes-validate" \
        --strict --quiet --kubernetes-version "$version" "${manifests[@]}"
done
echo "k8s manifests valid for Kubernetes ${KUBERNETES_VERSIONS[*]}: ${#manifests[@]} files"

# Policy: every check of checkov's kubernetes framework passes but those
# k8s/.checkov.yaml skips, each with its reason. Offline: no download of
# the vendor's guidelines, no update check.
venv "checkov-$CHECKOV_VERSION" checkov "checkov==$CHECKOV_VERSION"
CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=true \
    "$cache/checkov-$CHECKOV_VERSION/bin/checkov" --directory k8s --framework kubernetes \
    --config-file k8s/.checkov.yaml --skip-download --compact --quiet \
    || { echo "checkov: fix the manifests, or allow the check in deploy/k8s/.checkov.yaml with its reason"; exit 1; }

python3 - <<'PY'
import json, re, pathlib, sys, yaml

root = pathlib.Path(".")
src = "\n".join(p.read_text() for d in ("../host/src", "../crates") for p in pathlib.Path(d).rglob("*.rs"))
exported = set(re.findall(r'"(riskhost_[a-z0-9_]+)"', src))
def base(name):
    return re.sub(r"_(bucket|sum|count)$", "", name)

dash = json.loads((root / "grafana/dashboards/riskhost.json").read_text())
assert dash["uid"] == "riskhost" and dash["panels"], "dashboard has no panels"
plotted = set()
for p in dash["panels"]:
    assert p["targets"], f"panel {p['title']} has no queries"
    for t in p["targets"]:
        # Prometheus targets have `expr`; ClickHouse ones `rawSql` (tables, not metrics).
        assert t.get("expr") or t.get("rawSql"), f"panel {p['title']} has an empty query"
        plotted |= {base(m) for m in re.findall(r"riskhost_[a-z0-9_]+", t.get("expr", ""))}
rules = yaml.safe_load((root / "prometheus/alerts.yml").read_text())
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
cases = [c for t in yaml.safe_load((root / "prometheus/alerts.test.yml").read_text())["tests"]
         for c in t.get("alert_rule_test", [])]
fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
assert alerts <= fires, f"alerts without a test where they fire: {sorted(alerts - fires)}"
assert alerts <= silent, f"alerts without a test where they stay silent: {sorted(alerts - silent)}"
assert (fires | silent) <= alerts, f"tests of alerts that do not exist: {sorted((fires | silent) - alerts)}"
alerted = {base(m) for g in rules["groups"] for r in g["rules"] for m in re.findall(r"riskhost_[a-z0-9_]+", r["expr"])}
missing = sorted((plotted | alerted) - exported)
if missing:
    print("note: not (yet) exported by this build:", ", ".join(missing))
core = {"riskhost_http_requests_total", "riskhost_http_request_duration_seconds", "riskhost_model_call_duration_seconds",
        "riskhost_cache_lookups_total", "riskhost_model_errors_total", "riskhost_model_load_failures_total"}
assert core <= exported, f"core metrics not exported: {core - exported}"
assert core <= (plotted | alerted), f"core metrics neither plotted nor alerted: {core - plotted - alerted}"

compose = yaml.safe_load((root / "compose/docker-compose.yml").read_text())
assert {"riskhost", "redis", "postgres", "clickhouse", "prometheus", "grafana"} <= set(compose["services"]), compose["services"].keys()

# The manifests: k8s/*.yaml but kustomization.yaml (and .checkov.yaml).
manifests = sorted(f for f in (root / "k8s").glob("*.yaml") if not f.name.startswith(".") and f.name != "kustomization.yaml")
kinds = {}
for f in manifests:
    for doc in yaml.safe_load_all(f.read_text()):
        if doc:
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), f"{f}: incomplete object"
            kinds.setdefault(doc["kind"], []).append(doc)
need = {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy"}
assert need <= set(kinds), f"missing kinds: {need - set(kinds)}"
# A fleet follows the shared registry, never a shared volume (docs/fleet.md).
assert "PersistentVolumeClaim" not in kinds, "replicas share the registry, not a volume"
[deployment], [hpa], [pdb], [netpol], [secret], [configmap] = (
    kinds[k] for k in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Secret", "ConfigMap"))
pod = deployment["spec"]["template"]["spec"]
labels = deployment["spec"]["template"]["metadata"]["labels"]
assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", [])), "replicas share the registry, not a volume"
assert configmap["data"]["RISKHOST_MODEL_STORE"] == "postgres"
[container] = pod["containers"]
env = {e["name"]: e for e in container.get("env", [])}
assert env["RISKHOST_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
replicas = [s for s in compose["services"].values() if s.get("environment", {}).get("RISKHOST_MODEL_STORE") == "postgres"]
assert replicas and sum(s.get("deploy", {}).get("replicas", 1) for s in replicas) >= 2, "compose runs 2 replicas on the registry"
assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]

# Every setting the manifests give is one the server reads.
settings = set(re.findall(r'env\s*=\s*"(RISKHOST_[A-Z0-9_]+)"', src))
unknown = sorted(k for k in configmap["data"] if k not in settings)
assert not unknown, f"configmap.yaml sets what riskhost does not read: {unknown}"
# Secrets are files, never variables: the server reads RISKHOST_<NAME>_FILE
# for each of these when RISKHOST_<NAME> is unset (RISKHOST_API_KEYS_FILE
# is a file of [[api_keys]] tables).
secret_settings = {f"RISKHOST_{n}" for n in ("ADMIN_TOKEN", "POSTGRES_URL", "REDIS_URL", "CLICKHOUSE_URL",
                                             "OCI_PASSWORD", "OCI_TOKEN", "API_KEYS")}
assert not any("secretRef" in s for s in container.get("envFrom", [])), "no Secret as environment variables"
assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values()), "no Secret as environment variables"
given = set(configmap["data"]) | set(env)
assert not (secret_settings & given), f"secrets given as variables: {sorted(secret_settings & given)}"
[mount] = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
[volume] = [v for v in pod["volumes"] if v["name"] == "secrets"]
assert mount.get("readOnly") is True and volume["secret"]["secretName"] == secret["metadata"]["name"]
files = {n[:-len("_FILE")]: e["value"] for n, e in env.items() if n.endswith("_FILE")}
assert set(files) <= secret_settings, f"not a secret setting: {sorted(set(files) - secret_settings)}"
assert all(n in settings for n in files), f"riskhost reads none of {sorted(n for n in files if n not in settings)}"
keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
read = {path.removeprefix(mount["mountPath"] + "/") for path in files.values()}
assert read == keys, f"Secret keys and the files read differ: unread {sorted(keys - read)}, missing {sorted(read - keys)}"

# The pod: no Kubernetes API token, the runtime's seccomp filter, non-root.
assert pod["automountServiceAccountToken"] is False
[account] = [a for a in kinds["ServiceAccount"] if a["metadata"]["name"] == pod["serviceAccountName"]]
assert account["automountServiceAccountToken"] is False
assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault" and pod["securityContext"]["runAsNonRoot"]

# The HPA owns the replica count; the PDB lets a drain take one pod at a time
# and keeps one serving at the HPA's minimum.
assert "replicas" not in deployment["spec"], "the HPA owns the replica count: no replicas: in deployment.yaml"
assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["spec"]["minReplicas"] >= 2
assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
assert pdb["spec"]["maxUnavailable"] == 1 and hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1

# The NetworkPolicy: in, the http port only; out, DNS and the data services'
# ports, which are those of the URLs in secret.yaml.
assert netpol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
assert set(netpol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
assert [p["port"] for r in netpol["spec"]["ingress"] for p in r["ports"]] == ["http"]
assert [p["name"] for p in container["ports"]] == ["http"]
egress = {(p["protocol"], p["port"]) for r in netpol["spec"]["egress"] for p in r["ports"]}
assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 6379), ("TCP", 8123), ("TCP", 443)}, egress
for k, v in secret.get("stringData", {}).items():
    if k.endswith("-url"):
        port = re.match(r"[a-z]+://(?:[^@/]*@)?[^:/]+:(\d+)", v)
        assert port and ("TCP", int(port[1])) in egress, f"secret.yaml {k}: its port is not open in networkpolicy.yaml"

# The image: the server's version as its tag, never :latest; its digest is
# kustomization.yaml's, set at release.
version = re.search(r'^version = "([^"]+)"', pathlib.Path("../host/Cargo.toml").read_text(), re.M)[1]
image, _, tag = container["image"].rpartition(":")
assert tag == version and "@" not in container["image"], f"deployment.yaml image {container['image']}: want tag {version}"
kustomization = yaml.safe_load((root / "k8s/kustomization.yaml").read_text())
assert sorted(kustomization["resources"]) == [f.name for f in manifests], "kustomization.yaml lists every manifest"
[pin] = kustomization["images"]
assert pin["name"] == image and pin["newTag"] == version, f"kustomization.yaml images: {pin}"
assert "digest" not in pin or re.fullmatch(r"sha256:[0-9a-f]{64}", pin["digest"]), pin["digest"]
print(f"deploy files valid: dashboard plots {len(plotted)} metrics, {sum(len(g['rules']) for g in rules['groups'])} alert rules, k8s kinds {sorted(kinds)}")
PY
