"""The Celery application: broker/backend, reliability settings, events for Flower, beat schedule.

`celery -A worker.celery_app worker` works as usual; `taiga-backup worker` runs the same thing.
Only broker settings are read at import (Flower and chat-ops clients need nothing else); the full
settings are validated when a worker starts, which then refuses to run with a message naming the
bad variable.
"""

from __future__ import annotations

import logging
import os

from celery import Celery, signals

import beat_schedule
from worker import logging_setup, metrics  # noqa: F401 (they connect worker signals)
from worker import security
from worker.settings import SettingsError, read_secret, visibility_timeout

log = logging.getLogger(__name__)

TASK_MODULES = ["tasks.backup", "tasks.steps", "tasks.reconcile"]
OPTIONAL_TASK_MODULES = ["tasks.restore", "tasks.upkeep"]


def _task_modules() -> list[str]:
    import importlib.util

    return TASK_MODULES + [m for m in OPTIONAL_TASK_MODULES if importlib.util.find_spec(m)]


def broker_urls(env=None) -> tuple[str, str]:
    env = os.environ if env is None else env
    broker = read_secret(env, "CELERY_BROKER_URL").reveal() or "redis://localhost:6379/0"
    backend = read_secret(env, "CELERY_RESULT_BACKEND").reveal() or broker
    return broker, backend


def make_app(env=None) -> Celery:
    env = os.environ if env is None else env
    broker, backend = broker_urls(env)
    app = Celery("taiga_backup", broker=broker, backend=backend, include=_task_modules())
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_track_started=True,          # PENDING -> STARTED -> PROGRESS -> SUCCESS/FAILURE
        result_extended=True,             # name/args/kwargs in the result (never secrets)
        result_expires=30 * 24 * 3600,
        # Early ack + no prefetch: a long backup is never redelivered and run twice; a crash
        # loses the message instead, and crash recovery (reconciler) does not depend on it.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        broker_transport_options={"visibility_timeout": visibility_timeout(env)},
        result_backend_transport_options={"retry_policy": {"timeout": 10.0}},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Flower
        worker_send_task_events=True,
        task_send_sent_event=True,
        # threads: a running backup must not block pings, control commands or the reconciler
        worker_pool="threads",
        worker_concurrency=4,
        worker_hijack_root_logger=False,
        timezone=beat_schedule.timezone(env),
        enable_utc=True,
        beat_schedule=beat_schedule.build_schedule(env),
    )
    security.configure(app, env, broker, backend)  # rediss:// options; signed messages when configured
    return app


app = make_app()


@signals.worker_init.connect
def _validate_settings(**_):
    """Fail at start, naming the variable, rather than at 23:10 in the middle of the night."""
    from worker.settings import Settings

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        log.critical("taiga-backup: invalid setting: %s", exc)
        raise SystemExit(f"taiga-backup: invalid setting: {exc}")
    from worker import redact

    redact.register(*settings.secrets())
    redact.install_log_filter()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_logs(logger=None, **_):
    from worker.redact import RedactingFilter

    for handler in (logger.handlers if logger else []):
        handler.addFilter(RedactingFilter())
