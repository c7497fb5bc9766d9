"""Packaging checks: the Helm chart (values schema, RBAC, environment), the Dockerfile, the container
entrypoint and .dockerignore.

There is no helm binary and no Docker engine on the development machines, so most of this reads the
files instead of running them:
- templates are checked after stripping Go-template actions (`strip_template`): that proves the
  YAML skeleton and the literal names in it, not what Helm renders for every combination of values
  (conditionals are flattened: both branches stay in);
- the Dockerfile is parsed line by line, never built;
- docker/entrypoint.sh is really run, with /bin/sh, outside a container.
One opt-in test renders the chart with the real Helm engine (see `test_chart_renders_with_helm`).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "taiga-backup"
TEMPLATES = CHART / "templates"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DOCKERIGNORE = ROOT / ".dockerignore"

# The worker's settings: every environment variable the chart may set on the worker.
WORKER_SETTINGS = frozenset(
    {
        "CELERY_BROKER_URL",
        "CELERY_BROKER_URL_FILE",
        "CELERY_RESULT_BACKEND",
        "RESTIC_REPOSITORY",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_NEW_PASSWORD_FILE",
        "AWS_ACCESS_KEY_ID_FILE",
        "AWS_SECRET_ACCESS_KEY_FILE",
        "AWS_DEFAULT_REGION",
        "POSTGRES_SERVICE",
        "POSTGRES_PORT",
        "POSTGRES_HOST",
        "POSTGRES_DB",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD_FILE",
        "BACKUP_FILES_DIR",
        "KUBE_NAMESPACE",
        "QUIESCE_DEPLOYMENTS",
        "RESTORE_QUIESCE_DEPLOYMENTS",
        "RESTORE_CHOWN",
        "RESTIC_HOST",
        "BACKUP_SCHEDULE",
        "BACKUP_TIMEZONE",
        "PRUNE_SCHEDULE",
        "CHECK_SCHEDULE",
        "VERIFY_SCHEDULE",
        "RESTIC_DAYS_TO_KEEP",
        "RESTIC_KEEP_DAILY",
        "RESTIC_KEEP_WEEKLY",
        "RESTIC_KEEP_MONTHLY",
        "RESTIC_KEEP_YEARLY",
        "PG_DUMP_FORMAT",
        "METRICS_PORT",
        "NOTIFY_WEBHOOK_URL",
        "HEALTHCHECK_PING_URL",
        "LOG_FORMAT",
        "CELERY_SECURITY_KEY_FILE",
        "CELERY_SECURITY_CERT_FILE",
        "CELERY_SECURITY_CERT_STORE",
        "CELERY_REDIS_CA_FILE",
        "CELERY_REDIS_CERT_FILE",
        "CELERY_REDIS_KEY_FILE",
    }
)

# What the worker must always get from the chart with the default values (the old procedure's
# settings, plus the broker and the namespace).
REQUIRED_WORKER_ENV = frozenset(
    {
        "CELERY_BROKER_URL_FILE",
        "RESTIC_REPOSITORY",
        "RESTIC_PASSWORD_FILE",
        "RESTIC_NEW_PASSWORD_FILE",
        "AWS_ACCESS_KEY_ID_FILE",
        "AWS_SECRET_ACCESS_KEY_FILE",
        "POSTGRES_SERVICE",
        "POSTGRES_PORT",
        "POSTGRES_HOST",
        "POSTGRES_DB",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD_FILE",
        "BACKUP_FILES_DIR",
        "KUBE_NAMESPACE",
        "QUIESCE_DEPLOYMENTS",
        "RESTORE_QUIESCE_DEPLOYMENTS",
        "RESTIC_HOST",
        "BACKUP_SCHEDULE",
        "RESTIC_DAYS_TO_KEEP",
        "METRICS_PORT",
    }
)

# Flower gets the broker connection settings and its own basic auth.
FLOWER_ENV = WORKER_SETTINGS | {"FLOWER_BASIC_AUTH"}

# The Kubernetes API calls the worker makes, as (API group, resource, verb), all namespace-scoped.
# TODO(lead): take this from the constant in worker/kube.py once it exists.
K8S_API_CALLS = [
    ("apps", "deployments", "get"),  # read replicas and the annotations
    ("apps", "deployments", "patch"),  # record the original replica count in an annotation
    ("apps", "deployments/scale", "get"),  # status.selector, current replicas
    ("apps", "deployments/scale", "patch"),  # scale down / back up
    ("", "pods", "list"),  # wait until the deployment's pods are gone
    ("", "pods", "watch"),  # same, with a watch
]


# ---------------------------------------------------------------------------------------------------
# helpers


def default_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def values_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


_TPL_COMMENT = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.S)
_TPL_ACTION = re.compile(r"\{\{.*?\}\}")
PLACEHOLDER = "TEMPLATED"


def strip_template(text: str) -> str:
    """Drop template comments and lines made only of template actions ({{- if }}, {{- end }},
    {{- include ... | nindent }}, ...), and replace the remaining inline actions with PLACEHOLDER.

    What this does not do: evaluate anything. Both branches of an `if` stay in, `range` bodies appear
    once, and whatever an `include`/`toYaml` would have produced is missing.
    """
    text = _TPL_COMMENT.sub("", text)
    kept = []
    for line in text.splitlines():
        if _TPL_ACTION.search(line) and not _TPL_ACTION.sub("", line).strip():
            continue
        kept.append(_TPL_ACTION.sub(PLACEHOLDER, line))
    return "\n".join(kept) + "\n"


def helper_defines() -> dict[str, str]:
    """Map each `define` in _helpers.tpl to its text (up to the next define; good enough for
    finding what it contains)."""
    text = (TEMPLATES / "_helpers.tpl").read_text()
    starts = list(re.finditer(r'\{\{-?\s*define\s+"([^"]+)"\s*-?\}\}', text))
    out = {}
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        out[m.group(1)] = text[m.end() : end]
    return out


def env_names_in_template(name: str) -> set[str]:
    """Names of `- name: UPPER_CASE` entries in a template and in every helper it includes
    (transitively). Volume, port and container names are lower-case and do not match."""
    defines = helper_defines()
    pending, seen, names = [(TEMPLATES / name).read_text()], set(), set()
    while pending:
        text = pending.pop()
        names |= set(re.findall(r"^\s*-\s*name:\s*([A-Z][A-Z0-9_]*)\s*$", text, re.M))
        for included in re.findall(r'include\s+"([^"]+)"', text):
            if included in defines and included not in seen:
                seen.add(included)
                pending.append(defines[included])
    return names


def yaml_templates() -> list[Path]:
    return sorted(TEMPLATES.glob("*.yaml"))


# ---------------------------------------------------------------------------------------------------
# values.yaml and values.schema.json


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
    ("negative keep count", "restic.retention.keepDaily", -1),
    ("days to keep zero", "restic.retention.daysToKeep", 0),
    ("chown without a group", "restore.chown", "999"),
    ("broker URL that is not redis", "redis.url", "amqp://guest@rabbit//"),
    ("existing secret with an invalid name", "restic.existingSecret", "Backup Secret"),
    ("relative media mount path", "media.mountPath", "media"),
    ("flower credentials without a password", "flower.basicAuth.credentials", "admin"),
]


@pytest.mark.parametrize("what,path,value", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_rejects_bad_values(what, path, value):
    doc = copy.deepcopy(default_values())
    _set(doc, path, value)
    assert not jsonschema.Draft7Validator(values_schema()).is_valid(doc), what


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
    "worker.podAnnotations",
    "worker.podLabels",
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


# ---------------------------------------------------------------------------------------------------
# templates


@pytest.mark.parametrize("path", yaml_templates(), ids=lambda p: p.name)
def test_template_skeleton_is_yaml(path):
    docs = [d for d in yaml.safe_load_all(strip_template(path.read_text())) if d]
    assert docs, f"{path.name} has no object"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path.name
        assert doc["metadata"]["name"], path.name


def test_every_template_action_is_balanced():
    # Unbalanced {{ }} would survive strip_template as text; catch it separately.
    for path in [*TEMPLATES.glob("*.yaml"), TEMPLATES / "_helpers.tpl", TEMPLATES / "NOTES.txt"]:
        text = _TPL_COMMENT.sub("", path.read_text())
        assert text.count("{{") == text.count("}}"), path.name
        opened = len(re.findall(r"\{\{-?\s*(if|range|with|define)\b", text))
        closed = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", text))
        assert opened == closed, f"{path.name}: {opened} blocks opened, {closed} closed"


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "taiga-backup" == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["type"] == "application"


# RBAC -----------------------------------------------------------------------------------------------


def role_rules() -> list[dict]:
    """The Role's rules, with the resourceNames that role.yaml would render for the default values.

    role.yaml renders `resourceNames` with `range $deployments`, where
    `$deployments := concat .Values.quiesce.backup .Values.quiesce.restore | uniq`; this checks that
    text and substitutes the union computed here. Not checked: that Helm's `uniq` keeps order (only
    the set matters to RBAC), and anything under `rbac.create: false` (then the chart makes no Role).
    """
    text = (TEMPLATES / "role.yaml").read_text()
    assert re.search(
        r"\$deployments\s*:=\s*concat\s+\.Values\.quiesce\.backup\s+\.Values\.quiesce\.restore\s*\|\s*uniq",
        text,
    ), "resourceNames must come from quiesce.backup ∪ quiesce.restore"
    range_items = re.findall(
        r"resourceNames:\s*\n\s*\{\{-?\s*range\s+\$deployments\s*\}\}\s*\n"
        r"\s*-\s*\{\{\s*\.\s*\|\s*quote\s*\}\}\s*\n\s*\{\{-?\s*end\s*\}\}",
        text,
    )
    doc = yaml.safe_load(strip_template(text))
    assert doc["kind"] == "Role"
    rules = doc["rules"]
    with_names = [r for r in rules if "resourceNames" in r]
    assert len(range_items) == len(with_names), "every resourceNames list must be the $deployments range"
    values = default_values()
    names = list(dict.fromkeys(values["quiesce"]["backup"] + values["quiesce"]["restore"]))
    for rule in with_names:
        assert rule["resourceNames"] == [PLACEHOLDER]
        rule["resourceNames"] = names
    return rules


def test_role_grants_exactly_the_worker_api_calls():
    granted = set()
    for rule in role_rules():
        assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    assert granted == set(K8S_API_CALLS)
    flat = json.dumps(role_rules())
    assert "*" not in flat
    assert "secrets" not in flat and "delete" not in flat and "create" not in flat


def test_role_restricts_deployments_to_the_quiesce_lists():
    values = default_values()
    expected = set(values["quiesce"]["backup"]) | set(values["quiesce"]["restore"])
    assert expected >= {
        "taiga-gateway-deployment",
        "taiga-front-deployment",
        "taiga-back-deployment",
        "taiga-async-deployment",
        "taiga-events-deployment",
        "taiga-protected-deployment",
    }
    for rule in role_rules():
        if rule["apiGroups"] == ["apps"]:
            assert set(rule["resourceNames"]) == expected, rule
        else:
            # list/watch cannot be restricted by resourceNames: pods stay namespace-wide.
            assert rule["resources"] == ["pods"] and "resourceNames" not in rule


def test_empty_resource_names_are_refused():
    # resourceNames: [] means "every deployment": refused by the schema and by the template.
    assert values_schema()["properties"]["quiesce"]["properties"]["restore"]["allOf"][1] == {"minItems": 1}
    validate = helper_defines()["taiga-backup.validate"]
    assert re.search(r"if not \.Values\.quiesce\.restore \}\}\s*\{\{-? fail", validate)
    assert 'include "taiga-backup.validate"' in (TEMPLATES / "deployment.yaml").read_text()


def test_role_binding_binds_the_role_to_the_service_account():
    doc = yaml.safe_load(strip_template((TEMPLATES / "rolebinding.yaml").read_text()))
    assert doc["kind"] == "RoleBinding"
    assert doc["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PLACEHOLDER}
    text = (TEMPLATES / "rolebinding.yaml").read_text()
    assert 'name: {{ include "taiga-backup.serviceAccountName" . }}' in text
    assert "{{ .Release.Namespace }}" in text


# worker Deployment ----------------------------------------------------------------------------------


def worker_deployment() -> dict:
    return yaml.safe_load(strip_template((TEMPLATES / "deployment.yaml").read_text()))


def test_worker_env_names_are_worker_settings():
    names = env_names_in_template("deployment.yaml")
    assert names - WORKER_SETTINGS == set()
    assert REQUIRED_WORKER_ENV - names == set()
    assert "envFrom" not in (TEMPLATES / "deployment.yaml").read_text()


def test_flower_env_names():
    names = env_names_in_template("flower.yaml")
    assert names - FLOWER_ENV == set()
    assert {"CELERY_BROKER_URL_FILE", "FLOWER_BASIC_AUTH"} <= names


def test_worker_deployment_shape():
    dep = worker_deployment()
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == PLACEHOLDER
    assert pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    assert container["args"] == ["taiga-backup", "worker", "--beat"]
    assert container["ports"] == [{"name": "metrics", "containerPort": PLACEHOLDER, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["exec"] == {"command": ["taiga-backup", "ping"]}, probe


def test_worker_uses_the_old_procedures_objects():
    values = default_values()
    assert values["restic"]["existingSecret"] == "backup-secret"
    assert values["restic"]["existingConfigMap"] == "backup-config"
    assert values["postgres"]["existingSecret"] == "postgres-secret"
    assert values["postgres"]["existingConfigMap"] == "postgres-config"
    assert values["media"] == {"claimName": "taiga-media-data", "mountPath": "/media"}
    assert (values["postgres"]["service"], values["postgres"]["port"]) == ("postgresql-service", 5432)
    assert values["schedule"]["backup"] == "10 23 * * *"
    assert values["restic"]["retention"]["daysToKeep"] == 30

    pod = worker_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RESTIC_REPOSITORY"]["valueFrom"]["configMapKeyRef"]["key"] == "restic-repository"
    assert env["POSTGRES_DB"]["valueFrom"]["configMapKeyRef"]["key"] == "postgres-db"
    assert env["POSTGRES_USER"]["valueFrom"]["secretKeyRef"]["key"] == "postgres-user"
    secrets = "/var/run/secrets/backup-secrets"
    assert env["RESTIC_PASSWORD_FILE"]["value"] == f"{secrets}/restic-password"
    assert env["RESTIC_NEW_PASSWORD_FILE"]["value"] == f"{secrets}/restic-new-password"
    assert env["AWS_ACCESS_KEY_ID_FILE"]["value"] == f"{secrets}/aws-access-key-id"
    assert env["AWS_SECRET_ACCESS_KEY_FILE"]["value"] == f"{secrets}/aws-secret-access-key"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["backup-secrets"]["mountPath"] == secrets
    assert env["POSTGRES_PASSWORD_FILE"]["value"].startswith(mounts["postgres-secret"]["mountPath"] + "/")
    assert env["POSTGRES_PASSWORD_FILE"]["value"].endswith("/postgres-password")
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Whole Secrets (no items, no subPath): a key added later appears in the running pod.
    for name in ("backup-secrets", "postgres-secret"):
        assert set(volumes[name]["secret"]) == {"secretName", "defaultMode"}
        assert "subPath" not in mounts[name]
    assert "persistentVolumeClaim" in volumes["media"]

    # Chart-made objects use the same keys.
    made = (TEMPLATES / "secret.yaml").read_text() + (TEMPLATES / "configmap.yaml").read_text()
    for key in ("restic-password", "restic-new-password", "aws-access-key-id", "aws-secret-access-key",
                "postgres-user", "postgres-password", "postgres-db", "restic-repository"):
        assert f"  {key}: " in made, key


def test_writable_paths_match_the_image():
    # The chart mounts emptyDirs where the image expects to write (read-only root file system).
    # The emptyDirs are mounted by the celeryVolumeMounts helper, shared with Flower.
    assert 'include "taiga-backup.celeryVolumeMounts"' in (TEMPLATES / "deployment.yaml").read_text()
    helper = helper_defines()["taiga-backup.celeryVolumeMounts"]
    mounts = set(re.findall(r"mountPath:\s*(\S+)", helper))
    dockerfile = DOCKERFILE.read_text()
    for path in ("/var/lib/taiga-backup", "/var/cache/taiga-backup", "/tmp"):
        assert path in mounts, path
    assert "WORKDIR /var/lib/taiga-backup" in dockerfile
    assert "XDG_CACHE_HOME=/var/cache/taiga-backup" in dockerfile


def test_notes_tell_how_to_back_up_and_restore():
    notes = (TEMPLATES / "NOTES.txt").read_text()
    assert "exec deploy/{{ $deploy }} -- taiga-backup backup --wait" in notes
    assert "taiga-backup restore" in notes and "taiga-backup status" in notes


# ---------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments (also inside a continuation, as Docker does) and blank lines
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    return instructions


def dockerfile_stages() -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults and the stages: {image, alias, args, instructions}."""
    global_args, stages = {}, []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            words = rest.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"image": expand(words[0], global_args), "alias": alias, "args": {}, "instructions": []})
            continue
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if not stages:
                global_args[name] = default
                continue
            stages[-1]["args"][name] = default or global_args.get(name, "")
        assert stages, f"{keyword} before the first FROM"
        stages[-1]["instructions"].append((keyword, rest))
    return global_args, stages


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def final_stage() -> dict:
    return dockerfile_stages()[1][-1]


