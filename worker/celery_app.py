"""The Celery application: broker/backend, reliability settings, events for Flower, beat schedule.

`celery -A worker.celery_app worker` works as usual; `taiga-backup worker` runs the same thing.
Only broker settings are read at import (Flower and chat-ops clients need nothing else); the full
settings are validated when a worker starts (worker.runtime.signals), which then refuses to run
with a message naming the bad variable.
"""

from __future__ import annotations

import os

from celery import Celery
from celery import signals as celery_signals

import beat_schedule
from worker import instance as process_identity
from worker.jobs.job import REPORT_TTL
from worker.runtime import control, security, signals  # noqa: F401 (connect handlers, register commands)
from worker.runtime.stamp import queue
from worker.settings import broker_urls, read

# One module per public task; the list is fixed (the worker registers exactly these).
TASK_MODULES = ["tasks.backup", "tasks.backup_steps", "tasks.restore", "tasks.resume", "tasks.prune", "tasks.check", "tasks.verify",
                "tasks.change_password", "tasks.reconcile", "tasks.undo_restore", "tasks.safety_backup"]


def make_app(env=None) -> Celery:
    env = os.environ if env is None else env
    broker, backend = broker_urls(env)
    app = Celery("taiga_backup", broker=broker, backend=backend, include=TASK_MODULES,
                 task_cls="worker.runtime.security:CheckedTask")
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_track_started=True,          # PENDING -> STARTED -> PROGRESS -> SUCCESS/FAILURE
        result_extended=True,             # name/args/kwargs in the result (never secrets)
        result_expires=REPORT_TTL,        # as long as our own reports
        # Early ack + no prefetch: a long backup is never redelivered and run twice; a crash
        # loses the message instead, and crash recovery (reconciler) does not depend on it.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        # a link is sent by the one before it: a broker away for a few seconds must not break
        # the chain (the app would stay down until the reconciler)
        task_publish_retry_policy={"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 2},
        broker_transport_options={"visibility_timeout": read("BROKER_VISIBILITY_TIMEOUT", env)},
        result_backend_transport_options={"retry_policy": {"timeout": 10.0}},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Flower
        worker_send_task_events=True,
        task_send_sent_event=True,
        # threads: a running backup must not block pings, control commands or the reconciler
        worker_pool="threads",
        worker_concurrency=4,             # >= 2: a link runs while the dump streams in the background
        worker_hijack_root_logger=False,
        # the instance's queue (TAIGA_INSTANCE): what this worker reads, where the CLI, beat and
        # an errback send; several Taigas share a broker, each reading only its own
        task_default_queue=queue(read("TAIGA_INSTANCE", env)),
        timezone=beat_schedule.timezone(env),
        enable_utc=True,
        beat_schedule=beat_schedule.build_schedule(env),
    )
    security.configure(app, env, broker, backend)  # rediss:// options; signed messages when configured
    return app


# The queue only this worker process reads (set when it starts): a backup chain's links go there,
# to the process that holds the database snapshot's transaction and the running dump. Like
# Celery's worker_direct, but per process, not per node name: two workers started on one host
# share a node name (tests, `celery worker` run twice), and a restarted container has the same
# host name and, under tini, the same pid - never the same instance id (worker.instance): a new
# worker must not run the links a dead one left in its queue.
PINNED: dict[str, str] = {}


@celery_signals.celeryd_after_setup.connect
def _read_own_queue(sender=None, instance=None, **_):
    name = f"{sender}.{process_identity.ID[:16]}.pinned"
    instance.app.amqp.queues.select_add(name)
    PINNED["queue"] = name


def pinned_queue() -> str | None:
    """This worker process's own queue; None outside a worker (an eager call, a client)."""
    return PINNED.get("queue")


app = make_app()
