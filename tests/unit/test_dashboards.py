"""deploy/prometheus and deploy/grafana are correct without a Prometheus or Grafana server.

The alert rules pass ``promtool check rules`` and their own ``promtool test rules`` file (each
alert fires on sample series where it should and stays quiet where it should not), the scrape
config passes ``promtool check config``, every PromQL expression of the dashboard parses (through
promtool, as recording rules), and every metric and label the rules and the dashboard name is one
the daemon's registry (``service/metrics.py``) really exports. promtool comes from the system
package ``prometheus`` (``.ci/run`` installs it); without it these tests fail, never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ls_space_sync.service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "ls-space-sync.json"

# Series Prometheus itself makes (per scrape target), and labels it adds to every scraped series.
PROMETHEUS_SERIES = {"up": set()}
TARGET_LABELS = {"job", "instance"}
# Grafana's variables, as a query would see them once substituted.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$project": ".*"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (the system package; .ci/run does it)",
                    pytrace=False)
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def exported() -> dict[str, set[str]]:
    """``{sample name: label names}`` of everything the daemon's registry exports, each metric
    driven once through the public methods the daemon calls."""
    m = Metrics(lambda: {3: None})
    m.observe_run(SimpleNamespace(project_id=3, status="succeeded", inserted=1, updated=2, deleted=0, seconds=0.4),
                  "schedule")
    m.observe_failure(3, "webhook", 1.5)
    m.observe_locked(3, "schedule")
    m.observe_mirror_pass(18, 19, "schedule", "changed",
                          [SimpleNamespace(source_project=18, target_project=19, created=1, updated=0, deleted=0)])
    m.set_failures(3, 0)
    m.webhook_event("ANNOTATION_CREATED")
    m.webhook_rejected("auth")
    m.set_webhooks_enabled(True)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dash: dict) -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variable queries."""
    out = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*), *\w+\)", var["query"]["query"])
            assert m, var["query"]
            out.append(m.group(1))
    return out


def check_names(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Problems with the metric and label names ``expr`` uses (empty: none)."""
    problems = []
    names = set(re.findall(r"\b(ls_space_sync_\w+)", expr))
    names |= set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))
    available = set(TARGET_LABELS) | {"le"}
    for name in sorted(names):
        if name in known:
            available |= known[name]
        elif name in PROMETHEUS_SERIES:
            available |= PROMETHEUS_SERIES[name]
        else:
            problems.append(f"{name}: not exported by service/metrics.py")
    for name, matchers in re.findall(r"\b(\w+)\s*\{([^}]*)\}", expr):
        labels = known.get(name, PROMETHEUS_SERIES.get(name, set())) | TARGET_LABELS
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in labels:
                problems.append(f"{name}{{{label}=...}}: {name} has no label {label}")
    for grouping in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        for label in filter(None, (s.strip() for s in grouping.split(","))):
            if label not in available:
                problems.append(f"by/on ({label}): no metric of the expression has that label")
    return problems


def test_promtool_checks_the_alert_rules():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_each_alert_fires_where_it_should_and_only_there():
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
              for case in test["alert_rule_test"]}
    assert tested == {r["alert"] for r in rules()}  # no alert without a test


def test_the_scrape_config_loads_the_rules_and_names_the_job_the_alerts_use():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    for rule in rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs


def test_the_alerts_cover_what_the_issue_asks_for():
    exprs = {r["alert"]: r["expr"] for r in rules()}
    assert "ls_space_sync_consecutive_failures" in exprs["LsSpaceSyncFailing"]
    assert "ls_space_sync_seconds_since_last_success" in exprs["LsSpaceSyncLagging"]
    assert "ls_space_sync_webhook_events_total" in exprs["LsSpaceSyncWebhookSilent"]
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_metric_and_label_the_rules_and_dashboard_use_is_exported():
    known = exported()
    problems = {}
    for rule in rules():
        problems[rule["alert"]] = check_names(rule["expr"], known)
    for i, expr in enumerate(dashboard_queries(dashboard())):
        problems[f"dashboard query {i}: {expr}"] = check_names(expr, known)
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_checker_catches_a_wrong_name():
    known = exported()
    assert check_names('ls_space_sync_run_total{project="1"}', known)  # _runs_, not _run_
    assert check_names('ls_space_sync_runs_total{projekt="1"}', known)
    assert check_names("sum by (action) (ls_space_sync_runs_total)", known)
    assert check_names('sum by (status) (rate(ls_space_sync_runs_total{status="failed"}[5m]))', known) == []


def test_the_dashboard_shows_every_exported_metric():
    queries = " ".join(dashboard_queries(dashboard()))
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", name) for name in exported()}
    assert {f for f in families if f not in queries} == set()


def test_the_dashboard_has_what_grafana_needs():
    dash = dashboard()
    for key in ("title", "uid", "schemaVersion", "panels", "templating", "time"):
        assert key in dash, key
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"])  # Grafana's uid rule
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for p in dash["panels"]:
        assert p["type"] in {"stat", "timeseries", "gauge", "table", "bargauge", "text", "row"}, p["type"]
        assert p["title"]
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert t["expr"].strip()
    for expr in dashboard_queries(dash):
        for var in re.findall(r"\$\w+", expr):
            assert var in GRAFANA_VARIABLES and (var.startswith("$__") or var[1:] in variables), var


def test_every_dashboard_query_is_valid_promql(tmp_path):
    queries = dashboard_queries(dashboard())
    substituted = []
    for expr in queries:
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        substituted.append(expr)
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(substituted)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(recording))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