def stage_instructions(stage: dict, keyword: str) -> list[str]:
    return [rest for kw, rest in stage["instructions"] if kw == keyword]


def test_base_images_are_pinned():
    _, stages = dockerfile_stages()
    aliases = set()
    for stage in stages:
        image = stage["image"]
        if image not in aliases:
            assert "$" not in image, f"unresolved image {image}"
            name = image.split("@")[0]
            tag = name.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest" or "@sha256:" in image, f"unpinned base image {image}"
            assert image.startswith("python:3.11-slim-bookworm"), image
        if stage["alias"]:
            aliases.add(stage["alias"])


def test_image_runs_as_non_root():
    stage = final_stage()
    users = stage_instructions(stage, "USER")
    assert users, "the final stage sets no USER"
    user = expand(users[-1], stage["args"])
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes can check runAsNonRoot; 999 is Taiga's uid (see docker/README.md).
    assert uid.isdigit() and int(uid) != 0, user
    assert (uid, gid) == ("999", "999")
    values = default_values()
    assert values["podSecurityContext"]["runAsUser"] == 999
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["restore"]["chown"] == "999:999"


def test_entrypoint_is_tini_and_default_command_is_the_worker():
    stage = final_stage()
    (entrypoint,) = stage_instructions(stage, "ENTRYPOINT")
    entrypoint = json.loads(entrypoint)
    assert entrypoint[0].endswith("/tini") and entrypoint[1] == "--"
    assert any(re.search(r"apt-get install .*\btini\b", run) for run in stage_instructions(stage, "RUN"))
    copies = [c.split() for c in stage_instructions(stage, "COPY")]
    assert ["docker/entrypoint.sh", entrypoint[2]] in copies
    (cmd,) = stage_instructions(stage, "CMD")
    assert json.loads(cmd) == ["taiga-backup", "worker", "--beat"]


