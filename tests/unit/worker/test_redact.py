"""worker/redact.py: what a log line or an error says never carries a registered secret or a URL's
password."""

from __future__ import annotations

from worker import redact


def test_redact_scrubs_registered_secrets_and_url_passwords():
    redact.register("hunter2-long")
    text = redact.redact("auth failed for hunter2-long at redis://:p4ss@host:6379/0")
    assert "hunter2-long" not in text and "p4ss" not in text and "***" in text
