"""What one link of the backup chain hands to the next: a declared shape, sent as plain JSON.

Why declared: seven links read and write it, and Celery keeps it in Redis between them (shown
in Flower, stored with `result_extended`), so every field is named here, with its meaning, and
nothing secret may be one of them - settings are read again from the environment by every link.
A message whose context does not have this shape is not a link of a running backup and is
refused before anything is touched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from worker.jobs.job import Job
from worker.settings import Settings

KIND = "backup"


@dataclass
class BackupContext:
    # the job, carried across links (Job.carried)
    task_id: str  # the backup task's id: the report's, the lease's, the caller's
    report: dict  # the report so far
    errors: list[str]  # the job's errors so far; the first one is the job's
    progress: dict  # every step's progress so far (Flower)
    started: float  # time.time() when the job began
    lease: str = ""  # the job lease's value (JobLock.value), adopted by every link
    kind: str = KIND
    lost: bool = False  # the lease is another job's now: every later step stops short
    # prepare
    names: list[str] = field(default_factory=list)  # the deployments to quiesce
    db_size: int = 0  # the database's size, for the dump's progress
    # steps running on in this worker (worker.jobs.held), joined by a later link
    held: list[str] = field(default_factory=list)
    # media_prepass
    tree: dict | None = None  # the media tree's state just before the pre-pass (tree_state)
    prepass: str | None = None  # the pre-pass snapshot's (short) id: the quiesced pass's parent
    prepass_summary: dict | None = None  # its restic summary
    prepass_ends_in: float | None = None  # its estimated seconds left when the quiesce began
    superseded: list[str] = field(default_factory=list)  # earlier passes' ids, replaced by a catch-up pass
    # quiesce .. resume
    quiesced: bool = False  # from here on, resume runs whatever happens
    down_since: float | None = None  # time.time() when the quiesce began
    results: dict = field(default_factory=dict)  # repository name -> the restic summary of its snapshot
    deployments: dict = field(default_factory=dict)  # what resume scaled back, name -> replicas
    downtime_seconds: float = 0.0

    @classmethod
    def begin(cls, job: Job) -> "BackupContext":
        """The first link's context, for a job that has its backup id."""
        return cls(task_id=job.task_id, report=job.report, errors=job.errors, progress=job.progress_so_far,
                   started=job.started_epoch(), lease=job.lease.value if job.lease is not None else "")

    def job(self, settings: Settings, task=None) -> Job:
        """The job as a link sees it (its report and errors are this context's, shared)."""
        return Job.carried(self.kind, settings, task, task_id=self.task_id, report=self.report, errors=self.errors,
                           progress=self.progress, started=self.started)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc) -> "BackupContext":
        """The context a link received; ValueError unless it has exactly this shape."""
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise ValueError("not a backup chain context")
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in doc if k not in names)
        if unknown:
            raise ValueError(f"unknown field(s) in a backup chain context: {', '.join(unknown[:5])}")
        ctx = cls(**doc)
        kinds = {"task_id": str, "report": dict, "errors": list, "progress": dict, "started": (int, float),
                 "lease": str, "names": list, "held": list, "results": dict,
                 "superseded": list}
        wrong = [name for name, kind in kinds.items() if not isinstance(getattr(ctx, name), kind)]
        if wrong:
            raise ValueError(f"backup chain context field(s) of the wrong type: {', '.join(wrong)}")
        return ctx

    @classmethod
    def accepts(cls, args: tuple, kwargs: dict) -> bool:
        """A message carrying a backup chain's context (and nothing else)."""
        if len(args) != 1 or kwargs:
            return False
        try:
            return bool(cls.from_json(args[0]).lease)
        except (TypeError, ValueError):
            return False
