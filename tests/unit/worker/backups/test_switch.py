"""worker/backups/switch.py: a switch journal found on the media volume is checked before the restore
acts on it."""

from __future__ import annotations

import json

import pytest

from worker.backups import switch
from worker.settings import Settings


def settings(tmp_path, files_dir=None) -> Settings:
    (tmp_path / "p").write_text("pw\n")
    return Settings.from_env({"BACKUP_FILES_DIR": str(files_dir or tmp_path), "RESTIC_REPOSITORY": str(tmp_path / "r"),
                              "RESTIC_PASSWORD_FILE": str(tmp_path / "p"), "CELERY_BROKER_URL": "redis://x"})


@pytest.mark.parametrize("doc", [
    {"id": "../../etc", "direction": "forward", "media": "moving_out", "source": ".taiga-backup-restore-x"},
    {"id": "20240101000000", "direction": "sideways", "media": "moving_out", "source": ".taiga-backup-restore-20240101000000"},
    {"id": "20240101000000", "direction": "forward", "media": "moving_out", "source": "../elsewhere"},
    {"id": "20240101000000", "direction": "forward", "media": "moving_out",
     "source": ".taiga-backup-restore-20240101000000/../../x"},
    ["not", "a", "journal"],
])
def test_a_journal_that_is_not_ours_is_refused(tmp_path, doc):
    (tmp_path / ".taiga-backup-switch.json").write_text(json.dumps(doc))
    with pytest.raises(switch.SwitchError, match="not one of ours"):
        switch.read_journal(settings(tmp_path))


def test_a_good_journal_is_read(tmp_path):
    doc = {"id": "20240101000000", "direction": "forward", "media": "moving_in", "had_live": True,
           "source": ".taiga-backup-restore-20240101000000"}
    (tmp_path / ".taiga-backup-switch.json").write_text(json.dumps(doc))
    assert switch.read_journal(settings(tmp_path)) == doc
    assert switch.read_journal(settings(tmp_path, tmp_path / "nowhere")) is None


@pytest.mark.parametrize("letter, position", [("A", "moving_out"), ("B", "moving_in"), ("old", "old")])
def test_a_version_1_journal_is_read_with_its_old_position_letters(tmp_path, letter, position):
    doc = {"version": 1, "id": "20240101000000", "direction": "forward", "media": letter, "had_live": True,
           "source": ".taiga-backup-restore-20240101000000"}
    (tmp_path / ".taiga-backup-switch.json").write_text(json.dumps(doc))
    assert switch.read_journal(settings(tmp_path)) == {**doc, "version": switch.VERSION, "media": position}


def test_an_unknown_position_is_refused(tmp_path):
    doc = {"id": "20240101000000", "direction": "forward", "media": "A", "had_live": True,
           "source": ".taiga-backup-restore-20240101000000"}
    (tmp_path / ".taiga-backup-switch.json").write_text(json.dumps(doc))
    with pytest.raises(switch.SwitchError, match="not one of ours"):
        switch.read_journal(settings(tmp_path))
