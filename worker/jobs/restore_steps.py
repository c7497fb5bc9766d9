"""What the restore and undo-restore jobs share, and the reconciler's first step.

Both check the same things before touching anything, both settle what a dead job left first
(under the job lease), and both go down only for the switch: quiesce -> switch -> resume, in a
`finally`, with the downtime measured around exactly that.
"""

from __future__ import annotations

import logging
import os
import time

from worker import instance
from worker.adapters import databases
from worker.backups import media, switch
from worker.errors import JobFailed
from worker.jobs import steps
from worker.jobs.job import Job
from worker.settings import Settings

log = logging.getLogger("taiga_backup.restore")


def check_environment(job: Job, entry: dict, *, for_what: str) -> tuple:
    """The media directory, the names, the database privileges and Kubernetes: everything that
    can be checked without changing anything. Returns (target database, kube, deployment names)."""
    settings = job.settings
    media.check_target(settings.files_dir)
    switch.check_names(settings)
    target = databases.inspect(settings, for_what=for_what)
    names = list(settings.restore_quiesce_deployments)
    kube = steps.kube_for(job) if names else None
    if kube:
        kube.preflight(names)
    entry.update(database_exists=target.exists, database_owner=target.owner, deployments=names)
    return target, kube, names


def settle_first(job: Job, live: switch.LiveHolders) -> None:
    """An interrupted switch, dead jobs' side copies, expired kept states: before a new switch.
    `live()`: the other worker processes alive now (this job holds the lease, so what this process
    left is over)."""
    with job.step("settle") as entry:
        done = switch.settle(job.settings, media.owner(job.settings.restore_chown),
                             lambda: live() - {instance.holder()})
        entry.update(done)
        if done:
            job.report["settled"] = done


def down_for(job: Job, kube, names: list[str], what, *, step: str = "switch") -> dict:
    """quiesce -> what() in its own step -> resume. Records downtime_seconds.

    The app resumes only on one whole state: after what() returned (the new state, verified by
    the switch) or after it failed with no journal left (the old one: nothing switched, or the
    switch rolled back). When the switch left its journal - it could not tell or make its state
    whole within switch.SETTLE_WITHIN, PostgreSQL away - the app stays down and the switch is
    handed to the reconciler, which settles it before it resumes anything. The lease is asked
    right before the quiesce and right before the switch: a job whose lease another job took
    (a Redis restart) stops there."""
    down_since = time.monotonic()
    quiesced = unsettled = False
    try:
        _lease_held(job, "quiescing the app")
        quiesced = True
        steps.scale_down(job, kube, names)
        with job.step(step) as entry:
            _lease_held(job, "the switch")
            try:
                done = what()
            except Exception as exc:
                unsettled = _journal_left(job.settings)
                if unsettled:
                    raise _left_down(job, names, exc) from None
                raise
            entry.update(done)
            return done
    finally:
        if unsettled:
            job.report["deployments"] = {"left_down": names}
        elif quiesced:
            job.report["deployments"] = steps.scale_back(job, kube, names)
        job.report["downtime_seconds"] = round(time.monotonic() - down_since, 3) if names and quiesced else 0.0


def _lease_held(job: Job, before: str) -> None:
    if job.lease is not None:
        job.lease.confirm(before)


def _journal_left(settings: Settings) -> bool:
    try:
        return switch.read_journal(settings) is not None
    except switch.SwitchError:
        return True  # unreadable: whole it is not known to be


def _left_down(job: Job, names: list[str], cause: Exception) -> JobFailed:
    """The switch is unsettled: the app stays down and the switch goes to the reconciler. The
    error says so, and is the job's first."""
    settings = job.settings
    try:
        rid = switch.hand_over(settings)
    except switch.SwitchError:  # an unreadable journal: nobody's to hand over, settle refuses it by hand
        rid = None
    message = (f"the switch of restore {rid or '?'} could not be settled within {switch.SETTLE_WITHIN:.0f}s "
               f"({cause}), so the app stays down (it would start on half the old, half the restored state); the "
               f"journal {os.path.join(settings.files_dir, media.JOURNAL)}, the staging folder and the side database "
               "stay; the reconciler settles the switch once PostgreSQL answers and only then resumes the app "
               f"({', '.join(names) or 'no deployments'})")
    job.report["switch_unsettled"] = message
    log.error("%s", message)
    return JobFailed(message)


def settle_before_resume(settings: Settings, live: switch.LiveHolders) -> dict:
    """The reconciler's first step, before it scales anything back up: an interrupted switch is
    completed or rolled back so the app never starts on a mix. Raises (and the app stays down,
    the reconciler tries again) only when such a switch cannot be settled; the other cleanup is
    best effort. `live()`: the worker processes alive now - a switch or side copies of one of them
    belong to a job still running (its lease may be gone with a Redis restart) and are left alone."""
    try:
        if switch.read_journal(settings) is not None:
            done = switch.settle(settings, media.owner(settings.restore_chown), live)
            log.warning("reconcile: settled an interrupted restore switch: %s", done.get("switch"))
            return done
    except Exception as exc:
        raise JobFailed(f"an interrupted restore switch could not be settled, so the app stays down: {exc}") from None
    try:
        return switch.settle(settings, live=live)
    except Exception as exc:  # a dead job's leftovers can wait for the next run
        log.warning("reconcile: could not remove restore leftovers: %s", exc)
        return {}
