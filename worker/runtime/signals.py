"""Every Celery signal handler of the worker, in one place: what happens when a worker process
starts, sets up logging, is ready, and stops.

- after set-up: the keys of a worker from before instances move to this instance's namespace;
- start: the settings are validated once (a bad one stops the worker, naming the variable, rather
  than failing at 23:10), secrets are registered with the redactor, JSON logging is put in place;
- logging set-up: the redaction filter (and the JSON formatter) on every handler Celery adds;
- after set-up: the Prometheus exporter;
- ready: the reconciler is queued (right away, and once a dead holder's lease must have run out),
  and the heartbeat that tells a dead worker's restic locks from a live one's starts (with it, the
  worker's record for the fleet view, worker.runtime.fleet);
- stop: the heartbeat records a clean stop, so this host's locks may be cleared at once (and the
  fleet view shows the worker stopped).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import signals

from worker import redact
from worker.adapters import metrics
from worker.adapters import redis_store
from worker.adapters.redis_store import connect as redis_connect
from worker.backups import restic_locks
from worker.jobs import hooks, requests
from worker.runtime import fleet, log_setup, security, stamp
from worker.settings import BY_ENV, Settings, SettingsError, read

log = logging.getLogger("taiga_backup.worker")
_heartbeat: dict = {}


def _settings() -> Settings | None:
    try:
        return Settings.from_env()
    except SettingsError:
        return None  # worker_init has already refused to start, naming the variable


@signals.before_task_publish.connect
def _stamp_request(body=None, headers=None, routing_key=None, **_):
    """Every message this process publishes (CLI, beat, a chain's next link, a retry): for the
    instance whose queue it goes to, or this process's own (a link pinned to this worker)."""
    security.stamp(body, headers, _request_ttl(), stamp.instance_of(routing_key) or _own_instance())


def _own_instance() -> str | None:
    try:
        return read("TAIGA_INSTANCE")
    except SettingsError:
        return None  # the worker refuses to start anyway, naming it


def _request_ttl() -> float:
    try:
        return read("SIGNED_REQUEST_TTL")
    except SettingsError:
        return float(BY_ENV["SIGNED_REQUEST_TTL"].default)  # the worker refuses to start anyway, naming it


@signals.celeryd_init.connect
def _json_from_the_start(instance=None, **_):
    log_setup.json_from_the_start(instance)


@signals.worker_init.connect
def _validate_settings(**_):
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        log.critical("taiga-backup: invalid setting: %s", exc)
        raise SystemExit(f"taiga-backup: invalid setting: {exc}")
    redact.register(*settings.secrets())
    redact.install_log_filter()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_and_format(logger=None, **_):
    for handler in (logger.handlers if logger else []):
        handler.addFilter(redact.RedactingFilter())
    log_setup.json_handlers(logger)


@signals.celeryd_after_setup.connect
def _migrate_keys(**_):
    """Before the metrics read the last reports: the keys of a worker from before instances move
    into this instance's namespace (redis_store.migrate), once."""
    settings = _settings()
    if settings is None:
        return
    try:
        moved = redis_store.migrate(redis_store.connect(settings), settings.instance)
    except Exception as exc:
        log.error("could not move the keys of the one-instance layout (tried again at the next start): %s", exc)
        return
    if moved:
        log.warning("moved %d Redis key(s) of the one-instance layout to instance %s (%s, ...)", len(moved),
                    settings.instance, moved[0][1])


@signals.celeryd_after_setup.connect
def _serve_metrics(**_):
    """Once the worker's logging is set up and before it connects to the broker."""
    settings = _settings()
    if settings is not None:
        metrics.serve(settings, lambda: hooks.repository_facts(settings))


def _queue_reconcile(app) -> None:
    try:
        app.send_task(requests.RECONCILE)
    except Exception as exc:
        log.error("could not queue the start-up reconcile: %s", exc)


@signals.worker_ready.connect
def _reconcile_on_start(sender=None, **_):
    """Right away, and again once a dead holder's lease must have run out. The second is sent by
    a timer, not with a countdown: a countdown message sits unacknowledged in the worker until
    due, is handed out again after the visibility timeout, and if Redis restarts meanwhile
    kombu fails to restore it and the worker stops consuming."""
    app = sender.app
    _queue_reconcile(app)
    settings = _settings()
    if settings is None:
        return
    timer = threading.Timer(settings.lock_lease_seconds + 2, _queue_reconcile, (app,))
    timer.daemon = True
    timer.start()


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    settings = _settings()
    if settings is None:
        return
    try:
        app = sender.app if sender is not None else None

        def fleet_record(client):
            fleet.record(client, settings, app)

        _heartbeat["stop"] = restic_locks.start_heartbeat(lambda: redis_connect(settings),
                                                          also=fleet_record if app is not None else None)
        _heartbeat["settings"], _heartbeat["app"] = settings, app
    except Exception as exc:
        log.error("could not start the worker heartbeat: %s", exc)


LIVENESS_SECONDS = 5.0


@signals.worker_ready.connect
def _start_liveness(sender=None, **_):
    """Touches LIVENESS_FILE while this process runs (`taiga-backup alive` reads its age)."""
    try:
        path = read("LIVENESS_FILE")
    except SettingsError:
        return

    def beat():
        while not _liveness_stop.wait(0 if not os.path.exists(path) else LIVENESS_SECONDS):
            try:
                with open(path, "a"):
                    os.utime(path)
            except OSError as exc:
                log.warning("could not touch the liveness file %s: %s", path, exc.strerror)
                _liveness_stop.wait(LIVENESS_SECONDS)

    threading.Thread(target=beat, name="liveness", daemon=True).start()


_liveness_stop = threading.Event()


@signals.worker_shutdown.connect
def _stop_heartbeat(sender=None, **_):
    _liveness_stop.set()
    if "stop" not in _heartbeat:
        return
    _heartbeat["stop"].set()
    try:
        client = redis_connect(_heartbeat["settings"])
        restic_locks.heartbeat(client, socket.gethostname(), stopped=True)
        if _heartbeat.get("app") is not None:
            fleet.record(client, _heartbeat["settings"], _heartbeat["app"], stopped=True)
    except Exception as exc:
        log.warning("could not record the worker's stop: %s", exc)
