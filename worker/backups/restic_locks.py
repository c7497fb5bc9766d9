"""restic locks left behind by crashed pods, and locks held by someone else who is still at work.

restic calls a lock stale only after 30 minutes, or earlier on the *same* host when its process
is gone. A pod gets a new hostname each start, so the lock of a crashed worker would block the
next job for half an hour. Called while our job lease is held, when no other taiga-backup job can
be using the repository: a lock from a worker host that has sent no heartbeat for several lease
periods is ours and dead, and that lock - by its id, never `unlock --remove-all` - is removed
(a pod cut off from Redis but not from the repository would still be renewing it). A lock from anyone else (a person running restic, a live process) is waited
for, up to RESTIC_LOCK_WAIT seconds, then the job fails naming the holder.

Worker hosts are recorded in the Redis hash `taiga-backup:workers` (host -> last heartbeat, unix
time; 0 after a clean shutdown), written by every worker (see worker.runtime.signals).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

from worker.adapters import redis_store
from worker.adapters.restic import Repository, parse_time
from worker.errors import OperatorError
from worker.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
DEAD_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
FORGET_AFTER_SECONDS = 24 * 3600.0  # restic itself calls any lock stale after 30 min
POLL_SECONDS = 2.0
RESTIC_STALE_SECONDS = 30 * 60


class RepositoryLocked(OperatorError):
    """Someone alive holds a restic lock we cannot share; the message names the holder."""


# -- worker heartbeats ------------------------------------------------------------------------
def heartbeat(client, host: str | None = None, *, stopped: bool = False) -> None:
    """Records this worker host as alive (or as cleanly stopped) and forgets hosts long gone."""
    now = time.time()
    client.hset(redis_store.WORKERS_KEY, host or socket.gethostname(), 0 if stopped else int(now))
    old = [h for h, seen in client.hgetall(redis_store.WORKERS_KEY).items() if 0 < float(seen) < now - FORGET_AFTER_SECONDS]
    if old:
        client.hdel(redis_store.WORKERS_KEY, *old)


def start_heartbeat(connect: Callable[[], object], interval: float = HEARTBEAT_SECONDS,
                    also: Callable[[object], None] | None = None) -> threading.Event:
    """A daemon thread beating every `interval` seconds until the returned event is set; with
    each beat, also(client) (the fleet record: its failure never stops the heartbeat)."""
    stop = threading.Event()

    def loop():
        client = None
        while True:
            try:
                client = client or connect()
                heartbeat(client)
            except Exception as exc:  # Redis restarting: the next beat will do
                log.warning("worker heartbeat failed: %s", exc)
                client = None
            if client is not None and also is not None:
                try:
                    also(client)
                except Exception as exc:
                    log.warning("worker heartbeat: %s failed: %s", getattr(also, "__name__", also), exc)
            if stop.wait(interval):
                return

    threading.Thread(target=loop, name="worker-heartbeat", daemon=True).start()
    return stop


def worker_hosts(client) -> dict[str, float]:
    return {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in client.hgetall(redis_store.WORKERS_KEY).items()}


# -- locks ------------------------------------------------------------------------------------
def describe(lock: dict) -> str:
    """`user@host (pid N) since TIME`, the words an operator needs to find the holder."""
    try:
        since = parse_time(lock["time"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (KeyError, ValueError):
        since = "an unknown time"
    return f"{lock.get('username', '?')}@{lock.get('hostname', '?')} (pid {lock.get('pid', '?')}) since {since}"


def _stale(lock: dict) -> bool:
    """restic's own rule (what `restic unlock` removes): older than 30 minutes, or made on this
    host by a process that is gone."""
    try:
        if time.time() - parse_time(lock["time"]).timestamp() > RESTIC_STALE_SECONDS:
            return True
        if lock.get("hostname") != socket.gethostname():
            return False
        os.kill(int(lock["pid"]), 0)
        return False
    except ProcessLookupError:
        return True
    except (KeyError, ValueError, TypeError, PermissionError):
        return False


def _dead_worker(lock: dict, hosts: dict[str, float], now: float, silent: float) -> bool:
    """A lock of one of our worker hosts that has sent no heartbeat for `silent` seconds (several
    lease periods: a pod cut off from Redis but not from the repository keeps its locks fresh and
    would be back within one)."""
    host = lock.get("hostname")
    return host in hosts and host != socket.gethostname() and now - hosts[host] > silent


def make_way(settings: Settings, repo: Repository, redis_client, *, exclusive: bool,
             wait: float | None = None, on_wait: Callable[[str], None] | None = None) -> dict:
    """Returns once `repo` can be used (exclusively or shared, as asked): removes restic's own
    stale locks, and, one by one, the locks of our workers that have been silent for several lease
    periods; waits for live holders. Returns what it did, {"locks_removed": [...], "lock_wait_seconds": s}, or {}."""
    wait = settings.restic_lock_wait if wait is None else wait
    t0 = time.monotonic()
    done: dict = {}

    def blocking(locks):
        return [x for x in locks if exclusive or x.get("exclusive")]

    while True:
        locks = repo.locks()
        if not blocking(locks):
            break
        repo.unlock_stale()  # restic's own rule: > 30 min, or this host and the process gone
        still = {lock["id"] for lock in repo.locks()}
        stale = [describe(x) + " (stale)" for x in locks if x["id"] not in still and _stale(x)]
        if stale:
            done.setdefault("locks_removed", []).extend(stale)
        locks = [x for x in locks if x["id"] in still]
        if not blocking(locks):
            break
        now, hosts = time.time(), worker_hosts(redis_client)
        silent = max(DEAD_AFTER_SECONDS, 3 * settings.lock_lease_seconds)
        dead = [x for x in locks if _dead_worker(x, hosts, now, silent)]
        removed = [x for x in dead if repo.remove_lock(x["id"])]
        if removed:  # only these lock ids: a live holder's lock is never touched
            done.setdefault("locks_removed", []).extend(describe(x) + " (worker gone)" for x in removed)
            log.warning("%s: removed locks of stopped workers: %s", repo.name, ", ".join(map(describe, removed)))
            continue
        alive = [x for x in locks if x not in dead]
        holders = [x for x in alive if x in blocking(locks)] or alive or dead
        waited = time.monotonic() - t0
        if waited >= wait:
            why = ("; they belong to stopped workers and go when restic calls them stale, 30 minutes after they "
                   "were made (one lock cannot be removed alone on this kind of repository)") if not alive else ""
            raise RepositoryLocked(f"repository {repo.name} is locked by {', '.join(map(describe, holders))}; "
                                   f"gave up after waiting {waited:.0f}s (RESTIC_LOCK_WAIT){why}")
        if on_wait:
            on_wait(f"repository {repo.name}: waiting for the lock of {describe(holders[0])}")
        time.sleep(min(POLL_SECONDS, max(0.1, wait - waited)))
        done["lock_wait_seconds"] = round(time.monotonic() - t0, 1)
    return done