def test_healthcheck_pings_the_worker():
    (healthcheck,) = stage_instructions(final_stage(), "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD")
    assert "--timeout=" in options and "--interval=" in options
    assert json.loads(command) == ["taiga-backup", "ping"]


def test_restic_release_is_pinned_and_checksummed():
    _, stages = dockerfile_stages()
    (stage,) = [s for s in stages if "RESTIC_VERSION" in s["args"]]
    assert re.fullmatch(r"\d+\.\d+\.\d+", stage["args"]["RESTIC_VERSION"])
    sums = {k: v for k, v in stage["args"].items() if k.startswith("RESTIC_SHA256")}
    assert sums and all(re.fullmatch(r"[0-9a-f]{64}", v) for v in sums.values()), sums
    (run,) = [r for r in stage_instructions(stage, "RUN") if "restic" in r]
    assert "releases/download/v${RESTIC_VERSION}/restic_${RESTIC_VERSION}_linux_" in run
    assert "sha256sum -c" in run
    for name in sums:
        assert f'"${name}"' in run or f"${{{name}}}" in run, f"{name} is never checked"
    assert run.index("sha256sum -c") < run.index("bunzip2")
    assert ["--from=restic", "/usr/local/bin/restic", "/usr/local/bin/restic"] in [
        c.split() for c in stage_instructions(final_stage(), "COPY")
    ]


