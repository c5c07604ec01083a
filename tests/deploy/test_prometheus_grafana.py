"""deploy/prometheus and deploy/grafana: promtool on the config and rules (and the rules' unit tests),
and every metric they name is one the server exports, with labels it carries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    DEPLOY,
    EXPORTED_METRICS,
    EXPORTED_SERIES,
    TARGET_LABELS,
    optional_tool,
    yaml_documents,
)

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
PROMTOOL_HINT = "apt-get install prometheus (Debian's package ships promtool)"

# --- PromQL: the metric and label names an expression uses -----------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}  # fmt: skip
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    return re.sub(r"\$\{?\w+\}?", "1", expr)  # Grafana variables ($__rate_interval, ${model})


def metric_names(expr: str) -> set[str]:
    text = _strip(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = _GROUPING.sub(" ", text)  # label lists
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if m.start() and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the unit of a duration or an exponent: 5m, 1e3
        if text[m.end() :].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group(0))
    return names


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring/group_* lists and in matchers."""
    text = _strip(expr)
    labels = {
        label.strip() for m in _GROUPING.finditer(text) for label in m.group(2).split(",") if label.strip()
    }
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


@pytest.mark.parametrize(
    ("expr", "names", "labels"),
    [
        (
            'histogram_quantile(0.99, sum by (level, le) (rate(a_bucket{model=~"$m"}[$__rate_interval])))',
            {"a_bucket"},
            {"level", "le", "model"},
        ),
        ("sum(rate(a_total[5m] offset 1h)) / on (model) group_left () b > 1e3", {"a_total", "b"}, {"model"}),
        ('up{job=~"x.*"} == 0 and on(instance) c:d:e', {"up", "c:d:e"}, {"job", "instance"}),
    ],
)
def test_promql_name_extraction(expr: str, names: set[str], labels: set[str]) -> None:
    assert metric_names(expr) == names
    assert grouping_labels(expr) == labels


# --- what deploy/ asks of the server -------------------------------------------------------------------


def test_metrics_contract_matches_the_server() -> None:
    """EXPORTED_METRICS (what deploy/ is written against) is what service/metrics.py exports."""
    from service.metrics import Metrics

    metrics = Metrics()
    metrics.add_level("digits", "full", lambda: 0.0)
    metrics.level_selections.labels("digits", "full", "explicit").inc()
    metrics.budget_misses.labels("digits").inc()
    metrics.ready.set(1)
    exported: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family in metrics.registry.collect():
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = (family.type, tuple(labels))
    expected = {name: (kind, tuple(sorted(labels))) for name, (kind, labels) in EXPORTED_METRICS.items()}
    assert exported == expected


def _rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml_documents(PROMETHEUS / "rules.yml")[0]["groups"] for rule in group["rules"]
    ]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            out.append((f"${variable['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query)))
    return out


def _check_names(where: str, expr: str, allowed: set[str]) -> None:
    unknown = metric_names(expr) - allowed
    assert not unknown, f"{where}: {sorted(unknown)} not exported by the server ({expr})"
    used_labels = grouping_labels(expr)
    known_labels = {
        label for name in metric_names(expr) & EXPORTED_SERIES.keys() for label in EXPORTED_SERIES[name]
    }
    if metric_names(expr) <= EXPORTED_SERIES.keys():  # recording rules carry their own label sets
        assert used_labels <= known_labels | TARGET_LABELS, f"{where}: labels {used_labels - known_labels}"


def test_dashboard_queries_name_only_exported_metrics() -> None:
    exprs = _dashboard_exprs()
    assert exprs
    for where, expr in exprs:
        _check_names(f"panel {where!r}", expr, set(EXPORTED_SERIES))


def test_rules_name_only_exported_or_recorded_metrics() -> None:
    allowed = set(EXPORTED_SERIES) | _recorded() | {"up"}  # `up`: Prometheus' own, per target
    for rule in _rules():
        _check_names(rule.get("record") or rule["alert"], rule["expr"], allowed)


def test_autoscaling_metrics_are_exported() -> None:
    (hpa,) = yaml_documents(DEPLOY / "k8s" / "gpu" / "hpa.yaml")
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert names and names <= set(EXPORTED_SERIES)
    adapter = yaml.safe_load((PROMETHEUS / "adapter-rules.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        assert metric_names(rule["seriesQuery"]) <= set(EXPORTED_SERIES)
        assert rule["name"]["as"] in names


def test_dashboard_covers_the_issue() -> None:
    """Throughput, latency per level, level mix, queue depth, budget misses."""
    used = {name for _, expr in _dashboard_exprs() for name in metric_names(expr)}
    for name in (
        "circuitserve_inferred_samples_total",
        "circuitserve_request_duration_seconds_bucket",
        "circuitserve_level_selections_total",
        "circuitserve_queue_depth",
        "circuitserve_budget_misses_total",
    ):
        assert name in used, name
    latency = [e for _, e in _dashboard_exprs() if "circuitserve_request_duration_seconds_bucket" in e]
    assert all("level" in grouping_labels(e) for e in latency), "latency per level"


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_alerts_cover_the_issue() -> None:
    alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
    p99 = alerts["CircuitserveP99OverBudget"]["expr"]
    assert "circuitserve:request_duration_seconds:p99_5m" in p99
    assert {"CircuitserveQueueSaturated", "CircuitserveHighErrorRate"} <= set(alerts)
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


# --- promtool ------------------------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    promtool = optional_tool("promtool", PROMTOOL_HINT)
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    result = _promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_kubernetes_config(tmp_path: Path) -> None:
    result = _promtool("check", "config", "prometheus-kubernetes.yml")
    if result.returncode != 0 and "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery. Check everything else (relabelling,
        # rules) with static targets in its place, and the discovery block by hand.
        config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text())
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
            job["static_configs"] = [{"targets": ["pod:8000"]}]
        (tmp_path / "prometheus-kubernetes.yml").write_text(yaml.safe_dump(config))
        shutil.copy(PROMETHEUS / "rules.yml", tmp_path / "rules.yml")
        result = _promtool("check", "config", "prometheus-kubernetes.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrape_matches_the_pods() -> None:
    """The pod annotations and labels of deploy/k8s are the ones the scrape config keeps."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text())
    keep = {
        rc["source_labels"][0]: rc["regex"]
        for job in config["scrape_configs"]
        for rc in job["relabel_configs"]
        if rc.get("action") == "keep"
    }
    for path in sorted((DEPLOY / "k8s").rglob("deployment.yaml")):
        (deployment,) = yaml_documents(path)
        meta = deployment["spec"]["template"]["metadata"]
        assert (
            meta["annotations"]["prometheus.io/scrape"]
            == keep["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
        )
        assert (
            meta["labels"]["app.kubernetes.io/part-of"]
            == keep["__meta_kubernetes_pod_label_app_kubernetes_io_part_of"]
        )
