"""At most FLEET_MAX_CONCURRENT_BACKUPS backups at once across every instance on the broker: a
backup waits for a fleet slot (worker.adapters.fleet_slots) before it touches anything.

Why before the first step: waiting must cost the app nothing, so the slot is taken before the
preflight, long before the quiesce; the app stays up however long the wait. The backup holds its
repository's lease while it waits (another job on the repository would only make it wait
longer). The wait is bounded by a scheduled job's lifetime (SCHEDULED_LIFETIME): a backup still
waiting when the next night's would be sent fails, naming the slots' holders, rather than
running into it.

The slot is renewed by a thread of the process that runs the backup, for as long as the backup
goes on there (the chain's `keep`: worker.jobs.backup_chain), and released when the job ends -
by the last link, or the chain's errback, which may run on another worker and releases it by
its holder's name. A worker that dies stops renewing: its slot frees itself within the lease
(JOB_LOCK_LEASE, the job lease's).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import redis

from worker.adapters.fleet_slots import Slots
from worker.adapters.redis_store import connect as redis_connect
from worker.errors import OperatorError
from worker.jobs.job import SCHEDULED_LIFETIME, Job
from worker.pause_points import pause_point

log = logging.getLogger("taiga_backup.fleet")
STEP = "fleet_slot"
POLL_SECONDS = 1.0      # between tries while every slot is taken
REMIND_SECONDS = 60.0   # the log says it still waits this often (the progress says so all along)


def holder_name(job: Job) -> str:
    """Who holds a slot, as the slots' key shows it: the instance and the backup's task id."""
    return f"{job.settings.instance}:{job.task_id}"


def _slots(job: Job) -> Slots:
    return Slots(redis_connect(job.settings), job.settings.fleet_max_backups, job.settings.lock_lease_seconds)


class FleetSlot:
    """One backup's slot: renewed by a thread until released, or until `keep()` says the backup
    no longer runs in this process."""

    def __init__(self, slots: Slots, holder: str):
        self.slots = slots
        self.holder = holder
        self.keep: Callable[[], bool] = lambda: True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="fleet-slot", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.slots.lease / 3):
            if not self.keep():
                log.warning("fleet backup slot %s: the backup no longer runs here; left to expire", self.holder)
                return
            try:
                if not self.slots.renew(self.holder):
                    log.warning("fleet backup slot %s is gone (released elsewhere, or Redis restarted empty); "
                                "the backup goes on without it", self.holder)
                    return
            except redis.RedisError as exc:  # Redis restarting: keep trying, the lease is long enough
                log.warning("could not renew the fleet backup slot: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for attempt in range(10):
            try:
                self.slots.release(self.holder)
                return
            except redis.RedisError as exc:  # the slot expires anyway
                log.warning("could not release the fleet backup slot (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.5)


def named_slot(job: Job) -> FleetSlot | None:
    """The job's slot by its holder's name, for whoever ends the job in another process (the
    chain's errback): releasing it frees it at once, and the renewal where it was taken stops."""
    if job.settings.fleet_max_backups <= 0:
        return None
    return FleetSlot(_slots(job), holder_name(job))


def take_slot(job: Job, patience: float = SCHEDULED_LIFETIME) -> FleetSlot | None:
    """Waits for a fleet slot and returns it, renewing; None without a cap. Every change in how
    many are busy is in the progress (Flower, `status`) and the log; the report's step
    `fleet_slot` says how long the backup waited. Raises OperatorError after `patience` s."""
    cap = job.settings.fleet_max_backups
    if cap <= 0:
        return None
    slots, holder = _slots(job), holder_name(job)
    fields = {"task_id": job.task_id, "job": job.kind, "step": STEP}
    deadline = time.monotonic() + patience
    with job.step(STEP) as entry:
        t0, shown, reminded = time.monotonic(), None, 0.0
        while True:
            try:
                taken, busy = slots.try_acquire(holder)
            except redis.RedisError as exc:  # Redis restarting: the job lease rides it out too
                log.warning("could not ask for a fleet backup slot: %s", exc)
                taken, busy = False, shown if shown is not None else cap
            if taken:
                break
            message = f"waiting for a fleet backup slot ({busy} of {cap} busy)"
            now, changed = time.monotonic(), busy != shown
            if changed or now - reminded >= REMIND_SECONDS:
                log.info("backup: %s; held by %s", message, ", ".join(sorted(slots.holders())) or "?", extra=fields)
                shown, reminded = busy, now
                entry["waited"] = message
            job.progress(STEP, None, message, force=changed)
            if now > deadline:
                raise OperatorError(f"no fleet backup slot free within {patience / 3600:.1f} h "
                                    f"(FLEET_MAX_CONCURRENT_BACKUPS={cap}; held by "
                                    f"{', '.join(sorted(slots.holders())) or 'nobody now'})")
            time.sleep(POLL_SECONDS)
        entry.update(cap=cap, waited_seconds=round(time.monotonic() - t0, 3))
    slot = FleetSlot(slots, holder)
    slot.start_renewing()
    pause_point(STEP)  # test-only (worker.pause_points): a worker killed while it holds a slot
    return slot