def test_postgres_client_comes_from_pgdg_for_pg_major():
    stage = final_stage()
    assert re.fullmatch(r"\d+", stage["args"]["PG_MAJOR"])
    runs = " ".join(stage_instructions(stage, "RUN"))
    assert '"postgresql-client-${PG_MAJOR}"' in runs
    assert "apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" in runs
    assert "signed-by=" in runs


def test_project_is_installed_from_the_lock():
    _, stages = dockerfile_stages()
    runs = [r for s in stages for r in stage_instructions(s, "RUN")]
    lock = [i for i, r in enumerate(runs) if "pip install -r requirements.lock" in r]
    project = [i for i, r in enumerate(runs) if re.search(r"pip install --no-deps \.(\s|$)", r)]
    assert lock and project and lock[0] < project[0]


# .dockerignore --------------------------------------------------------------------------------------


def dockerignore_includes(path: str) -> bool:
    """A small model of Docker's matcher: rules in order, the last matching one wins, and a rule
    matching a parent directory matches everything below it. Supports the forms .dockerignore uses
    (`*`, `!dir/`, `**/name`, `**/*.ext`)."""
    included = True
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(p, tail) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(c, pattern) and c.count("/") == pattern.count("/") for c in candidates)
        if hit:
            included = negate
    return included


