"""Last line of defence against leaking secrets into logs, exceptions and results.

Secrets are never put into argv or messages on purpose; this scrubs them anyway wherever text
leaves the process (log records, error messages stored in Redis), in case a child process echoes
one back (psql and restic can quote connection strings or URLs in their errors).
"""

from __future__ import annotations

import logging
import re
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@/\s]+)(@)", re.IGNORECASE)


def register(*values: str) -> None:
    """Remember values that must never be shown (short ones too risky to scrub are skipped)."""
    with _lock:
        for value in values:
            if value and len(value) >= 4:
                _secrets.add(value)


def redact(text: str) -> str:
    if not text:
        return text
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for value in secrets:
        if value in text:
            text = text.replace(value, "***")
    return text


class RedactingFilter(logging.Filter):
    """Scrubs the fully formatted message of every record passing through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_filter() -> None:
    """Attach the filter to every handler of the root logger (Celery adds its own later: call again)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
