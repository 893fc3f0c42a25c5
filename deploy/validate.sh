#!/usr/bin/env bash
# Validates what can be validated without Docker or a cluster: the alert
# rules (promtool, installed from Debian if missing) and their unit tests
# (prometheus/alerts.test.yml: every alert fires and stays silent in at
# least one case each), the Prometheus config,
# the Grafana dashboard (regenerated and compared, JSON structure, every
# metric it plots is one riskhost exports), and the YAML of the compose file
# and Kubernetes manifests (parse, expected kinds, probes and limits).
set -euo pipefail
cd "$(dirname "$0")"

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

kinds = {}
for f in sorted((root / "k8s").glob("*.yaml")):
    for doc in yaml.safe_load_all(f.read_text()):
        if doc:
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), f"{f}: incomplete object"
            kinds.setdefault(doc["kind"], []).append(doc)
need = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"}
assert need <= set(kinds), f"missing kinds: {need - set(kinds)}"
# A fleet follows the shared registry, never a shared volume (docs/fleet.md).
assert "PersistentVolumeClaim" not in kinds, "replicas share the registry, not a volume"
assert kinds["ConfigMap"][0]["data"]["RISKHOST_MODEL_STORE"] == "postgres"
env = {e["name"]: e for e in kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0].get("env", [])}
assert env["RISKHOST_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
replicas = [s for s in compose["services"].values() if s.get("environment", {}).get("RISKHOST_MODEL_STORE") == "postgres"]
assert replicas and sum(s.get("deploy", {}).get("replicas", 1) for s in replicas) >= 2, "compose runs 2 replicas on the registry"
container = kinds["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
print(f"deploy files valid: dashboard plots {len(plotted)} metrics, {sum(len(g['rules']) for g in rules['groups'])} alert rules, k8s kinds {sorted(kinds)}")
PY
