"""What an operator meets on the first day in a real cluster (issue 21), rendered by real Helm 3 and 4.

Each test states a promise of values.yaml / docs/operations.md and checks it against what `helm template`
renders: the schedules the worker really gets, what survives `helm uninstall`, the drill's scratch space,
the escape hatches, the bundled Redis, and message signing.
"""

from __future__ import annotations

import pytest

from packaging_support import FULLNAME, helm, one, render, worker_container  # noqa: F401 (fixture)

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