def test_dockerignore_lets_in_what_the_build_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = ["pyproject.toml", "requirements.lock", "docker/entrypoint.sh"]
    if isinstance(project["project"].get("readme"), str):
        needed.append(project["project"]["readme"])
    needed += [f"{pkg.replace('.', '/')}/__init__.py" for pkg in setuptools.get("packages", [])]
    needed += [f"{mod}.py" for mod in setuptools.get("py-modules", [])]
    missing = [p for p in needed if not dockerignore_includes(p)]
    assert missing == []


def test_dockerignore_keeps_out_the_rest():
    for path in (".git/config", ".venv/bin/python", "tests/test_packaging.py", "helm/taiga-backup/values.yaml",
                 "worker/__pycache__/cli.cpython-311.pyc", ".env", "taiga_backup.egg-info/PKG-INFO"):
        assert not dockerignore_includes(path), path


# ---------------------------------------------------------------------------------------------------
# docker/entrypoint.sh, run outside Docker


def test_entrypoint_is_posix_sh():
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert re.search(r"^set -eu$", text, re.M)
    assert os.access(ENTRYPOINT, os.X_OK)
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


@pytest.fixture
def stub_path(tmp_path):
    """A PATH whose taiga-backup and other-tool stubs print their PID and arguments."""
    for name in ("taiga-backup", "other-tool"):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho "{name} pid=$$"\nfor a in "$@"; do echo "arg=$a"; done\nexit ${{STUB_EXIT:-0}}\n')
        stub.chmod(0o755)
    return f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def run_entrypoint(args, path, **env):
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": path, **env},
    )
    out, err = proc.communicate(timeout=30)
    return proc, out.splitlines(), err


