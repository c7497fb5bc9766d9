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
