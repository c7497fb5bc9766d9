"""What taiga-backup keeps in Redis beside Celery's own keys, and where: the client and every key name.

Why one module: the keys are the product's state on the shared broker (leases, reports, nonces,
heartbeats); each is spelled here once, so they change together (e.g. gain an instance prefix)
and nobody reads a key another module writes under a slightly different name.
"""

from __future__ import annotations

import hashlib

import redis

from worker.settings import Settings

PREFIX = "taiga-backup:"
WORKERS_KEY = PREFIX + "workers"  # hash: worker host -> last heartbeat (worker.backups.restic_locks)
NONCE_PREFIX = PREFIX + "nonce:"  # + a signed request's nonce, while it may not run again
CHECK_PART_KEY = PREFIX + "check:last-part"  # the data slice the last clean `restic check` read
LAST_REPORT_PATTERN = PREFIX + "last:*"


def connect(settings: Settings) -> redis.Redis:
    """Same password and TLS (settings.redis_ssl, from CELERY_REDIS_*_FILE) as Celery's connections."""
    return redis.Redis.from_url(settings.result_backend, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=15, retry_on_timeout=True, **settings.redis_ssl)


def report_key(task_id: str) -> str:
    """A job's JSON report, kept for REPORT_TTL."""
    return f"{PREFIX}report:{task_id}"


def last_report_key(kind: str, state: str) -> str:
    """The newest report of a kind of job in a final state (metrics export them; the backup
    learns its quiesce lead from the last good one)."""
    return f"{PREFIX}last:{kind}:{state.lower()}"


def repo_key(repository: str) -> str:
    """A repository URL as a key part: stable, short, and no credentials in key names."""
    return hashlib.sha256(repository.encode()).hexdigest()[:16]


def lease_keys(repository: str) -> tuple[str, str, str]:
    """The job lease of one repository, its `active` record and its `interrupted` list
    (worker.jobs.lease says what each is for)."""
    part = repo_key(repository)
    return f"{PREFIX}lock:{part}", f"{PREFIX}active:{part}", f"{PREFIX}interrupted:{part}"