def test_entrypoint_execs_its_arguments(stub_path):
    proc, out, _ = run_entrypoint(["other-tool", "a b", "--flag", ""], stub_path)
    assert proc.returncode == 0
    # exec: the command replaced the shell, so it runs with the shell's PID.
    assert out == [f"other-tool pid={proc.pid}", "arg=a b", "arg=--flag", "arg="]


def test_entrypoint_prefixes_subcommands(stub_path):
    proc, out, _ = run_entrypoint(["backup", "--wait"], stub_path)
    assert out == [f"taiga-backup pid={proc.pid}", "arg=backup", "arg=--wait"]
    proc, out, _ = run_entrypoint(["--help"], stub_path)
    assert out[1:] == ["arg=--help"]


def test_entrypoint_defaults_to_worker_with_beat(stub_path):
    proc, out, _ = run_entrypoint([], stub_path)
    assert out == [f"taiga-backup pid={proc.pid}", "arg=worker", "arg=--beat"]


def test_entrypoint_passes_the_exit_status_on(stub_path):
    proc, _, _ = run_entrypoint(["ping"], stub_path, STUB_EXIT="3")
    assert proc.returncode == 3
    proc, _, err = run_entrypoint(["no-such-command-here"], stub_path)
    assert proc.returncode == 127 and err


