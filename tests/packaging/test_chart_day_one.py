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
