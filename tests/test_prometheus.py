"""prometheus/: scrape configs and alert rules are valid (promtool), their unit tests pass,
and every metric they name is one that ticktape/metrics.py exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from ticktape import metrics

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "tests" / "alerts_test.yml"
CONFIGS = ["prometheus.yml", "prometheus.local.yml"]

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (`make` installs it: apt-get install prometheus)"
)

# Sample-name suffixes per metric type in the text exposition format.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def _exposed_names(objects) -> set[str]:
    """Sample names the given metric objects produce on /metrics."""
    names = set()
    for obj in objects:
        for family in obj.describe():
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def _project_metrics() -> set[str]:
    return _exposed_names(v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase))


def _metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    return {
        m.group(1)
        for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr)
        if not m.group(2) and m.group(1).lower() not in PROMQL_KEYWORDS
    }


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=PROM, capture_output=True, text=True, timeout=60)


@needs_promtool
@pytest.mark.parametrize("config", CONFIGS)
def test_promtool_check_config(config):
    done = _promtool("check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


@needs_promtool
def test_promtool_check_rules():
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    done = _promtool("test", "rules", "tests/alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    firing, quiet = set(), set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _rules()}
    assert len(alerts) == len(_rules()), "duplicate alert names"
    assert firing == alerts
    assert quiet == alerts


def test_exposed_names_follow_the_exposition_format():
    # The suffix table above, checked against what prometheus_client really writes.
    registry = CollectorRegistry()
    objects = [
        Counter("t_requests", "c", ["a"], registry=registry),
        Gauge("t_level", "g", ["a"], registry=registry),
        Histogram("t_seconds", "h", ["a"], registry=registry, buckets=(1,)),
    ]
    for obj in objects:
        obj.labels("x")
    info = Info("t_build", "i", registry=registry)
    info.info({"version": "1"})
    written = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#")
    }
    assert written == _exposed_names(objects + [info])
    assert "t_requests_total" in written and "t_requests" not in written


def test_alert_expressions_use_only_metrics_the_project_exports():
    used = {name for rule in _rules() for name in _metric_names(rule["expr"])}
    assert used == {
        "ticktape_events_in_total",
        "ticktape_consumer_lag",
        "ticktape_sink_errors_total",
        "ticktape_dlq_messages_total",
        "ticktape_kill_switch",
        "ticktape_risk_pending",
        "ticktape_risk_late_events_total",
        "ticktape_timescaledb_job_failed",
        "ticktape_process_info",
        "up",
    }
    assert used - {"up"} <= _project_metrics(), sorted(used - {"up"} - _project_metrics())


def test_unit_test_series_are_metrics_the_project_exports():
    series = {
        item["series"].split("{")[0]
        for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for item in case["input_series"]
    }
    assert series - {"up"} <= _project_metrics(), sorted(series - {"up"} - _project_metrics())


def _targets(config: str) -> dict[str, list[str]]:
    doc = yaml.safe_load((PROM / config).read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    return {
        job["job_name"]: [t for sc in job.get("static_configs", ()) for t in sc["targets"]]
        for job in doc["scrape_configs"]
    }


def test_docker_config_scrapes_every_service_of_the_stack_at_its_metrics_port():
    compose = yaml.safe_load((REPO / "docker" / "docker-compose.yml").read_text())["services"]
    expected = {
        name: [f"{name}:{svc['environment']['METRICS_PORT']}"]
        for name, svc in compose.items()
        if "METRICS_PORT" in (svc.get("environment") or {})
    }
    assert set(expected) == {"producer", "worker", "sink-postgres", "sink-redis"}
    expected |= {"prometheus": ["localhost:9090"], "grafana": ["grafana:3000"]}
    assert _targets("prometheus.yml") == expected


def test_local_config_scrapes_the_targets_the_main_job_writes():
    # `ticktape run` writes the file with the processes it runs (tests/test_status.py
    # checks that a real Prometheus scrapes them); no fixed target may be down.
    from ticktape.commands.status import TARGETS_FILE

    doc = yaml.safe_load((PROM / "prometheus.local.yml").read_text())
    assert _targets("prometheus.local.yml") == {"ticktape": []}
    assert doc["scrape_configs"][0]["file_sd_configs"][0]["files"] == [TARGETS_FILE]
