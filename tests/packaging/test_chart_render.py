"""The Helm chart rendered by real Helm 3 and Helm 4 over a matrix of values, every manifest validated
against the Kubernetes schemas of the oldest and newest release the chart supports.

Why render for real: what Helm produces for each combination of values (conditionals, includes,
toYaml, the schema check, `fail`) is what users install; reading the templates proves none of it.
What is checked on each rendering: `helm lint --strict`; `kubernetes-validate --strict` on every
object; the worker's environment against worker.settings.SETTINGS (no unknown variable, every
required one, every secret as a *_FILE path into a mounted Secret); the Role against
worker.adapters.kube.REQUIRED_RBAC; and that inconsistent values are refused with a clear message.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from packaging_support import (CHART, FULLNAME, KUBE_VERSIONS, NAMESPACE, RELEASE, DiscoveryOnly,  # noqa: F401
                               fake_cluster, helm, mounted_files, one, refusal, render, secret_keys,
                               worker_container)


MATRIX = {
    "defaults": {},
    "external-redis-tls": {"redis": {"bundled": False, "url": "rediss://:pw@redis.example:6380/0",
                                     "tlsSecret": "redis-tls"}},
    "flower-basic-auth": {"flower": {"enabled": True, "basicAuth": {"credentials": "admin:pw,ops:pw2"}}},
    "message-signing": {"signing": {"existingSecret": "celery-signing"}},
    "s3-repository": {"restic": {"existingSecret": "", "existingConfigMap": "",
                                 "repository": "s3:https://s3.example/bucket/taiga", "password": "p",
                                 "awsAccessKeyId": "a", "awsSecretAccessKey": "s", "awsDefaultRegion": "eu-west-1",
                                 "retention": {"keepDaily": 7, "keepWeekly": 4, "keepMonthly": 12, "keepYearly": 2}}},
    "metrics-servicemonitor-alerts-dashboard": {"metrics": {"serviceMonitor": {"enabled": True}},
                                                "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
    # issue 21: every escape hatch at once (extraEnv names a setting: the env check below still applies)
    "escape-hatches": {"extraEnv": [{"name": "LOG_LEVEL", "value": "DEBUG"}],
                       "extraEnvFrom": [{"secretRef": {"name": "restic-backend"}}],
                       "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
                       "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
                       "priorityClassName": "backup-critical",
                       "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                      "whenUnsatisfiable": "ScheduleAnyway"}],
                       "redis": {"podLabels": {"team": "ops"}, "podAnnotations": {"a": "b"}},
                       "flower": {"enabled": True, "basicAuth": {"credentials": "a:b"},
                                  "podLabels": {"team": "ops"}, "podAnnotations": {"a": "b"}}},
    # issue 21: a chat-ops bot in another namespace reaches the bundled Redis, which persists (AOF on a PVC)
    "chatops-from-another-namespace": {"redis": {"persistence": {"enabled": True, "size": "2Gi"}, "networkPolicy": {
        "enabled": True, "allowFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "chatops"}},
                                        "podSelector": {"matchLabels": {"app": "taiga-bot"}}}]}}},
    # issue 21: signing on (the default, a generated pair) with a chat-ops bot's certificate trusted too
    "signing-with-a-bot-certificate": {"signing": {"trustedCertificates": {
        "chatops-bot.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}},
    "restore-deployments-changed": {"quiesce": {"backup": ["taiga-front-deployment"],
                                                "restore": ["taiga-front-deployment", "taiga-back-deployment",
                                                            "taiga-extra-deployment"]}},
}



def merged(*cases: dict) -> dict:
    """The cases' values deep-merged (mappings merged key by key, anything else: the last one wins)."""
    out: dict = {}
    for case in cases:
        for key, value in case.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# issue 21: every optional part at once, so no two of them collide (a volume or an env name twice, a
# NetworkPolicy that misses Flower...) unnoticed; the cases above each turn on one.
MATRIX["notify-from-values"] = {"notify": {"webhookUrl": "https://hooks.example/T0/B0/x",
                                           "healthcheckPingUrl": "https://hc-ping.example/uuid"}}
MATRIX["notify-existing-secret-ping-only"] = {"notify": {"existingSecret": "alerts",
                                                         "existingSecretKeys": ["healthcheck-ping-url"]}}
MATRIX["everything-on"] = merged(
    *(MATRIX[c] for c in ("notify-from-values", "flower-basic-auth", "s3-repository", "metrics-servicemonitor-alerts-dashboard",
                          "escape-hatches", "chatops-from-another-namespace", "signing-with-a-bot-certificate",
                          "restore-deployments-changed")),
    {"restic": {"cache": {"persistence": {"enabled": True, "size": "10Gi", "storageClassName": "fast"}}},
     "verify": {"scratch": {"size": "40Gi", "storageClassName": "fast"}},
     "image": {"pgMajor": 17},
     "metrics": {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}}},
     "prometheusRule": {"labels": {"release": "kube-prometheus-stack"}},
     "dashboard": {"annotations": {"grafana_folder": "Backups"}}})

