"""What an operator meets on the first day in a real cluster (issue 21), rendered by real Helm 3 and 4.

Each test states a promise of values.yaml / docs/operations.md and checks it against what `helm template`
renders: the schedules the worker really gets, what survives `helm uninstall`, the drill's scratch space,
the escape hatches, the bundled Redis, and message signing.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import pytest
import yaml

from packaging_support import (CHART, FULLNAME, NAMESPACE, RELEASE, free_port, helm,  # noqa: F401 (fixture)
                               one, render, worker_container)
from test_chart_render import _DiscoveryOnly

WORKER_DEFAULT_SCHEDULES = {"PRUNE_SCHEDULE": "40 23 * * *", "CHECK_SCHEDULE": "10 2 * * 0",
                            "VERIFY_SCHEDULE": "10 3 * * 0"}


def worker_env(objects) -> dict[str, dict]:
    _, container = worker_container(objects)
    return {e["name"]: e for e in container["env"]}


# -- 1. schedules: the chart renders every one, "off" included -------------------------------------


def test_default_schedules_are_rendered_not_left_to_the_worker(helm):
    """Retention nightly after the backup, a weekly repository check and a weekly restore drill: written
    into the manifest, so what `helm get manifest` shows is what beat runs."""
    env = worker_env(render(helm, {}))
    rendered = {name: env.get(name, {}).get("value") for name in WORKER_DEFAULT_SCHEDULES}
    assert rendered == WORKER_DEFAULT_SCHEDULES


@pytest.mark.parametrize("off", ["off", ""])
def test_a_schedule_turned_off_renders_off(helm, off):
    """`off` (and the old documented "") must reach the worker as `off`: an omitted variable would mean
    the worker's default, i.e. the job runs."""
    env = worker_env(render(helm, {"schedule": {"prune": off, "check": off, "verify": off}}))
    assert {name: env.get(name, {}).get("value") for name in WORKER_DEFAULT_SCHEDULES} == dict.fromkeys(
        WORKER_DEFAULT_SCHEDULES, "off")


def test_off_is_what_the_worker_reads_as_off():
    from worker.settings import _schedule

    assert _schedule("PRUNE_SCHEDULE", "off") is None


# -- 2. the restic password survives helm uninstall -------------------------------------------------

CHART_MADE_RESTIC = {"restic": {"existingSecret": "", "existingConfigMap": "", "repository": "s3:https://s3.example/b",
                                "password": "p", "awsAccessKeyId": "a", "awsSecretAccessKey": "s"}}


