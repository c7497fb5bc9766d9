"""The chart's alert rules and Grafana dashboard, against the metrics a live worker really exports.

The metric names come from a real worker's /metrics (started with METRICS_PORT by the `start_worker`
fixture), never from a list here: a renamed metric breaks these tests, not the operators' alerts in
production. The rules are rendered by real Helm from the chart, checked with `promtool check rules`
and unit-tested with `promtool test rules` (Debian package `prometheus`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from packaging_support import CHART, free_port, unavailable

pytestmark = pytest.mark.slow

NAMESPACE = "taiga"
RELEASE = "tb"
SERVICE = f"{RELEASE}-taiga-backup-metrics"
ALERT_VALUES = {"metrics": {"serviceMonitor": {"enabled": True}}, "prometheusRule": {"enabled": True},
                "dashboard": {"enabled": True}}
# Metrics the rules or the dashboard use that the worker does not export yet, with why they are needed.
# Each is a request to the worker code; tests that need one skip until it is exported.
PROPOSED = {
    "taiga_backup_deployment_quiesced": "gauge {deployment}: 1 while the Deployment carries the annotation "
                                        "taiga-backup/original-replicas (set by quiesce/resume, refreshed by the "
                                        "reconciler) — for TaigaBackupAppLeftQuiesced",
    "taiga_backup_repository_size_bytes": "gauge {repository}: `restic stats --mode raw-data` total size, refreshed "
                                          "with the snapshot count — for the dashboard's repository size panel",
}
METRIC = re.compile(r"\b(taiga_backup_[a-z_]+|process_[a-z_]+)\b")

_live: dict[str, set[str]] = {}


@pytest.fixture
def live_metric_names(request) -> set[str]:
    """Every metric name a real worker serves on /metrics (sample names, and counters' _total)."""
    if "names" not in _live:
        start_worker = request.getfixturevalue("start_worker")
        port = free_port()
        start_worker(METRICS_PORT=port)
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if "taiga_backup_" in text:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        names = set()
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            if family.type == "counter":
                names |= {family.name + "_total", family.name + "_created"}
            names |= {s.name for s in family.samples}
        assert any(n.startswith("taiga_backup_") for n in names), text[:2000]
        _live["names"], _live["text"] = names, text
    return _live["names"]


def rendered(helm: str) -> list[dict]:
    proc = subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", "/dev/stdin"],
                          input=json.dumps(ALERT_VALUES), capture_output=True, text=True, timeout=120, check=True)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        unavailable("promtool not installed (Debian package prometheus)")
    return path


@pytest.fixture(scope="module")
def rules_file(helms, tmp_path_factory) -> Path:
    (rule,) = [o for o in rendered(helms["4"]) if o["kind"] == "PrometheusRule"]
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def used_names(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_rules_pass_promtool_check(promtool, rules_file):
    proc = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = [r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]]
    assert alerts == ["TaigaBackupFailed", "TaigaBackupMissing", "TaigaBackupWorkerDown",
                      "TaigaBackupAppLeftQuiesced", "TaigaBackupRepositoryCheckFailed",
                      "TaigaBackupRestoreDrillFailed", "TaigaBackupRestoreDrillOverdue"]


def markdown_anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to -."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_alert_has_a_runbook_url_to_an_existing_anchor(rules_file):
    docs = CHART.parents[1] / "docs" / "operations.md"
    anchors = markdown_anchors(docs)
    rules = [r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]]
    for rule in rules:
        url = rule["annotations"].get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page.endswith("docs/operations.md") and anchor in anchors, (rule["alert"], url)


def test_metrics_carry_kind_not_job(live_metric_names):
    """`job` is Prometheus' own target label: a metric label of that name is renamed exported_job (or,
    with honorLabels, replaces the target's) and every alert on it silently matches nothing."""
    text = _live["text"]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    labelled = [s for f in families.values() if f.name.startswith("taiga_backup_") for s in f.samples]
    assert not [s.name for s in labelled if "job" in s.labels]
    assert any("kind" in s.labels for s in labelled)
    # likewise `instance` (the target's host:port): the instance is `taiga_instance`, on every series
    served = [s for f in families.values() for s in f.samples]
    assert not [s.name for s in served if "instance" in s.labels]
    assert {s.labels.get("taiga_instance") for s in served} == {"taiga"}
    (info,) = families["taiga_backup_build_info"].samples
    from importlib.metadata import version

    assert info.labels["version"] == version("taiga-backup") and info.value == 1


