#!/usr/bin/env bash
# Checks what deploy/ gives operators: the Prometheus rules with promtool (syntax, then
# the alerts' unit tests in deploy/prometheus-rules.test.yml) and the Grafana dashboard
# as JSON. promtool comes from Debian's prometheus package, installed if missing.
# (tests/tests/deploy.rs checks that both query only metrics the service exports.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

install_missing promtool:prometheus python3:python3
promtool check rules deploy/prometheus-rules.yml
(cd deploy && promtool test rules prometheus-rules.test.yml)
python3 - deploy/grafana-dashboard.json <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as f:
    dashboard = json.load(f)
panels = dashboard["panels"]
for panel in panels:
    assert panel.get("title"), f"{path}: a panel has no title"
    assert panel.get("targets"), f"{path}: {panel['title']} has no queries"
    for target in panel["targets"]:
        assert target.get("expr"), f"{path}: {panel['title']} has an empty query"
ids = [p["id"] for p in panels]
assert len(ids) == len(set(ids)), f"{path}: panel ids repeat"
print(f"{path}: valid JSON, {len(panels)} panels, each with its queries")
PY