# ---------------------------------------------------------------------------------------------------
# Opt-in: render the chart with the real Helm engine.
#
# There is no helm binary here, but the PyPI package helm-sdkpy (Python >= 3.12) ships Helm as a
# shared library. It can lint but not `helm template`, so the chart is installed into a fake
# Kubernetes API served by this test (discovery answers, every GET a 404, every create accepted) and
# the rendered manifest is read back from the result. Enable with
#   TAIGA_BACKUP_HELM_PYTHON=/path/to/python3.12-with-helm-sdkpy
# (e.g. `python3.12 -m venv /tmp/helm && /tmp/helm/bin/pip install helm-sdkpy`).

HELM_PYTHON = os.environ.get("TAIGA_BACKUP_HELM_PYTHON")

_FAKE_GROUPS = {
    "v1": ["secrets:Secret", "configmaps:ConfigMap", "services:Service", "serviceaccounts:ServiceAccount",
           "pods:Pod", "namespaces:Namespace:cluster"],
    "apps/v1": ["deployments:Deployment", "deployments/scale:Scale"],
    "rbac.authorization.k8s.io/v1": ["roles:Role", "rolebindings:RoleBinding"],
    "networking.k8s.io/v1": ["networkpolicies:NetworkPolicy"],
    "monitoring.coreos.com/v1": ["servicemonitors:ServiceMonitor"],
}