# Secrets whose contents the chart generates (a password, a key pair).
GENERATED_SECRETS = {f"{FULLNAME}-redis", f"{FULLNAME}-signing"}

# Custom resources have no schema in kubernetes-validate: the fields the chart uses, closed.
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
        "properties": {
            "selector": {"type": "object", "required": ["matchLabels"]},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                               "interval": {"type": "string"}, "scrapeTimeout": {"type": "string"},
                               "honorLabels": {"type": "boolean"}}}}}},
    "PrometheusRule": {
        "type": "object", "required": ["groups"], "additionalProperties": False,
        "properties": {"groups": {"type": "array", "items": {
            "type": "object", "required": ["name", "rules"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "rules": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["alert", "expr"], "additionalProperties": False,
                "properties": {"alert": {"type": "string"}, "expr": {"type": "string"},
                               "for": {"type": "string", "pattern": "^[0-9]+[smhd]$"},
                               "labels": {"type": "object"}, "annotations": {"type": "object"}}}}}}}}},
}


def write_values(tmp: Path, name: str, values: dict) -> Path:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(values))
    return path


def test_both_helm_majors_are_real(helms):
    versions = {m: subprocess.run([p, "version", "--template", "{{.Version}}"], capture_output=True, text=True,
                                  check=True).stdout for m, p in helms.items()}
    assert versions["3"].startswith("v3.") and versions["4"].startswith("v4."), versions