def test_chart_made_restic_secret_is_kept_on_uninstall(helm):
    secret = one(render(helm, CHART_MADE_RESTIC), "Secret", f"{FULLNAME}-backup")
    assert secret["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"


# -- 3. the drill restores into a volume of its own, of a known size --------------------------------


def scratch_volume(objects) -> tuple[str, dict, dict]:
    pod, container = worker_container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env.get("VERIFY_DIR")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    inits = pod.get("initContainers", [])
    return env["VERIFY_DIR"], volume, {c["name"]: c for c in inits}


def test_drill_scratch_is_an_ephemeral_volume_of_the_configured_size(helm):
    """Not /tmp (an emptyDir without a limit: node disk pressure every Sunday) and not an emptyDir with a
    sizeLimit (statvfs there reports the node's disk, so the worker's fit check could not see the limit)."""
    path, volume, inits = scratch_volume(render(helm, {"verify": {"scratch": {"size": "3Gi",
                                                                              "storageClassName": "fast"}}}))
    assert path != "/tmp" and not path.startswith("/tmp/")
    spec = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert spec["resources"]["requests"]["storage"] == "3Gi" and spec["storageClassName"] == "fast"
    assert spec["accessModes"] == ["ReadWriteOnce"]
    # a fresh volume's root is root's: made the worker's (999) by a root init container that can only chown
    chown = inits["verify-scratch-owner"]
    assert chown["command"][-1] == path and chown["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                                                          "add": ["CHOWN"]}


def test_drill_scratch_can_be_an_existing_claim_without_the_chown(helm):
    _, volume, inits = scratch_volume(render(helm, {"verify": {"scratch": {"existingClaim": "drill-space",
                                                                           "chown": False}}}))
    assert volume["persistentVolumeClaim"] == {"claimName": "drill-space"} and inits == {}


# -- 4. escape hatches: what an operator adds without forking the chart -----------------------------

HATCHES = {
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    "extraEnvFrom": [{"secretRef": {"name": "restic-backend"}}],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
    "priorityClassName": "backup-critical",
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "worker": {"podLabels": {"team": "ops"}, "podAnnotations": {"note": "worker"}},
    "redis": {"podLabels": {"team": "ops"}, "podAnnotations": {"note": "redis"}},
    "flower": {"enabled": True, "basicAuth": {"credentials": "a:b"},
               "podLabels": {"team": "ops"}, "podAnnotations": {"note": "flower"}},
}


def test_escape_hatches_reach_the_worker(helm):
    pod, container = worker_container(render(helm, HATCHES))
    assert HATCHES["extraEnv"][0] in container["env"]
    assert container["envFrom"] == HATCHES["extraEnvFrom"]
    assert HATCHES["extraVolumes"][0] in pod["volumes"]
    assert HATCHES["extraVolumeMounts"][0] in container["volumeMounts"]
    assert pod["priorityClassName"] == "backup-critical"
    assert pod["topologySpreadConstraints"] == HATCHES["topologySpreadConstraints"]


@pytest.mark.parametrize("component,name", [("worker", FULLNAME), ("redis", f"{FULLNAME}-redis"),
                                            ("flower", f"{FULLNAME}-flower")])
def test_every_pod_takes_labels_annotations_and_the_priority_class(helm, component, name):
    template = one(render(helm, HATCHES), "Deployment", name)["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "ops"
    assert template["metadata"]["annotations"]["note"] == component
    assert template["spec"]["priorityClassName"] == "backup-critical"


# -- 5. the bundled Redis: a kept password, optional AOF, no eviction, reachable from a bot ---------

REDIS = f"{FULLNAME}-redis"


def redis_container(objects) -> tuple[dict, dict]:
    pod = one(objects, "Deployment", REDIS)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_bundled_redis_has_a_password_kept_in_a_secret_and_never_in_argv(helm):
    objects = render(helm, {})
    secret = one(objects, "Secret", REDIS)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = secret["stringData"]
    password = data["password"]
    assert len(password) >= 32
    assert data["broker-url"] == f"redis://:{password}@{REDIS}:6379/0"
    assert f"requirepass {password}" in data["redis.conf"].splitlines()
    pod, container = redis_container(objects)
    assert password not in str(container["args"]) and password not in str(container.get("env"))
    conf = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "redis-auth"]
    assert container["args"][:2] == ["redis-server", f"{conf[0]}/redis.conf"]
    # the worker (and Flower, the same helper) read the URL with the password from that Secret
    wpod, worker = worker_container(objects)
    env = {e["name"]: e.get("value") for e in worker["env"]}
    directory, key = env["CELERY_BROKER_URL_FILE"].rsplit("/", 1)
    (mount,) = [m for m in worker["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in wpod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == REDIS and key == "broker-url"


def test_bundled_redis_never_evicts_keys(helm):
    _, container = redis_container(render(helm, {"redis": {"maxmemory": "64mb"}}))
    args = container["args"]
    assert args[args.index("--maxmemory") + 1] == "64mb"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # leases must never vanish


def test_bundled_redis_persists_to_a_claim_with_aof_when_asked(helm):
    objects = render(helm, {"redis": {"persistence": {"enabled": True, "size": "2Gi"}}})
    pvc = one(objects, "PersistentVolumeClaim", REDIS)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod, container = redis_container(objects)
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (data,) = [v for v in pod["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == REDIS
    assert pod["securityContext"]["fsGroup"] == 999  # a fresh claim is writable by redis
    default_args = redis_container(render(helm, {}))[1]["args"]
    assert default_args[default_args.index("--appendonly") + 1] == "no"


def test_bundled_redis_admits_a_chatops_bot_from_another_namespace(helm):
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "chatops"}},
            "podSelector": {"matchLabels": {"app": "bot"}}}
    policy = one(render(helm, {"redis": {"networkPolicy": {"enabled": True, "allowFrom": [peer]}}}),
                 "NetworkPolicy", REDIS)
    peers = [p for rule in policy["spec"]["ingress"] for p in rule["from"]]
    assert peer in peers and len(peers) == 2  # this release's pods, and the bot


class _ClusterWithKeptSecrets(_DiscoveryOnly):
    """A cluster that already holds the Secrets an earlier install generated (what `lookup` reads on
    an upgrade or a reinstall), and no release records."""

    kept: dict[str, dict] = {}

    def _body(self, path: str):
        prefix = f"/api/v1/namespaces/{NAMESPACE}/secrets"
        if path == prefix:
            return {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}
        if path.startswith(prefix + "/"):
            return self.kept.get(path.rsplit("/", 1)[1])
        return super()._body(path)


def kept_secret(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "Helm"},
                         "annotations": {"meta.helm.sh/release-name": RELEASE,
                                         "meta.helm.sh/release-namespace": NAMESPACE}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


@pytest.fixture
def cluster(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClusterWithKeptSecrets)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": NAMESPACE}}]}))
    yield {**os.environ, "KUBECONFIG": str(kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data")}
    server.shutdown()
    _ClusterWithKeptSecrets.kept = {}


def installed(helm: str, env: dict, values: dict) -> list[dict]:
    """`helm install --dry-run=server`: renders with `lookup` answered by the cluster, installs nothing."""
    proc = subprocess.run([helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server",
                           "--disable-openapi-validation", "--values", "/dev/stdin"], input=json.dumps(values),
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    manifest = proc.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    return [d for d in yaml.safe_load_all(manifest) if d]


def test_bundled_redis_password_is_kept_across_upgrades(helm, cluster):
    _ClusterWithKeptSecrets.kept = {REDIS: kept_secret(REDIS, {"password": "the-one-generated-at-install"})}
    data = one(installed(helm, cluster, {}), "Secret", REDIS)["stringData"]
    assert data["password"] == "the-one-generated-at-install"
    assert data["broker-url"] == f"redis://:the-one-generated-at-install@{REDIS}:6379/0"


def test_rendered_redis_arguments_and_config_run_a_real_redis_that_demands_the_password(helms, tmp_path):
    """The chart's redis args and its Secret's redis.conf, given to a real redis-server: without the
    password a client is refused; with the worker's broker-url it gets in, and nothing is evicted."""
    import redis

    objects = render(helms["4"], {"redis": {"maxmemory": "8mb"}})
    data = one(objects, "Secret", REDIS)["stringData"]
    _, container = redis_container(objects)
    (tmp_path / "redis.conf").write_text(data["redis.conf"])
    port = free_port()
    args = [str(tmp_path / "redis.conf") if a == container["args"][1] else a for a in container["args"][1:]]
    args[args.index("--port") + 1] = str(port)
    server = subprocess.Popen(["redis-server", *args, "--dir", str(tmp_path), "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL)
    try:
        url = data["broker-url"].replace(f"@{REDIS}:6379", f"@127.0.0.1:{port}")
        client = redis.Redis.from_url(url, socket_timeout=5, retry_on_timeout=False)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                threading.Event().wait(0.05)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).get("x")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.set("taiga-backup:lease:backup", "held")
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for i in range(10_000):
                client.set(f"filler:{i}", "x" * 4096)
        assert client.get("taiga-backup:lease:backup") == b"held"  # refused writes, no eviction
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- 7. signing on by default: a generated, kept key pair for the worker only; Flower read-only --------

SIGNING = f"{FULLNAME}-signing"
FLOWER_ON = {"flower": {"enabled": True, "basicAuth": {"credentials": "ops:pw"}}}


def projected_files(pod: dict, container: dict, directory: str) -> list[tuple[str, str, str]]:
    """(kind, object name, key) of every file a projected or plain volume mounted at `directory` holds."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"] if "projected" in volume else [volume]
    out = []
    for source in sources:
        kind = "secret" if "secret" in source else "configMap"
        ref = source[kind]
        name = ref.get("secretName") or ref["name"]
        out += [(kind, name, i["key"]) for i in ref.get("items", [])] or [(kind, name, "*")]
    return out


def test_signing_is_on_by_default_with_a_generated_key_pair_kept_on_uninstall(helm):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    objects = render(helm, {})
    secret = one(objects, "Secret", SIGNING)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = serialization.load_pem_private_key(secret["stringData"]["tls.key"].encode(), password=None)
    cert = x509.load_pem_x509_certificate(secret["stringData"]["tls.crt"].encode())
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # a pair
    pod, worker = worker_container(objects)
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert {"CELERY_SECURITY_KEY_FILE", "CELERY_SECURITY_CERT_FILE", "CELERY_SECURITY_CERT_STORE"} <= set(env)
    store = projected_files(pod, worker, env["CELERY_SECURITY_CERT_STORE"])
    assert ("secret", SIGNING, "tls.crt") in store and not [f for f in store if f[2] == "tls.key"]


def test_flower_never_has_the_key_and_cannot_send_tasks(helm):
    objects = render(helm, FLOWER_ON)
    flower = one(objects, "Deployment", f"{FULLNAME}-flower")["spec"]["template"]["spec"]
    (container,) = flower["containers"]
    assert not [e for e in container["env"] if e["name"].startswith("CELERY_SECURITY_")]
    assert SIGNING not in str(flower["volumes"])
    assert "--read_only=True" in container["args"]


def test_a_bots_certificate_joins_the_worker_trust_store(helm):
    bot = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    objects = render(helm, {"signing": {"trustedCertificates": {"chatops-bot.crt": bot}}})
    trust = one(objects, "ConfigMap", f"{FULLNAME}-signing-trust")
    assert trust["data"] == {"chatops-bot.crt": bot}
    pod, worker = worker_container(objects)
    env = {e["name"]: e.get("value") for e in worker["env"]}
    store = projected_files(pod, worker, env["CELERY_SECURITY_CERT_STORE"])
    assert ("configMap", f"{FULLNAME}-signing-trust", "*") in store and ("secret", SIGNING, "tls.crt") in store


def test_signing_key_pair_is_kept_across_upgrades(helm, cluster):
    _ClusterWithKeptSecrets.kept = {SIGNING: kept_secret(SIGNING, {"tls.crt": "CERT", "tls.key": "KEY"})}
    data = one(installed(helm, cluster, {}), "Secret", SIGNING)["stringData"]
    assert data == {"tls.crt": "CERT", "tls.key": "KEY"}


def test_signing_can_be_turned_off(helm):
    objects = render(helm, {"signing": {"generate": False}})
    assert not [o for o in objects if o["metadata"]["name"] == SIGNING]
    _, worker = worker_container(objects)
    assert not [e for e in worker["env"] if e["name"].startswith("CELERY_SECURITY_")]


def test_generated_key_pair_signs_and_verifies_with_celery_security(helms, tmp_path):
    """The pair genSelfSignedCert makes is one Celery's `auth` serializer takes: a message signed with the
    rendered key verifies against the rendered trust store (the worker's certificate as worker.crt)."""
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    data = one(render(helms["4"], {}), "Secret", SIGNING)["stringData"]
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "worker.crt").write_text(data["tls.crt"])
    serializer = SecureSerializer(PrivateKey(data["tls.key"]), Certificate(data["tls.crt"]),
                                  FSCertStore(str(tmp_path / "trust")), digest="sha256", serializer="json")
    assert serializer.deserialize(serializer.serialize({"kwargs": {"backup": "latest"}})) == {
        "kwargs": {"backup": "latest"}}


def test_rendered_flower_refuses_to_queue_a_restore(helms, redis_server, tmp_path):
    """Flower started with the chart's arguments against a real Redis: a logged-in user's
    POST /api/task/async-apply/taiga_backup.restore is refused (403), nothing reaches the queue."""
    import redis
    import urllib.error
    import urllib.request

    (container,) = one(render(helms["4"], FLOWER_ON), "Deployment",
                       f"{FULLNAME}-flower")["spec"]["template"]["spec"]["containers"]
    port = free_port()
    args = [a if not a.startswith("--port=") else f"--port={port}" for a in container["args"]]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CELERY_BROKER_URL": redis_server.url,
           "FLOWER_BASIC_AUTH": "ops:pw", "FLOWER_ADDRESS": "127.0.0.1"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"  # the venv's celery
    flower = subprocess.Popen(args, env=env, cwd=str(CHART.parents[1]), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        auth = "Basic " + base64.b64encode(b"ops:pw").decode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/task/async-apply/taiga_backup.restore",
                                         data=b'{"kwargs": {"backup": "latest"}}', method="POST",
                                         headers={"Authorization": auth, "Content-Type": "application/json"})
        status = None
        for _ in range(200):
            try:
                status = urllib.request.urlopen(request, timeout=5).status
                break
            except urllib.error.HTTPError as exc:
                status = exc.code
                break
            except OSError:
                threading.Event().wait(0.1)
        assert status == 403
        assert redis.Redis.from_url(redis_server.url).llen("celery") == 0
    finally:
        flower.terminate()
        flower.wait(timeout=20)
