"""A Redis client for our own bookkeeping (job lease, reports), on the same Redis as the broker."""

from __future__ import annotations

import redis

from worker.settings import Settings


def connect(settings: Settings) -> redis.Redis:
    """Same password and TLS (settings.redis_ssl, from CELERY_REDIS_*_FILE) as Celery's connections."""
    return redis.Redis.from_url(settings.result_backend, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=15, retry_on_timeout=True, **settings.redis_ssl)