@pytest.mark.parametrize("case", MATRIX, ids=list(MATRIX))
def test_lint_strict(helm, case, tmp_path):
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                           "--values", str(write_values(tmp_path, case, MATRIX[case]))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", MATRIX, ids=list(MATRIX))
def test_every_manifest_validates_strictly(helm, case, kube_version):
    objects = render(helm, MATRIX[case], kube_version)
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE
        if obj["kind"] in CRD_SCHEMAS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            jsonschema.validate(obj["spec"], CRD_SCHEMAS[obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} invalid for Kubernetes {kube_version}: {exc}")
    assert {"Deployment", "Role", "RoleBinding", "ServiceAccount"} <= kinds
    if case == "metrics-servicemonitor-alerts-dashboard":
        assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    if case == "everything-on":
        assert {"ServiceMonitor", "PrometheusRule", "PersistentVolumeClaim", "NetworkPolicy"} <= kinds
        assert len([o for o in objects if o["kind"] == "PersistentVolumeClaim"]) == 2  # Redis, restic cache
    if case == "defaults":
        assert not kinds & {"ServiceMonitor", "PrometheusRule", "PersistentVolumeClaim"}  # off by default


@pytest.mark.parametrize("case", MATRIX, ids=list(MATRIX))
def test_both_helm_majors_render_the_same(helms, case):
    assert masked(render(helms["3"], MATRIX[case])) == masked(render(helms["4"], MATRIX[case]))


def masked(objects: list[dict]) -> list[dict]:
    """The values the chart generates at random (kept afterwards through `lookup`, which `helm template`
    has nothing for) differ between any two renderings: only their keys are compared."""
    out = []
    for obj in objects:
        if obj["kind"] == "Secret" and obj["metadata"]["name"] in GENERATED_SECRETS:
            obj = {**obj, "stringData": dict.fromkeys(obj.get("stringData", {}), "<generated>"),
                   "data": dict.fromkeys(obj.get("data", {}), "<generated>")}
        out.append(obj)
    return out


# -- the worker's environment against the settings table ------------------------------------------


def settings_table():
    from worker.settings import SETTINGS

    return {s.env: s for s in SETTINGS}


@pytest.mark.parametrize("case", MATRIX, ids=list(MATRIX))
def test_worker_env_matches_the_settings_table(helms, case):
    table = settings_table()
    objects = render(helms["4"], MATRIX[case])
    pod, container = worker_container(objects)
    env = {e["name"]: e for e in container["env"]}
    mounts = mounted_files(pod, container)

    file_forms = {f"{name}_FILE" for name, s in table.items() if s.secret}
    unknown = set(env) - set(table) - file_forms
    assert unknown == set(), f"variables the worker does not read: {sorted(unknown)}"
    missing = {name for name, s in table.items() if s.required and name not in env and f"{name}_FILE" not in env}
    assert missing == set(), f"required settings not set: {sorted(missing)}"
    plain_secrets = {name for name, s in table.items() if s.secret and name in env}
    assert plain_secrets == set(), f"secrets given as values instead of _FILE paths: {sorted(plain_secrets)}"

    for name, entry in env.items():
        if not name.endswith("_FILE"):
            continue
        assert "value" in entry, f"{name} must be a literal path, not {entry}"
        directory, key = posixpath.split(entry["value"])
        assert directory in mounts, f"{name}={entry['value']} is not in a mounted volume"
        is_secret = secret_keys(mounts[directory])
        assert is_secret, f"{name} points into {mounts[directory]}, not a Secret"
        _, keys = is_secret
        assert keys is None or key in keys, f"{name}: key {key} is not projected"
    # chart-made Secrets really have the keys the _FILE paths name
    made = {o["metadata"]["name"]: set((o.get("data") or {}) | (o.get("stringData") or {}))
            for o in objects if o["kind"] == "Secret"}
    for name, entry in env.items():
        if name.endswith("_FILE"):
            directory, key = posixpath.split(entry["value"])
            secret_name, _ = secret_keys(mounts[directory])
            if secret_name in made and not mounts[directory]["secret"].get("optional"):
                assert key in made[secret_name] or name == "RESTIC_NEW_PASSWORD_FILE", (name, secret_name)


def test_flower_env_is_settings_plus_its_basic_auth(helms):
    table = settings_table()
    objects = render(helms["4"], MATRIX["flower-basic-auth"])
    (container,) = one(objects, "Deployment", f"{FULLNAME}-flower")["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in container["env"]}
    file_forms = {f"{n}_FILE" for n, s in table.items() if s.secret}
    assert names - set(table) - file_forms == {"FLOWER_BASIC_AUTH"}
    (auth,) = [e for e in container["env"] if e["name"] == "FLOWER_BASIC_AUTH"]
    assert "secretKeyRef" in auth["valueFrom"]  # from a Secret, never a literal in the manifest


def test_flower_gets_no_key_the_worker_trusts(helms):
    """With signing on, the worker mounts its key; Flower (monitoring only: events and results)
    gets none, so whatever its API would apply is unsigned and dropped by the worker."""
    values = {**MATRIX["message-signing"], "flower": {"enabled": True, "basicAuth": {"credentials": "a:b"}}}
    objects = render(helms["4"], values)
    _, worker = worker_container(objects)
    assert {"CELERY_SECURITY_KEY_FILE", "CELERY_SECURITY_CERT_FILE"} <= {e["name"] for e in worker["env"]}
    flower = one(objects, "Deployment", f"{FULLNAME}-flower")["spec"]["template"]["spec"]
    (container,) = flower["containers"]
    assert not [e["name"] for e in container["env"] if e["name"].startswith("CELERY_SECURITY_")]
    assert "celery-signing" not in {v["name"] for v in flower["volumes"]}


# -- RBAC: exactly what the code calls --------------------------------------------------------------


@pytest.mark.parametrize("case", ["defaults", "restore-deployments-changed", "everything-on"])
def test_role_is_exactly_required_rbac(helm, case):
    from worker.adapters.kube import REQUIRED_RBAC

    values = MATRIX[case]
    objects = render(helm, values)
    role = one(objects, "Role")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["quiesce"]
    quiesce = {**defaults, **values.get("quiesce", {})}
    names = list(dict.fromkeys(quiesce["backup"] + quiesce["restore"]))
    granted = []
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.append({"apiGroup": group, "resource": resource, "verbs": sorted(rule["verbs"])})
        if rule["resources"] == ["pods"]:
            assert "resourceNames" not in rule  # list cannot be restricted by name
        else:
            assert rule["resourceNames"] == names
    key = lambda r: (r["apiGroup"], r["resource"])  # noqa: E731
    expected = [{**r, "verbs": sorted(r["verbs"])} for r in REQUIRED_RBAC]
    assert sorted(granted, key=key) == sorted(expected, key=key)
    binding = one(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


def test_no_role_without_rbac_create(helms):
    kinds = {o["kind"] for o in render(helms["4"], {"rbac": {"create": False}})}
    assert not kinds & {"Role", "RoleBinding"}


# -- the worker Deployment ------------------------------------------------------------------------


def test_worker_deployment_shape(helm):
    objects = render(helm, {})
    dep = one(objects, "Deployment", FULLNAME)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod, container = worker_container(objects)
    assert container["args"] == ["taiga-backup", "worker", "--beat"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["taiga-backup", "ping", "--self-only"], probe
    assert container["livenessProbe"]["exec"]["command"] == ["taiga-backup", "alive"]  # no Redis needed
    assert pod["securityContext"]["runAsUser"] == 999 and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # emptyDirs where the image writes (docker/Dockerfile: WORKDIR, XDG_CACHE_HOME, /tmp)
    mounts = mounted_files(pod, container)
    for path in ("/var/lib/taiga-backup", "/var/cache/taiga-backup", "/tmp"):
        assert "emptyDir" in mounts[path], path
    assert "persistentVolumeClaim" in mounts["/media"]


def test_worker_uses_the_old_procedures_objects(helms):
    pod, container = worker_container(render(helms["4"], {}))
    env = {e["name"]: e for e in container["env"]}
    assert env["RESTIC_REPOSITORY"]["valueFrom"]["configMapKeyRef"] == {"name": "backup-config",
                                                                         "key": "restic-repository"}
    assert env["POSTGRES_DB"]["valueFrom"]["configMapKeyRef"]["name"] == "postgres-config"
    assert env["POSTGRES_USER"]["valueFrom"]["secretKeyRef"]["name"] == "postgres-secret"
    mounts = mounted_files(pod, container)
    secrets = {path: secret_keys(v)[0] for path, v in mounts.items() if secret_keys(v)}
    assert secrets[posixpath.dirname(env["RESTIC_PASSWORD_FILE"]["value"])] == "backup-secret"
    assert secrets[posixpath.dirname(env["POSTGRES_PASSWORD_FILE"]["value"])] == "postgres-secret"
    assert posixpath.basename(env["RESTIC_PASSWORD_FILE"]["value"]) == "restic-password"


# -- inconsistent values are refused ----------------------------------------------------------------

REFUSED = [
    ("schema-type", {"metrics": {"port": "x"}}, "metrics"),
    ("schema-unknown-key", {"surprise": 1}, "surprise"),
    ("schema-bad-cron", {"schedule": {"backup": "daily"}}, "schedule"),
    ("schema-alert-threshold", {"prometheusRule": {"quiescedMinutes": 0}}, "quiescedMinutes"),
    ("bundled-and-url", {"redis": {"url": "redis://x:6379/0"}}, "redis.bundled=false"),
    ("no-broker", {"redis": {"bundled": False}}, "redis.url"),
    ("flower-no-auth", {"flower": {"enabled": True}}, "basicAuth"),
    ("no-password", {"restic": {"existingSecret": ""}}, "restic.password"),
    ("empty-restore-list", {"quiesce": {"restore": []}}, "restore"),
    ("rules-without-servicemonitor", {"prometheusRule": {"enabled": True}}, "metrics.serviceMonitor.enabled"),
    ("dashboard-without-metrics", {"dashboard": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
     "metrics.service.enabled"),
]


@pytest.mark.parametrize("what,values,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_inconsistent_values_are_refused(helm, what, values, message):
    err = refusal(helm, values)
    assert message in err, err


# -- NOTES -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run_env(tmp_path_factory):
    with fake_cluster(DiscoveryOnly, tmp_path_factory.mktemp("helm-kube")) as env:
        yield env


def notes(helm, env, *extra) -> str:
    proc = subprocess.run([helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                           "--disable-openapi-validation", *extra],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_start_with_backup_status_and_a_restore_preview(helm, dry_run_env):
    commands = [line.strip() for line in notes(helm, dry_run_env).splitlines() if "-- taiga-backup " in line]
    prefix = f"kubectl -n {NAMESPACE} exec deploy/{FULLNAME} -- taiga-backup"
    assert commands[:3] == [f"{prefix} backup", f"{prefix} status <task id>", f"{prefix} restore --dry-run"]


def test_notes_commands_are_cli_commands(helm, dry_run_env):
    """Every `taiga-backup ...` the NOTES tell users to run parses with the real CLI."""
    from worker.cli import build_parser

    text = notes(helm, dry_run_env, "--set", "prometheusRule.enabled=true,metrics.serviceMonitor.enabled=true")
    unparsable = []
    for line in text.splitlines():
        if "-- taiga-backup " in line:
            argv = line.split("-- taiga-backup ", 1)[1].replace("<task id>", "some-task-id").split()
            try:
                build_parser().parse_args(argv)
            except SystemExit:
                unparsable.append(" ".join(argv))
    assert unparsable == []


def test_the_instance_is_the_release_namespace_unless_set(helms):
    def instance(values):
        _, container = worker_container(render(helms["4"], values))
        return {e["name"]: e.get("value") for e in container["env"]}["TAIGA_INSTANCE"]

    assert instance({}) == NAMESPACE
    assert instance({"instance": "taiga-b"}) == "taiga-b"


def test_the_backup_window_and_the_fleet_cap_are_rendered(helms):
    def env(values):
        _, container = worker_container(render(helms["4"], values))
        found = {e["name"]: e.get("value") for e in container["env"]}
        return found["BACKUP_WINDOW"], found["FLEET_MAX_CONCURRENT_BACKUPS"]

    assert env({}) == ("0", "0")
    assert env({"schedule": {"backupWindow": "2h"}, "fleet": {"maxConcurrentBackups": 3}}) == ("2h", "3")
