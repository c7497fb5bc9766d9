"""Steps that run on in a thread of this worker process after the chain link that started them
has returned.

Why: some of a backup's work cannot travel in the chain's JSON context - the media pre-pass's
last seconds while the app is quiescing, the `pg_dump --snapshot` streaming an exported snapshot
(whose transaction must stay open), the media tidy-up after the quiesced pass. They are held
here, keyed by (job's task id, step), until a later link of the same job joins them. The links
are pinned to this worker process's queue for that reason; a link that finds nothing held here
ran elsewhere (the worker restarted), and the job fails rather than guess what the step did.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from worker.adapters import postgres
from worker.errors import OperatorError
from worker.jobs.job import Job


class StepLost(OperatorError):
    """The worker holding a step's in-process state is not the one running this link."""


# what a held step is, for the error when the worker holding it is gone
WHAT = {"media_prepass": "the media pre-pass", "dump_db": "the database dump",
        "tidy_files": "the media snapshot's full id lookup (or retagging)"}


@dataclass
class Held:
    """One held step: it records its step entry and errors on a job of its own (`job`), which
    join() merges into the joining link's job."""

    job: Job
    snapshot: postgres.ExportedSnapshot | None = None  # closed when the step ends
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: Exception | None = None  # what it raised (a step records its own on the job too)
    thread: threading.Thread | None = None
    ended: float = 0.0  # time.time() when it ended


_HELD: dict[tuple[str, str], Held] = {}
_lock = threading.Lock()


def hold(job: Job, held_steps: list[str], step: str, run, snapshot=None) -> Held:
    """Starts run(child job) in a thread of this worker, as `step` of the job, and returns at
    once; `held_steps` (the chain context's list) learns its name, so a later link knows to join it."""
    child = Job(job.kind, job.settings, job.task)
    child.task_id = job.task_id
    child.report.update({k: job.report[k] for k in ("backup_id", "trigger", "consistency_point") if k in job.report})
    held = Held(child, snapshot)

    def body():
        try:
            held.result = run(child)
        except Exception as exc:
            held.error = exc
        finally:
            if snapshot is not None:
                snapshot.close()
            held.ended = time.time()
            held.done.set()

    held.thread = threading.Thread(target=body, name=f"{step}-{job.task_id[:8]}", daemon=True)
    with _lock:
        _HELD[(job.task_id, step)] = held
    held_steps.append(step)
    held.thread.start()
    return held


def held_here(task_id: str) -> list[str]:
    """The steps of a job held in this process, whatever a context says: the chain's errback
    carries the context from before the first link, which names none of them."""
    with _lock:
        return [step for (task, step) in _HELD if task == task_id]


def join_held(job: Job, held_steps: list[str], step: str) -> Held | None:
    """Waits for a held step and takes over its step entries and errors (its result is None when
    it failed). None when the step was never held; a step held by a worker process that is gone
    fails the job."""
    if step not in held_steps:
        return None
    held_steps.remove(step)
    with _lock:
        held = _HELD.pop((job.task_id, step), None)
    if held is None:
        job.fail(step, StepLost(f"{WHAT[step]} ran in a worker process that is gone (it was restarted, "
                                f"or this link ran elsewhere): its snapshot is not known"))
        return None
    held.done.wait()
    job.report["steps"].update(held.job.report["steps"])
    for error in held.job.errors:
        if error not in job.errors:
            job.errors.append(error)
    return held