def test_rules_use_only_exported_metrics(rules_file, live_metric_names):
    missing = used_names(rules_file.read_text()) - live_metric_names - set(PROPOSED)
    assert missing == set(), f"the rules use metrics the worker does not export: {sorted(missing)}"


def test_dashboard_uses_only_exported_metrics(live_metric_names):
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    missing = set().union(*map(used_names, exprs)) - live_metric_names - set(PROPOSED)
    assert missing == set(), f"the dashboard uses metrics the worker does not export: {sorted(missing)}"
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for what in ("last successful backup", "duration", "downtime", "bytes added", "repository size", "failed"):
        assert what in titles, what


def test_proposed_metrics_are_exported(live_metric_names):
    """Fails nothing, skips while a metric the rules/dashboard need is not exported yet."""
    missing = {name: why for name, why in PROPOSED.items() if name not in live_metric_names}
    if missing:
        pytest.skip("worker does not export yet: " + "; ".join(f"{n} ({w})" for n, w in missing.items()))


def test_dashboard_configmap_for_the_grafana_sidecar(helms):
    objects = rendered(helms["4"])
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["taiga-backup.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())


# -- promtool test rules ---------------------------------------------------------------------------

MIN = 60
HOUR = 3600


INSTANCE = NAMESPACE  # the chart's default instance: the release's namespace


def series(name: str, values: str, **labels) -> dict:
    """A series as the worker serves it (every one with `taiga_instance`); `up` is the target's
    own, without it."""
    labels = {"namespace": NAMESPACE, **({} if name == "up" else {"taiga_instance": INSTANCE}), **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def alert(**labels) -> dict:
    """The labels of an alert on the worker's metrics; WorkerDown's, from `up`, pass taiga_instance=None."""
    labels = {"namespace": NAMESPACE, "taiga_instance": INSTANCE, **labels}
    return {"exp_labels": {k: v for k, v in labels.items() if v is not None}}


def rule_tests(names: set[str]) -> list[dict]:
    """promtool unit tests, 1-minute samples, times in promtool's clock (0 = the epoch)."""
    ok, start, last = "taiga_backup_last_run_success", "process_start_time_seconds", \
        "taiga_backup_last_success_timestamp_seconds"
    for name in (ok, start, last):
        assert name in names, f"the worker does not export {name}"
    tests = [
        {   # a failed backup alerts at once; another namespace's failure is not ours, nor another
            # instance's in this namespace (its own release alerts on it)
            "interval": "1m",
            "input_series": [series(ok, "1 1 0x10 1", kind="backup"), series(ok, "0x13", kind="backup",
                                                                               namespace="other"),
                             series(ok, "0x13", kind="backup", taiga_instance="other")],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "TaigaBackupFailed", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "TaigaBackupFailed", "exp_alerts": []},  # pending (for: 5m)
                {"eval_time": "8m", "alertname": "TaigaBackupFailed",
                 "exp_alerts": [alert(severity="critical")]},
                {"eval_time": "13m", "alertname": "TaigaBackupFailed", "exp_alerts": []},
            ],
        },
        {   # a scrape blip (one failed sample between successes) does not page anybody
            "interval": "1m",
            "input_series": [series(ok, "1 0 1x10", kind="backup")],
            "alert_rule_test": [{"eval_time": "1m", "alertname": "TaigaBackupFailed", "exp_alerts": []},
                                {"eval_time": "6m", "alertname": "TaigaBackupFailed", "exp_alerts": []}],
        },
        {   # the worker's target down, then gone (Pending: no endpoint, no `up` at all): both alert after 10m
            "interval": "1m",
            "input_series": [series("up", "1x5 0x20", service=SERVICE, job=SERVICE)],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "TaigaBackupWorkerDown", "exp_alerts": []},
                {"eval_time": "12m", "alertname": "TaigaBackupWorkerDown", "exp_alerts": []},  # pending
                {"eval_time": "20m", "alertname": "TaigaBackupWorkerDown",
                 "exp_alerts": [alert(severity="critical", service=SERVICE, taiga_instance=None)]},
            ],
        },
        {   # never scraped at all in this namespace (another namespace's worker is up)
            "interval": "1m",
            "input_series": [series("up", "1x30", service=SERVICE, job=SERVICE, namespace="other")],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": "TaigaBackupWorkerDown",
                 "exp_alerts": [alert(severity="critical", service=SERVICE, taiga_instance=None)]},
            ],
        },
        {   # a worker that is up: no alert
            "interval": "1m",
            "input_series": [series("up", "1x30", service=SERVICE, job=SERVICE)],
            "alert_rule_test": [{"eval_time": "20m", "alertname": "TaigaBackupWorkerDown", "exp_alerts": []}],
        },
        {   # last success at 1h: fine at 26h, missing at 28h (more than 26 h)
            "interval": "1m",
            "input_series": [series(last, f"{HOUR}+0x1700", kind="backup"),
                             series(start, "0+0x1700", service=SERVICE)],
            "alert_rule_test": [
                {"eval_time": "26h", "alertname": "TaigaBackupMissing", "exp_alerts": []},
                {"eval_time": "28h", "alertname": "TaigaBackupMissing", "exp_alerts": [alert(severity="critical")]},
            ],
        },
        {   # never a successful backup: counted from the worker's start
            "interval": "1m",
            "input_series": [series(start, "0+0x1700", service=SERVICE)],
            "alert_rule_test": [
                {"eval_time": "25h", "alertname": "TaigaBackupMissing", "exp_alerts": []},
                {"eval_time": "27h", "alertname": "TaigaBackupMissing", "exp_alerts": [alert(severity="critical")]},
            ],
        },
        {   # a failed check and a failed drill
            "interval": "1m",
            "input_series": [series(ok, "0x5", kind="check"), series(ok, "1 0 0", kind="verify")],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "TaigaBackupRepositoryCheckFailed",
                 "exp_alerts": [alert(severity="warning")]},
                {"eval_time": "0m", "alertname": "TaigaBackupRestoreDrillFailed", "exp_alerts": []},
                {"eval_time": "2m", "alertname": "TaigaBackupRestoreDrillFailed",
                 "exp_alerts": [alert(severity="warning")]},
            ],
        },
        {   # the weekly drill last succeeded at 0: overdue after 8 days
            "interval": "10m",
            "input_series": [series(last, "0+0x1400", kind="verify"), series(start, "0+0x1400", service=SERVICE)],
            "alert_rule_test": [
                {"eval_time": "7d", "alertname": "TaigaBackupRestoreDrillOverdue", "exp_alerts": []},
                {"eval_time": "9d", "alertname": "TaigaBackupRestoreDrillOverdue",
                 "exp_alerts": [alert(severity="warning")]},
            ],
        },
    ]
    return tests


