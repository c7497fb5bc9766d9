"""worker/jobs/requests.py: what a task message may ask for; here, that no message can mark a backup
pre-restore."""

from __future__ import annotations

import pytest


def test_only_the_restore_itself_marks_a_backup_pre_restore():
    """A pre-restore backup is hidden from `latest` and `before`: a message must not set it."""
    from worker.errors import RequestInvalid
    from worker.jobs import requests

    with pytest.raises(RequestInvalid, match="trigger must be one of manual, schedule, chat"):
        requests.keyword_fields(requests.BACKUP, (), {"trigger": "pre-restore"}, {})
    assert requests.keyword_fields(requests.BACKUP, (), {"trigger": "chat"}, {}) == {"trigger": "chat"}


def test_a_safety_backup_request_names_a_kept_state_and_nothing_else():
    from worker.errors import RequestInvalid
    from worker.jobs import requests

    assert requests.safety_request((), {"restore_id": "20261203101500"}) == {
        "restore_id": "20261203101500", "give_up": False, "trigger": "manual"}
    assert requests.safety_request((), {"restore_id": "20261203101500", "give_up": True, "trigger": "restore"})[
        "give_up"] is True
    for fields, refused in [({}, "needs restore_id"), ({"restore_id": "../x"}, "restore_id must be the id"),
                            ({"restore_id": "20261203101500", "give_up": "yes"}, "give_up must be true or false"),
                            ({"restore_id": "20261203101500", "trigger": "pre-restore"}, "trigger must be one of"),
                            ({"restore_id": "20261203101500", "path": "/"}, "unknown argument")]:
        with pytest.raises(RequestInvalid, match=refused):
            requests.safety_request((), fields)