class _FakeKubeAPI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                for gv in _FAKE_GROUPS if "/" in gv
            ]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for gv, resources in _FAKE_GROUPS.items():
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                listed = []
                for entry in resources:
                    name, kind, *scope = entry.split(":")
                    listed.append({"name": name, "singularName": "", "kind": kind, "namespaced": not scope,
                                   "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
                return self._send(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": listed})
        if "labelSelector" in self.path or path.endswith(("/secrets", "/configmaps")):
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                         "code": 404, "message": "not found"})

    def _accept(self, code):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "json" in (self.headers.get("Content-Type") or ""):
            obj = json.loads(raw or b"{}")
        else:  # Helm's release record, sent as protobuf
            obj = {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": self.path.rsplit("/", 1)[-1]}}
        obj.setdefault("metadata", {})["resourceVersion"] = "1"
        self._send(code, obj)

    def do_POST(self):
        self._accept(201)

    def do_PUT(self):
        self._accept(200)


_HELM_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, helm_sdkpy
    kubeconfig, chart, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cfg = helm_sdkpy.Configuration(namespace="taiga", kubeconfig=kubeconfig)
    try:
        result = asyncio.run(helm_sdkpy.Install(cfg).run(
            "taiga-backup", chart, values=values or None, wait=False, timeout=30))
    except Exception as exc:
        print(json.dumps({"error": str(exc)})); sys.exit(0)
    print(json.dumps({"manifest": result.get("manifest", ""),
                      "notes": (result.get("info") or {}).get("notes", "")}))
    """
)


@pytest.fixture(scope="module")
def helm_render(tmp_path_factory):
    if not HELM_PYTHON:
        pytest.skip("set TAIGA_BACKUP_HELM_PYTHON to a Python with helm-sdkpy to render the chart")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKubeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {"token": "x"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "taiga"}}],
    }))

    def render(values: dict | None = None) -> dict:
        proc = subprocess.run(
            [HELM_PYTHON, "-c", _HELM_SCRIPT, str(kubeconfig), str(CHART), json.dumps(values or {})],
            capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if "manifest" in result:
            result["objects"] = [d for d in yaml.safe_load_all(result["manifest"]) if d]
        return result

    yield render
    server.shutdown()


FULL_VALUES = {
    "redis": {"bundled": False, "url": "rediss://:pw@redis.example:6380/0", "tlsSecret": "redis-tls"},
    "signing": {"existingSecret": "celery-signing"},
    "flower": {"enabled": True, "basicAuth": {"credentials": "admin:pw"}},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "notify": {"webhookUrl": "https://hooks.example/x"},
    "restic": {"existingSecret": "", "existingConfigMap": "", "repository": "s3:https://s3.example/b/taiga",
               "password": "p", "awsAccessKeyId": "a", "awsSecretAccessKey": "s", "awsDefaultRegion": "eu-west-1",
               "retention": {"keepDaily": 7, "keepWeekly": 4, "keepMonthly": 12, "keepYearly": 2}},
    "postgres": {"existingSecret": "", "existingConfigMap": "", "user": "taiga", "password": "pw", "database": "taiga"},
    "schedule": {"prune": "0 3 * * 0", "check": "0 4 * * 0", "verify": "0 5 1 * *"},
}


def _containers(objects, name):
    (dep,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    return dep, dep["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "everything-on"])
def test_chart_renders_with_helm(helm_render, values):
    result = helm_render(values)
    assert "error" not in result, result.get("error")
    objects = result["objects"]
    dep, (worker,) = _containers(objects, "taiga-backup")
    assert dep["spec"]["strategy"] == {"type": "Recreate"} and dep["spec"]["replicas"] == 1
    names = {e["name"] for e in worker["env"]}
    assert names <= WORKER_SETTINGS and REQUIRED_WORKER_ENV <= names
    (role,) = [o for o in objects if o["kind"] == "Role"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == set(K8S_API_CALLS)
    for rule in role["rules"]:
        if rule["resources"] != ["pods"]:
            assert rule["resourceNames"]
    assert "taiga-backup backup --wait" in result["notes"]
    if values is FULL_VALUES:
        assert {"RESTIC_KEEP_DAILY", "VERIFY_SCHEDULE", "CELERY_REDIS_CA_FILE", "CELERY_SECURITY_KEY_FILE",
                "NOTIFY_WEBHOOK_URL", "AWS_DEFAULT_REGION"} <= names
        _, (flower,) = _containers(objects, "taiga-backup-flower")
        assert {e["name"] for e in flower["env"]} <= FLOWER_ENV
        assert {o["kind"] for o in objects} >= {"ServiceMonitor", "ConfigMap", "Secret"}


@pytest.mark.parametrize(
    "values,message",
    [
        ({"metrics": {"port": "x"}}, "metrics"),
        ({"surprise": 1}, "surprise"),
        ({"redis": {"url": "redis://x:6379/0"}}, "redis.bundled=false"),
        ({"redis": {"bundled": False}}, "redis.url"),
        ({"flower": {"enabled": True}}, "basicAuth"),
        ({"restic": {"existingSecret": ""}}, "restic.password"),
    ],
    ids=["schema-type", "schema-unknown-key", "bundled-and-url", "no-broker", "flower-no-auth", "no-password"],
)
def test_chart_refuses_inconsistent_values_with_helm(helm_render, values, message):
    result = helm_render(values)
    assert message in result.get("error", ""), result.get("error")
