"""One job at a time per repository: a Redis lease, renewed while the job runs.

A lease (not a lock that lives until released) because the holder may be SIGKILLed: its lease
then runs out within JOB_LOCK_LEASE seconds and the reconciler may resume the app. Beside the
lease, an `active` record without expiry names the task that holds it, so a new worker can tell
that a job was interrupted and mark it failed instead of leaving it STARTED forever. Whoever
takes the lease next moves a dead holder's `active` record to the `interrupted` list, so it is
settled (by the reconciler) even when a new job, not the reconciler, gets there first.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid

import redis

from worker.adapters import redis_store
from worker.errors import OperatorError

log = logging.getLogger(__name__)

class JobBusy(OperatorError):
    """Another taiga-backup job holds the repository."""


class LeaseLost(OperatorError):
    """The job's lease ran out or was taken over: another job may be working now."""


class JobLock:
    """The lease of one repository (redis_store.lease_keys); its value is JSON naming the holder."""

    def __init__(self, client: redis.Redis, repository: str, lease_seconds: int = 60):
        self.redis = client
        self.key, self.active_key, self.interrupted_key = redis_store.lease_keys(repository)
        self._active: str | None = None
        self.lease = int(lease_seconds)
        self._value: str | None = None
        self._task_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._grace_until: float | None = None
        self._mutex = threading.Lock()  # a transfer() and the renewal never see two different values
        self.lost = threading.Event()

    def holder(self) -> dict | None:
        raw = self.redis.get(self.key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"raw": raw.decode(errors="replace")}

    def active(self) -> dict | None:
        raw = self.redis.get(self.active_key)
        return json.loads(raw) if raw else None

    def acquire(self, kind: str, task_id: str, patience: float = 30.0) -> None:
        """Takes the lease or raises JobBusy naming the job that holds it. The reconciler holds it
        for a moment only, so a job that finds it there waits (up to `patience` s) instead of
        being refused; any other holder is a real job and the answer is an immediate no."""
        record = {"kind": kind, "task_id": task_id, "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}
        value = json.dumps(record, sort_keys=True)
        deadline = time.monotonic() + patience
        while not self.redis.set(self.key, value, nx=True, ex=self.lease):
            other = self.holder()
            if other is None and time.monotonic() < deadline:
                continue  # released between our SET and GET (a reconcile's moment): free now, try again
            other = other or {}
            if other.get("kind") == "reconcile" and kind != "reconcile" and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise JobBusy(
                f"another taiga-backup job is running on this repository: {other.get('kind', '?')} "
                f"task {other.get('task_id', '?')} on {other.get('host', '?')} since {other.get('since', '?')}; "
                f"refusing to run {kind} concurrently")
        self._value = value
        self._task_id = task_id
        self._active = json.dumps({"kind": kind, "task_id": task_id, "host": record["host"],
                                   "since": record["since"], "started": time.time()}, sort_keys=True)
        self._hand_over_active()
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="job-lease", daemon=True)
        self._thread.start()

    @property
    def value(self) -> str | None:
        """What a later link of the same job needs to adopt() the lease (no secret: it names the
        job and a random token, as Redis shows it)."""
        return self._value

    def adopt(self, value: str) -> None:
        """Takes over renewing the lease a previous link of this job held (the lease belongs to
        the job, not to a task). Raises LeaseLost when it is no longer ours: the link must stop
        before it touches anything. A lease that is simply gone (Redis restarted without
        persistence) is taken back, as the renewal does."""
        self._value = value
        record = json.loads(value)
        self._task_id = record["task_id"]
        try:
            current = self.active()
            if current and current.get("task_id") == self._task_id:
                self._active = json.dumps(current, sort_keys=True)
            else:
                self._active = json.dumps({k: record.get(k) for k in ("kind", "task_id", "host", "since")}
                                          | {"started": time.time()}, sort_keys=True)
            ours = self._renew()
        except redis.RedisError as exc:  # Redis restarting: the renewal keeps trying, the lease is long enough
            log.warning("could not check the job lease: %s", exc)
            ours = True
        if not ours:
            other = self.holder() or {}
            self._value = None
            raise LeaseLost(f"the job lease was lost (now held by {other.get('kind', 'nobody')} task "
                            f"{other.get('task_id', '?')}): stopped before touching the app or the repositories")
        self.lost.clear()
        self._grace_until = None
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._renew_loop, name="job-lease", daemon=True)
            self._thread.start()

    def transfer(self, kind: str, task_id: str, **fields) -> str:
        """Hands the lease, still held, to another job of this process (a restore's safety backup,
        which runs as a task of its own): the lease and the `active` record name the new job from
        now on, so a crash from here on is settled as that job's (its facts in `fields`, e.g. its
        backup id). Raises LeaseLost when the lease is no longer ours. Returns the new value."""
        with self._mutex:
            if self._value is None or not self._renew():
                raise LeaseLost(f"the job lease was lost before it could be handed to {kind} task {task_id}")
            record = {**json.loads(self._value), "kind": kind, "task_id": task_id,
                      "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}
            value = json.dumps(record, sort_keys=True)
            active = json.dumps({k: record[k] for k in ("kind", "task_id", "host", "since")}
                                | {"started": time.time(), **fields}, sort_keys=True)

            def act(pipe, current) -> bool:
                if current != self._value.encode():
                    return False
                pipe.set(self.key, value, ex=self.lease)
                pipe.set(self.active_key, active)
                return True

            if not self._watched(self.key, act):
                raise LeaseLost(f"the job lease was taken over before it could be handed to {kind} task {task_id}")
            self._value, self._task_id, self._active = value, task_id, active
            return value

    def pause(self, grace: float = 0.0) -> None:
        """Stops renewing without giving the lease up: the next link of the job adopts it.
        `grace`: go on renewing for that long first, so a link delayed on its way (the broker
        restarting, forgetting the lease) still finds it ours; a chain that broke stops being
        renewed after it, and the reconciler can settle the job."""
        if grace > 0:
            self._grace_until = time.monotonic() + grace
            return
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    def check(self) -> None:
        """Raises LeaseLost if the renewal found the lease taken over since adopt()/acquire()."""
        if self.lost.is_set():
            raise LeaseLost("the job lease was taken over by another job while this one ran: "
                            "stopped before touching anything more")

    def confirm(self, before: str) -> None:
        """check(), and Redis asked now (the renewal looks only every third of the lease): raises
        LeaseLost when the lease is another job's - a Redis restart let a backup take it - or
        cannot be confirmed, so the job stops before `before` (quiescing, switching)."""
        self.check()
        if self._value is None:
            return
        try:
            ours = self._renew()
        except redis.RedisError as exc:
            raise LeaseLost(f"the job lease could not be confirmed ({exc}): stopped before {before}") from None
        if not ours:
            self.lost.set()
            other = self.holder() or {}
            raise LeaseLost(f"the job lease is now held by {other.get('kind', '?')} task {other.get('task_id', '?')}: "
                            f"stopped before {before}")

    def _hand_over_active(self) -> None:
        """Writes our `active` record. One already there belongs to a holder whose lease ran out
        (it died): it goes to the `interrupted` list instead of being overwritten."""
        def act(pipe, previous) -> bool:
            if previous:
                pipe.rpush(self.interrupted_key, previous)
            pipe.set(self.active_key, self._active)
            return True

        self._watched(self.active_key, act)

    def note(self, **fields) -> None:
        """Adds facts to our `active` record (e.g. the backup id a backup tags its snapshots with),
        so whoever settles this job after a crash touches only what this job made."""
        if self._active is None:
            return
        self._active = json.dumps({**json.loads(self._active), **fields}, sort_keys=True)

        def act(pipe, current) -> bool:
            if current is not None and json.loads(current).get("task_id") != self._task_id:
                return False  # another job's record now: ours was settled as interrupted
            pipe.set(self.active_key, self._active)
            return True

        self._watched(self.active_key, act)

    def vouch(self, task_id: str, **fields) -> bool:
        """Adds facts to another job's `active` record while it is still that job's: what the
        reconciler saw of a dead job (its app still held down by it) that is gone by the time the
        job is settled. Whether it was still that job's record."""
        def act(pipe, current) -> bool:
            record = json.loads(current) if current else {}
            if record.get("task_id") != task_id:
                return False
            pipe.set(self.active_key, json.dumps({**record, **fields}, sort_keys=True))
            return True

        return self._watched(self.active_key, act)

    def interrupted(self) -> list[tuple[bytes, dict]]:
        """(raw, record) of every job whose holder died, oldest first, until settled(raw)."""
        out = []
        for raw in self.redis.lrange(self.interrupted_key, 0, -1):
            try:
                out.append((raw, json.loads(raw)))
            except ValueError:
                out.append((raw, {}))
        return out

    def settled(self, raw: bytes) -> None:
        self.redis.lrem(self.interrupted_key, 1, raw)

    def _watched(self, key: str, act) -> bool:
        """act(pipeline, key's current value) queues its commands in one MULTI under WATCH key,
        run again whenever someone changed the key in between (an atomic compare-and-act without
        Lua); returns what act returned: whether it acted."""
        def body(pipe) -> bool:
            current = pipe.get(key)
            pipe.multi()
            return act(pipe, current)

        return bool(self.redis.transaction(body, key, value_from_callable=True))

    def _if_mine(self, action) -> bool:
        """Runs action(pipeline) only while the lease still holds our value."""
        def act(pipe, current) -> bool:
            if current != self._value.encode():
                return False
            action(pipe)
            return True

        return self._watched(self.key, act)

    def _renew(self) -> bool:
        if self._if_mine(lambda p: p.expire(self.key, self.lease)):
            return True
        # Redis restarted without persistence and forgot the lease: take it back (and the record
        # naming our task, so a crash after this is still settled)
        if not self.redis.set(self.key, self._value, nx=True, ex=self.lease):
            return False
        self.redis.set(self.active_key, self._active, nx=True)
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            if self._grace_until is not None and time.monotonic() > self._grace_until:
                log.warning("job lease %s: no link of the job took it over in time; no longer renewed", self.key)
                return
            try:
                with self._mutex:
                    ours = self._renew()
                if not ours:
                    log.error("job lease %s was taken over by another holder", self.key)
                    self.lost.set()
            except redis.RedisError as exc:  # Redis restarting: keep trying, the lease is long enough
                log.warning("could not renew job lease: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._value is None:
            return
        for attempt in range(20):
            try:
                self._if_mine(lambda p: p.delete(self.key))
                if (self.active() or {}).get("task_id") == self._task_id:
                    self.redis.delete(self.active_key)
                break
            except redis.RedisError as exc:  # Redis restarting: the lease would expire anyway
                log.warning("could not release job lease (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.5)
        self._value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
