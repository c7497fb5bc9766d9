"""Telling people: a JSON webhook for chat after every job, and healthchecks.io-style pings for
the backup (`<url>/start`, `<url>` on success, `<url>/fail`).

A notification never fails or stalls a job for long: 5 s timeouts, one retry only when the
request surely did not arrive (connection refused, 502/503/504), and no retry after a timeout
(the server may have got it; a second chat message helps nobody). The URLs often carry a token,
so they are never logged: errors say "webhook" or "healthcheck ping", not where.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from worker import redact

log = logging.getLogger("taiga_backup.notify")
TIMEOUT = 5.0
RETRY_AFTER = 1.0
RETRY_STATUS = (502, 503, 504)
PINGED_JOBS = ("backup",)


def human_bytes(n: float) -> str:
    """Decimal units, as in the summary's example ('1.2 MB')."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000.0
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000.0:.1f} TB"


def summary(report: dict) -> str:
    """One line for a human: 'backup 20261124T231000Z: 1.2 MB added, app down 14.2 s'."""
    kind = report.get("job", "job")
    name = f"{kind} {report['backup_id']}" if report.get("backup_id") else kind
    took = f"{report['duration_seconds']:.1f} s" if report.get("duration_seconds") is not None else "?"
    if report.get("state") != "SUCCESS":
        return redact.redact(f"{name} FAILED after {took}: {report.get('error') or 'unknown error'}")
    facts = []
    if isinstance(report.get("bytes_added"), dict):
        facts.append(f"{human_bytes(report['bytes_added'].get('total', 0))} added")
    if report.get("downtime_seconds") is not None:
        facts.append(f"app down {report['downtime_seconds']:.1f} s")
    return redact.redact(f"{name}: " + (", ".join(facts) if facts else f"succeeded in {took}"))


def webhook_body(report: dict) -> dict:
    """`text` is the summary again: Slack, Mattermost and Rocket.Chat show it as it is."""
    line = summary(report)
    error = report.get("error")
    return {"job": report.get("job"), "state": report.get("state"), "task_id": report.get("task_id"),
            "summary": line, "error": redact.redact(error) if error else None,
            "finished_at": report.get("finished_at"), "backup_id": report.get("backup_id"), "text": line}


def ping_url(base: str, event: str) -> str:
    """`<base>/start`, `<base>/fail` or `<base>`; a query string stays at the end."""
    if event == "success":
        return base
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + event))


def deliver(url: str, what: str, data: bytes, content_type: str) -> bool:
    """POSTs once (twice if it surely did not arrive); logs the outcome, never raises."""
    for attempt in (1, 2):
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": content_type, "User-Agent": "taiga-backup"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                response.read(1024)
            return True
        except urllib.error.HTTPError as exc:
            problem, again = f"HTTP {exc.code}", exc.code in RETRY_STATUS
        except (TimeoutError, socket.timeout):
            problem, again = f"no answer within {TIMEOUT:.0f} s", False
        except urllib.error.URLError as exc:
            timed_out = isinstance(exc.reason, (TimeoutError, socket.timeout))
            problem = f"no answer within {TIMEOUT:.0f} s" if timed_out else f"unreachable ({exc.reason})"
            again = not timed_out
        except (OSError, ValueError) as exc:
            problem, again = f"failed ({type(exc).__name__})", False
        if not again or attempt == 2:
            log.warning("%s: %s; giving up (the job's outcome is not affected)", what, redact.redact(problem))
            return False
        time.sleep(RETRY_AFTER)
    return False


def ping(settings, kind: str, event: str, text: str = "") -> bool:
    """healthchecks.io convention; the body (shown in its event log) is the summary line."""
    base = settings.healthcheck_ping_url.reveal()
    if not base or kind not in PINGED_JOBS:
        return False
    return deliver(ping_url(base, event), f"healthcheck ping ({event})", text.encode(), "text/plain; charset=utf-8")


def webhook(settings, report: dict) -> bool:
    url = settings.notify_webhook_url.reveal()
    if not url:
        return False
    body = json.dumps(webhook_body(report), sort_keys=True).encode()
    return deliver(url, "webhook", body, "application/json")


def job_started(settings, kind: str) -> None:
    ping(settings, kind, "start")


def job_finished(settings, report: dict) -> None:
    ping(settings, report.get("job", ""), "success" if report.get("state") == "SUCCESS" else "fail", summary(report))
    webhook(settings, report)
