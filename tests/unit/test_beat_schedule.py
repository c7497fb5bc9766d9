"""beat_schedule.py: Celery beat's schedule built from the *_SCHEDULE settings, and its place in
the layers (pyproject.toml's contracts cannot name a top-level module as a root): it may import
only from the layers below worker.celery_app, its importer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import beat_schedule
from worker.settings import SettingsError

ROOT = Path(__file__).resolve().parents[2]
ABOVE = ("tasks", "worker.cli", "worker.celery_app", "worker.runtime", "testkit", "bench")


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_beat_schedule_imports_nothing_from_its_layer_or_above():
    names = imported(ROOT / "beat_schedule.py")
    assert "worker.settings" in names  # the check reads the real file
    wrong = sorted(n for n in names if any(n == a or n.startswith(a + ".") for a in ABOVE))
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from worker.runtime import control\nimport tasks.backup\n")
    assert {"worker.runtime", "tasks.backup"} <= imported(probe)


def test_beat_schedule_from_settings():
    schedule = beat_schedule.build_schedule({"BACKUP_SCHEDULE": "*/5 * * * *", "CHECK_SCHEDULE": "off"})
    assert schedule["backup"]["task"] == "taiga_backup.backup"
    assert "check" not in schedule and "prune" in schedule and "reconcile" in schedule
    assert schedule["backup"]["schedule"].minute == set(range(0, 60, 5))
    default = beat_schedule.build_schedule({})
    assert default["backup"]["schedule"].hour == {23} and default["backup"]["schedule"].minute == {10}
    with pytest.raises(SettingsError):
        beat_schedule.build_schedule({"PRUNE_SCHEDULE": "every night"})


def test_beat_and_every_client_send_to_the_instances_queue():
    """No queue in the schedule's entries: they go to the app's default queue, the instance's."""
    from worker.celery_app import make_app

    app = make_app({"TAIGA_INSTANCE": "taiga-b", "CELERY_BROKER_URL": "memory://"})
    assert app.conf.task_default_queue == "taiga-backup.taiga-b"
    assert all("queue" not in entry.get("options", {}) for entry in app.conf.beat_schedule.values())
    assert app.amqp.router.route({}, "taiga_backup.backup")["queue"].name == "taiga-backup.taiga-b"


def test_beat_runs_the_backup_at_the_instances_minute_of_the_window():
    plain = beat_schedule.build_schedule({"TAIGA_INSTANCE": "taiga-b"})
    moved = beat_schedule.build_schedule({"TAIGA_INSTANCE": "taiga-b", "BACKUP_WINDOW": "2h"})
    assert (plain["backup"]["schedule"].hour, plain["backup"]["schedule"].minute) == ({23}, {10})
    assert (moved["backup"]["schedule"].hour, moved["backup"]["schedule"].minute) == ({23}, {58})
    assert moved["prune"]["schedule"] == plain["prune"]["schedule"]  # only the backup moves
