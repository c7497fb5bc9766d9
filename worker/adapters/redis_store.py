"""What taiga-backup keeps in Redis beside Celery's own keys, and where: the client and every key name.

Why one module: the keys are the product's state on the shared broker (leases, reports, nonces,
heartbeats); each is spelled here once, so they change together and nobody reads a key another
module writes under a slightly different name. Several Taigas may share one broker: every key
carries its instance (TAIGA_INSTANCE) except the per-repository ones; `migrate` moves the keys of
a worker from before instances into its instance's namespace.
"""

from __future__ import annotations

import hashlib

import redis

from worker.settings import Settings

PREFIX = "taiga-backup:"
# Not per instance: the job lease (lease_keys, per repository) and the worker heartbeats that tell
# a dead worker's restic locks from a live one's - two instances sharing a repository must see
# each other's - and the fleet's backup slots. Everything else is the instance's own: PREFIX + instance + ":" + ...
WORKERS_KEY = PREFIX + "workers"  # hash: worker host -> last heartbeat (worker.backups.restic_locks)
# Per broker: the backups of every instance share FLEET_MAX_CONCURRENT_BACKUPS slots, a sorted
# set holder (instance:task id) -> lease deadline (worker.adapters.fleet_slots). `fleet` is
# therefore no instance's name (settings.RESERVED_INSTANCES).
FLEET_SLOTS_KEY = PREFIX + "fleet:backup-slots"
# the instance's keys as the one-instance layout named them, without the instance (migrate)
UNPREFIXED = ("report:*", "last:*", "check:last-part", "nonce:*")
MIGRATED_KEY = PREFIX + "migrated"  # the instance that took them (migrate)


def own(instance: str) -> str:
    """The prefix of every key of one instance (TAIGA_INSTANCE)."""
    return f"{PREFIX}{instance}:"


def nonce_key(instance: str, nonce: str) -> str:
    """A signed request's nonce, kept while it may not run again."""
    return f"{own(instance)}nonce:{nonce}"


def check_part_key(instance: str) -> str:
    """The data slice the last clean `restic check` read."""
    return f"{own(instance)}check:last-part"


RECONCILE_RECENT = 20  # summaries kept, newest first: the last 20 minutes under beat


def reconcile_recent_key(instance: str) -> str:
    """The recent reconciles' summaries, one Redis list capped at RECONCILE_RECENT, newest first:
    one key, where a Celery result per run (every minute, kept REPORT_TTL) would be ~43 000 keys
    nobody reads (tasks/reconcile.py). A list, not one overwritten value: two runs at once (the
    start-up one and beat's) would otherwise hide the first to finish."""
    return f"{own(instance)}reconcile:recent"


def push_reconcile_summary(client: redis.Redis, instance: str, summary: str, ttl: int) -> None:
    """Puts `summary` (JSON) first in the instance's list of recent reconciles, in one MULTI with
    the trim, so the list never holds more than RECONCILE_RECENT."""
    key = reconcile_recent_key(instance)
    pipe = client.pipeline()
    pipe.lpush(key, summary)
    pipe.ltrim(key, 0, RECONCILE_RECENT - 1)
    pipe.expire(key, ttl)
    pipe.execute()


def connect(settings: Settings) -> redis.Redis:
    """Same password and TLS (settings.redis_ssl, from CELERY_REDIS_*_FILE) as Celery's connections."""
    return redis.Redis.from_url(settings.result_backend, socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=15, retry_on_timeout=True, **settings.redis_ssl)


REPORT_TTL = 30 * 24 * 3600  # the job reports, Celery's results and the fleet records


def report_key(instance: str, task_id: str) -> str:
    """A job's JSON report, kept for REPORT_TTL."""
    return f"{own(instance)}report:{task_id}"


def report_pattern(instance: str) -> str:
    return own(instance) + "report:*"


def last_report_key(instance: str, kind: str, state: str) -> str:
    """The newest report of a kind of job in a final state (metrics export them; the backup
    learns its quiesce lead from the last good one)."""
    return f"{own(instance)}last:{kind}:{state.lower()}"


def last_report_pattern(instance: str) -> str:
    return own(instance) + "last:*"


# The fleet view (`taiga-backup fleet`): per instance one hash of what the other keys do not say.
# Field "worker:<host>" (each worker host, every heartbeat): version, schedule, next backup start,
# seen at, the lease it takes; field "repositories" (when they are counted, with the metrics):
# snapshots and stored bytes. Expires REPORT_TTL after the last write: a removed instance leaves.
FLEET_WORKER = "worker:"
FLEET_REPOSITORIES = "repositories"


def fleet_key(instance: str) -> str:
    return f"{own(instance)}fleet"


FLEET_PATTERN = PREFIX + "*:fleet"


def record_fleet(client: redis.Redis, instance: str, field: str, value: str, ttl: int = REPORT_TTL) -> None:
    """One field of the instance's fleet hash, and the hash's expiry renewed, in one MULTI."""
    key = fleet_key(instance)
    pipe = client.pipeline()
    pipe.hset(key, field, value)
    pipe.expire(key, ttl)
    pipe.execute()


def instances(client: redis.Redis) -> set[str]:
    """Every instance seen on the broker: those whose workers record themselves for the fleet
    view, and those with only last reports (a worker from before the fleet view). SCAN, not KEYS:
    the broker is shared and busy."""
    found = set()
    for pattern, suffix in ((FLEET_PATTERN, ":fleet"), (PREFIX + "*:last:*", None)):
        for raw in client.scan_iter(match=pattern, count=1000):
            key = (raw.decode() if isinstance(raw, bytes) else raw)[len(PREFIX):]
            name = key[:-len(suffix)] if suffix else key.split(":last:", 1)[0]
            if name and ":" not in name:
                found.add(name)
    return found


def repo_key(repository: str) -> str:
    """A repository URL as a key part: stable, short, and no credentials in key names."""
    return hashlib.sha256(repository.encode()).hexdigest()[:16]


def lease_keys(repository: str) -> tuple[str, str, str]:
    """The job lease of one repository, its `active` record and its `interrupted` list
    (worker.jobs.lease says what each is for)."""
    return lease_keys_of(repo_key(repository))


def lease_keys_of(part: str) -> tuple[str, str, str]:
    """lease_keys by the repository's repo_key (what the fleet record names: never the URL)."""
    return f"{PREFIX}lock:{part}", f"{PREFIX}active:{part}", f"{PREFIX}interrupted:{part}"


def migrate(client: redis.Redis, instance: str) -> list[tuple[str, str]]:
    """Moves the keys of the one-instance layout (taiga-backup:last:..., :report:..., ...) into
    this instance's namespace: each by RENAMENX, atomic, and only where the instance has no such
    key yet (its own is newer; the old one is left for the operator). The TTLs move with them.
    They go to the first instance that starts (MIGRATED_KEY names it), and to it again at its
    next starts (an old worker still running in a rolling upgrade writes a few more), never to
    a second instance added later. Returns (old, new) for each key moved."""
    client.set(MIGRATED_KEY, instance, nx=True)
    taker = client.get(MIGRATED_KEY)
    if (taker.decode() if isinstance(taker, bytes) else taker) != instance:
        return []
    moved = []
    for pattern in UNPREFIXED:
        for raw in list(client.scan_iter(match=PREFIX + pattern, count=1000)):
            old = raw.decode() if isinstance(raw, bytes) else raw
            new = own(instance) + old[len(PREFIX):]
            try:
                if client.renamenx(old, new):
                    moved.append((old, new))
            except redis.ResponseError:
                pass  # moved meanwhile by another worker of this instance
    return moved
