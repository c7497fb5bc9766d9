"""values.yaml and values.schema.json: what the schema accepts and refuses, checked with jsonschema
(the same draft-07 validation Helm runs before rendering). Fast, no helm binary needed;
test_chart_render.py renders the chart with real Helm 3 and 4.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "taiga-backup"


def default_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def values_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def test_schema_is_draft07():
    schema = values_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def test_default_values_validate():
    errors = [
        f"{e.json_path}: {e.message}"
        for e in jsonschema.Draft7Validator(values_schema()).iter_errors(default_values())
    ]
    assert errors == []


def _set(doc: dict, path: str, value):
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


BAD_VALUES = [
    ("port as a string", "metrics.port", "9808"),
    ("port out of range", "redis.port", 70000),
    ("boolean as a string", "flower.enabled", "yes"),
    ("unknown top-level key", "surprise", True),
    ("unknown nested key", "redis.password", "secret"),
    ("log format not in the enum", "logFormat", "xml"),
    ("dump format not in the enum", "postgres.dumpFormat", "directory"),
    ("empty restore quiesce list (resourceNames: [] would grant every deployment)", "quiesce.restore", []),
    ("deployment name that is not a Kubernetes name", "quiesce.backup", ["Taiga_Front"]),
    ("duplicate deployment", "quiesce.backup", ["taiga-front-deployment", "taiga-front-deployment"]),
    ("backup schedule that is not five fields", "schedule.backup", "daily"),
    ("empty backup schedule", "schedule.backup", ""),
    ("a word for off the worker reads but the docs do not promise", "schedule.verify", "never"),
    ("negative keep count", "restic.retention.keepDaily", -1),
    ("days to keep zero", "restic.retention.daysToKeep", 0),
    ("chown without a group", "restore.chown", "999"),
    ("broker URL that is not redis", "redis.url", "amqp://guest@rabbit//"),
    ("existing secret with an invalid name", "restic.existingSecret", "Backup Secret"),
    ("relative media mount path", "media.mountPath", "media"),
    ("flower credentials without a password", "flower.basicAuth.credentials", "admin"),
    ("alert threshold zero", "prometheusRule.quiescedMinutes", 0),
    ("alert threshold as a string", "prometheusRule.backupMaxAgeHours", "26"),
    ("dashboard label that is not a string", "dashboard.labels", {"grafana_dashboard": 1}),
    ("unknown key in prometheusRule", "prometheusRule.severity", "page"),
    ("negative fleet cap", "fleet.maxConcurrentBackups", -1),
    ("fleet cap as a string", "fleet.maxConcurrentBackups", "2"),
    ("backup window in seconds", "schedule.backupWindow", "30s"),
]


@pytest.mark.parametrize("what,path,value", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_rejects_bad_values(what, path, value):
    doc = copy.deepcopy(default_values())
    _set(doc, path, value)
    assert not jsonschema.Draft7Validator(values_schema()).is_valid(doc), what


@pytest.mark.parametrize("job", ["prune", "check", "verify"])
def test_schema_accepts_off_for_the_upkeep_schedules(job):
    doc = copy.deepcopy(default_values())
    doc["schedule"][job] = "off"
    jsonschema.Draft7Validator(values_schema()).validate(doc)


def test_schema_accepts_documented_alternatives():
    doc = copy.deepcopy(default_values())
    doc["redis"].update(bundled=False, url="rediss://:pw@redis.example:6380/0", tlsSecret="redis-tls")
    doc["restic"].update(existingSecret="", existingConfigMap="", repository="/srv/repo", password="x")
    doc["restic"]["retention"].update(keepDaily=7, keepMonthly=12)
    doc["schedule"].update(prune="0 3 * * 0", check="0 4 * * 0", verify="0 5 1 * *")
    doc["flower"].update(enabled=True)
    doc["flower"]["basicAuth"]["credentials"] = "admin:pw,ops:pw2"
    doc["quiesce"]["backup"] = []
    doc["global"] = {"imageRegistry": "x"}  # Helm may pass globals
    jsonschema.Draft7Validator(values_schema()).validate(doc)


# Objects whose contents are passed through to Kubernetes or are free-form maps.
OPEN_OBJECTS = {
    "podSecurityContext",
    "podSecurityContext.seccompProfile",
    "securityContext",
    "securityContext.capabilities",
    "nodeSelector",
    "affinity",
    "flower.service.annotations",
    "metrics.service.annotations",
    "metrics.serviceMonitor.labels",
    "prometheusRule.labels",
    "dashboard.labels",
    "dashboard.annotations",
    "worker.podAnnotations",
    "worker.podLabels",
    "redis.podAnnotations",
    "redis.podLabels",
    "flower.podAnnotations",
    "flower.podLabels",
    "serviceAccount.annotations",
    "redis.resources.requests",
    "redis.resources.limits",
    "flower.resources.requests",
    "flower.resources.limits",
    "worker.resources.requests",
    "worker.resources.limits",
}


def _object_paths(doc: dict, prefix: str = ""):
    for key, value in doc.items():
        if isinstance(value, dict):
            path = f"{prefix}{key}"
            yield path
            yield from _object_paths(value, path + ".")


def test_schema_rejects_unknown_keys_in_every_closed_object():
    validator = jsonschema.Draft7Validator(values_schema())
    open_found = set()
    for path in _object_paths(default_values()):
        doc = copy.deepcopy(default_values())
        target = doc
        for key in path.split("."):
            target = target[key]
        target["surpriseKey"] = "x"
        if validator.is_valid(doc):
            open_found.add(path)
    assert open_found == OPEN_OBJECTS & set(_object_paths(default_values()))


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "taiga-backup" == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["type"] == "application"


def test_the_instance_is_checked_as_the_worker_checks_it():
    """Same DNS label and reserved words as worker.settings, so a bad `instance` fails at install,
    not when the worker starts."""
    from worker.settings import RESERVED_INSTANCES, SettingsError, read

    schema = values_schema()["properties"]["instance"]
    assert schema["not"]["enum"] == list(RESERVED_INSTANCES)
    for name in ("taiga-b", "Taiga", "a_b", "-a", "a" * 64, "report"):
        try:
            read("TAIGA_INSTANCE", {"TAIGA_INSTANCE": name})
            worker_ok = True
        except SettingsError:
            worker_ok = False
        assert jsonschema.Draft7Validator(schema).is_valid(name) == worker_ok, name


def test_the_backup_window_is_checked_as_the_worker_checks_it():
    """The form the worker reads (BACKUP_WINDOW), so a typo fails at install; a sum past 24h
    (24h30m) is left to the worker's own check at start."""
    from worker.settings import SettingsError, read

    schema = values_schema()["properties"]["schedule"]["properties"]["backupWindow"]
    for value in ("0", "2h", "90m", "1h30m", "24h", "", "90", "2 h", "1d", "30s", "25h", "-1h", "h"):
        try:
            read("BACKUP_WINDOW", {"BACKUP_WINDOW": value}) if value else None
            worker_ok = bool(value)
        except SettingsError:
            worker_ok = False
        assert jsonschema.Draft7Validator(schema).is_valid(value) == worker_ok, value
