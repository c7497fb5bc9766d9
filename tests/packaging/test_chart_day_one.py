"""What an operator meets on the first day in a real cluster (issue 21), rendered by real Helm 3 and 4.

Each test states a promise of values.yaml / docs/operations.md and checks it against what `helm template`
renders: the schedules the worker really gets, what survives `helm uninstall`, the drill's scratch space,
the escape hatches and the bundled Redis (message signing: test_chart_signing.py).
"""

from __future__ import annotations

import subprocess
import threading

import pytest

from packaging_support import (FULLNAME, KeptSecrets, cluster, free_port, helm,  # noqa: F401 (fixtures)
                               installed, kept_secret, mounted_files, one, render, secret_keys,
                               worker_container)
from test_chart_render import MATRIX

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


# -- 3b. restic's cache can outlive the pod ---------------------------------------------------------

CACHE_DIR = "/var/cache/taiga-backup"  # XDG_CACHE_HOME (docker/Dockerfile)


def cache_volume(pod: dict, container: dict) -> dict:
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == CACHE_DIR]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def test_restic_cache_on_a_pvc_of_its_own(helm):
    """A new pod need not read every index from the repository again; the claim is a cache, so it goes
    with the release (no resource-policy keep), and a fresh volume is made the worker's first."""
    objects = render(helm, {"restic": {"cache": {"persistence": {"enabled": True, "size": "8Gi",
                                                                 "storageClassName": "fast"}}},
                            "flower": {"enabled": True, "basicAuth": {"credentials": "a:b"}}})
    claim = one(objects, "PersistentVolumeClaim", f"{FULLNAME}-restic-cache")
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert claim["spec"]["storageClassName"] == "fast" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "helm.sh/resource-policy" not in claim["metadata"].get("annotations", {})
    pod, container = worker_container(objects)
    assert cache_volume(pod, container) == {"name": "cache", "persistentVolumeClaim": {
        "claimName": f"{FULLNAME}-restic-cache"}}
    owner = {c["name"]: c for c in pod["initContainers"]}["cache-owner"]
    assert owner["command"] == ["chown", "999:999", CACHE_DIR]
    assert owner["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    # Flower runs no restic (and a ReadWriteOnce claim is the worker's): an emptyDir there
    flower = one(objects, "Deployment", f"{FULLNAME}-flower")["spec"]["template"]["spec"]
    assert "emptyDir" in cache_volume(flower, flower["containers"][0])


def test_restic_cache_existing_claim_and_default(helm):
    objects = render(helm, {"restic": {"cache": {"persistence": {"enabled": True, "existingClaim": "my-cache",
                                                                 "chown": False}}}})
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    pod, container = worker_container(objects)
    assert cache_volume(pod, container)["persistentVolumeClaim"] == {"claimName": "my-cache"}
    assert "cache-owner" not in {c["name"] for c in pod.get("initContainers", [])}
    pod, container = worker_container(render(helm, {}))
    assert "emptyDir" in cache_volume(pod, container)  # off by default


# -- 4. escape hatches: what an operator adds without forking the chart -----------------------------

# the matrix case (validated strictly there), with a variable the worker does not read and distinct annotations
HATCHES = {**MATRIX["escape-hatches"], "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
           "worker": {"podLabels": {"team": "ops"}, "podAnnotations": {"note": "worker"}},
           "redis": {"podLabels": {"team": "ops"}, "podAnnotations": {"note": "redis"}},
           "flower": {"enabled": True, "basicAuth": {"credentials": "a:b"},
                      "podLabels": {"team": "ops"}, "podAnnotations": {"note": "flower"}}}


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


def test_bundled_redis_password_is_kept_across_upgrades(helm, cluster):
    KeptSecrets.kept = {REDIS: kept_secret(REDIS, {"password": "the-one-generated-at-install"})}
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



@pytest.mark.parametrize("values, files", [
    ({"webhookUrl": "https://hooks.example/T0/x"}, {"NOTIFY_WEBHOOK_URL_FILE"}),
    ({"existingSecret": "alerts"}, {"NOTIFY_WEBHOOK_URL_FILE", "HEALTHCHECK_PING_URL_FILE"}),
    ({"existingSecret": "alerts", "existingSecretKeys": ["healthcheck-ping-url"]}, {"HEALTHCHECK_PING_URL_FILE"}),
    ({}, set()),
], ids=["from-values", "existing-both", "existing-ping-only", "off"])
def test_notification_urls_reach_the_worker_as_files_only(helm, values, files):
    """The URLs carry tokens: the worker reads them from files of the notify Secret, never from
    a variable (a variable is in `kubectl describe`, /proc/<pid>/environ and crash dumps)."""
    pod, container = worker_container(render(helm, {"notify": values}))
    env = {e["name"]: e for e in container["env"]}
    assert {"NOTIFY_WEBHOOK_URL", "HEALTHCHECK_PING_URL"} & set(env) == set()
    assert {n for n in env if n.endswith("_URL_FILE") and "CELERY" not in n} == files
    mounts = mounted_files(pod, container)
    for name in files:
        directory, key = env[name]["value"].rsplit("/", 1)
        assert secret_keys(mounts[directory]) == ("alerts" if values.get("existingSecret") else
                                                  f"{FULLNAME}-notify", set(files_keys(files)))
        assert key in files_keys(files)


def files_keys(files: set[str]) -> set[str]:
    return {name.removesuffix("_FILE").lower().replace("_", "-") for name in files}