def quiesced_tests() -> list[dict]:
    name = "taiga_backup_deployment_quiesced"
    return [{
        "interval": "1m",
        "input_series": [series(name, "1x40", deployment="taiga-front-deployment"),
                         series(name, "1x10 0x30", deployment="taiga-gateway-deployment")],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "TaigaBackupAppLeftQuiesced", "exp_alerts": []},
            {"eval_time": "35m", "alertname": "TaigaBackupAppLeftQuiesced",
             "exp_alerts": [alert(severity="critical", deployment="taiga-front-deployment")]},
        ],
    }]


def run_promtool_tests(promtool, rules_file, tmp_path, tests) -> None:
    # Annotations are prose (checked as templates by `promtool check rules`); compare labels only.
    spec = yaml.safe_load(rules_file.read_text())
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "rules.yaml"
    bare.write_text(yaml.safe_dump(spec, sort_keys=False))
    used = set().union(*(used_names(s["series"]) for t in tests for s in t["input_series"]))
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [bare.name], "evaluation_interval": "1m", "tests": tests},
                                        sort_keys=False))
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return used


def test_alert_rules_fire_when_they_should(promtool, rules_file, live_metric_names, tmp_path):
    tests = rule_tests(live_metric_names)
    used = run_promtool_tests(promtool, rules_file, tmp_path, tests)
    assert used <= live_metric_names  # the test series are named as the worker names them


def test_app_left_quiesced_alert(promtool, rules_file, live_metric_names, tmp_path):
    if "taiga_backup_deployment_quiesced" not in live_metric_names:
        pytest.skip("the worker does not export taiga_backup_deployment_quiesced yet: "
                    + PROPOSED["taiga_backup_deployment_quiesced"])
    run_promtool_tests(promtool, rules_file, tmp_path, quiesced_tests())
