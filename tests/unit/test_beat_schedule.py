"""beat_schedule.py: Celery beat's schedule built from the *_SCHEDULE settings."""

from __future__ import annotations

import pytest

import beat_schedule
from worker.settings import SettingsError


def test_beat_schedule_from_settings():
    schedule = beat_schedule.build_schedule({"BACKUP_SCHEDULE": "*/5 * * * *", "CHECK_SCHEDULE": "off"})
    assert schedule["backup"]["task"] == "taiga_backup.backup"
    assert "check" not in schedule and "prune" in schedule and "reconcile" in schedule
    assert schedule["backup"]["schedule"].minute == set(range(0, 60, 5))
    default = beat_schedule.build_schedule({})
    assert default["backup"]["schedule"].hour == {23} and default["backup"]["schedule"].minute == {10}
    with pytest.raises(SettingsError):
        beat_schedule.build_schedule({"PRUNE_SCHEDULE": "every night"})
