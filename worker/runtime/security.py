"""Who may reach the broker, and whose messages the worker runs: Redis TLS and message signing.

Anyone who can write to the broker can queue a restore that drops the database. A password and
TLS (`rediss://`, certificates from files) keep strangers off Redis; message signing goes further:
with CELERY_SECURITY_* set, the worker accepts only task and control messages signed by a key whose
certificate is in its store, so broker access alone is not enough to queue a job. Unsigned or
wrongly signed messages are dropped by Celery before any task code sees them.

Only broker-level settings, read from the environment like the broker URL: Flower, the CLI and a
chat-ops client configure themselves with the same variables.
"""

from __future__ import annotations

import logging
import os
import time

from celery import Task
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.serialization import prepare_accept_content

from worker.adapters import redis_store
from worker.backups import media
from worker.errors import RequestInvalid
from worker.jobs.job import record_refusal
from worker.runtime.nonces import NONCE, NonceFiles, NonceStoreError
from worker.runtime.stamp import STAMP, stamp  # noqa: F401 (stamp: the signal handler's, and clients')
from worker.settings import broker_urls, read, redis_tls, signing

log = logging.getLogger("taiga_backup.security")


class GuardedConsumer(Consumer):
    """Celery's consumer, with two checks in front of its own message parsing. kombu hands the
    body of an `application/text` or `application/data` message through raw even when that type
    is not accepted, and Celery's parsing of a malformed body raises out of the consumer: the
    worker stops consuming, and the message, put back, stops the next worker too. So: a content
    type the app does not accept is refused, and a message Celery cannot make a task of is
    dropped, both logged like any invalid message."""

    def create_task_handler(self, *args, **kwargs):
        handle = super().create_task_handler(*args, **kwargs)
        accepted = prepare_accept_content(self.app.conf.accept_content)

        def on_task_received(message):
            if message.content_type not in accepted:
                reason = ContentDisallowed(f"refused: content type {message.content_type!r} is not accepted")
                return self.on_invalid_task(None, message, reason)
            try:
                return handle(message)
            except self.connection_errors:
                raise  # Celery reconnects
            except Exception as exc:
                return self.on_invalid_task(None, message, exc)

        return on_task_received


def configure(app, env, broker: str, backend: str) -> None:
    """Applies TLS to the broker and result backend connections and, when configured, switches
    the app to signed messages (Celery's `auth` serializer; results and events stay JSON). The
    worker always runs the guarded consumer."""
    app.conf.worker_consumer = f"{__name__}:GuardedConsumer"
    tls = redis_tls(env, (broker, backend))
    if broker.startswith("rediss://"):
        app.conf.broker_use_ssl = tls
    if backend.startswith("rediss://"):
        app.conf.redis_backend_use_ssl = tls
    sign = signing(env)
    if sign is None:
        return
    app.conf.update(task_serializer="auth", accept_content=["auth"], security_key=sign["key"],
                    security_certificate=sign["cert"], security_cert_store=sign["store"],
                    security_digest="sha256")
    app.setup_security(allowed_serializers=["json"])


# -- signed requests bound to their task, id and lifetime ----------------------------------------
# Celery's `auth` serializer signs the body (args, kwargs, embed) only; the task name, id and
# expiry travel in unsigned headers. So every message our processes publish carries, inside the
# signed kwargs, a stamp naming the task it is for, its id, a one-time nonce and an expiry; with
# signing on, a task runs only a stamp made for it, within its lifetime, once. A captured signed
# message relabelled as another task, or sent again, is refused before any task code runs.
# "Once" is kept in files on a volume of the worker (worker.runtime.nonces), not only in Redis:
# a Redis restart, or anyone who can write to Redis, must not make a recorded request new again.
CLOCK_SKEW = 60.0  # seconds a signer's clock may run ahead of the worker's


class RequestRefused(RequestInvalid):
    """A signed message that is not a valid request for this task (relabelled, replayed, expired)."""


def _refuse(task, why: str):
    log.error("refused %s[%s]: %s", task.name, task.request.id, why)
    raise RequestRefused(f"refused: {why}")


def check_instance(task, value, own: str, signed: bool) -> None:
    """Raises RequestRefused unless the request is for this worker's instance. A queue is no
    proof: anyone on the broker can push onto any instance's queue, so the instance travels in
    the stamp (inside the signature when signing is on). A request naming no instance - a
    chat-ops client of contract 1, or a bot that speaks plain Celery - is taken as this
    instance's only while signing is off (docs/chatops.md); a signed one must name it."""
    named = value.get("instance") if isinstance(value, dict) else None
    if named is None and not signed:
        return
    if named is None:
        _refuse(task, f"the signed request names no instance (this worker serves {own!r})")
    if named != own:
        _refuse(task, f"the request is for instance {str(named)[:63]!r}, this worker serves {own!r}")


def check_stamp(task, value, files: NonceFiles, nonces, ttl: float, instance: str) -> None:
    """Raises RequestRefused unless `value` is a stamp made for this very task and message, still
    valid, living no longer than this worker's `ttl` (a signer with a longer SIGNED_REQUEST_TTL
    does not get hours), and seen for the first time: by `files`, the authority that survives
    Redis, and by `nonces`, a Redis client (refused if either saw it: a second worker with a
    nonce directory of its own still shares Redis). A record that cannot be made refuses too."""
    if not isinstance(value, dict):
        _refuse(task, "the request carries no stamp (sent by an old or foreign client?)")
    if value.get("task") != task.name:
        _refuse(task, f"the signed request is for {str(value.get('task'))[:80]!r}, not for {task.name}")
    if value.get("id") != task.request.id:
        _refuse(task, "the signed request was made for another message id")
    expires, nonce = value.get("expires"), value.get("nonce")
    if not isinstance(expires, (int, float)) or expires < time.time():
        _refuse(task, "the signed request has expired")
    if expires > time.time() + ttl + CLOCK_SKEW:
        _refuse(task, f"the signed request is valid for longer than this worker allows (SIGNED_REQUEST_TTL={ttl:g})")
    if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
        _refuse(task, "the signed request has no valid nonce")
    try:
        first = files.first_seen(nonce, expires, f"{task.name}[{task.request.id}]")
    except NonceStoreError as exc:
        _refuse(task, f"{exc}; not run, as it could not be told from a replay")
    keep = max(1, int(expires - time.time()) + 60)
    if not first or not nonces.set(redis_store.nonce_key(instance, nonce), task.request.id or "-", nx=True, ex=keep):
        _refuse(task, "this signed request was already run once (a replay)")


def nonce_dir(env=None) -> str:
    """NONCE_DIR, by default a dot-folder of the media volume: the one volume the chart gives the
    worker that outlives a pod, and one that backups, restores and the switch leave alone."""
    return read("NONCE_DIR", env) or os.path.join(read("BACKUP_FILES_DIR", env), media.STATE, "nonces")


class CheckedTask(Task):
    """The base of every task: with message signing on, the stamp is checked before the task's
    own code runs (and never reaches it)."""

    _nonces = None
    _files = None

    def __call__(self, *args, **kwargs):
        value = kwargs.pop(STAMP, None)
        if not self.request.called_directly:
            signed = self.app.conf.task_serializer == "auth"
            own = read("TAIGA_INSTANCE")
            try:
                check_instance(self, value, own, signed)
            except RequestRefused as exc:
                record_refusal(self.name, self.request.id, str(exc))
                raise
            if signed:
                ttl = read("SIGNED_REQUEST_TTL")
                check_stamp(self, value, self._nonce_files(ttl), self._nonce_store(), ttl, own)
        return super().__call__(*args, **kwargs)

    @staticmethod
    def _nonce_files(ttl: float) -> NonceFiles:
        if CheckedTask._files is None:
            CheckedTask._files = NonceFiles(nonce_dir(), ttl + CLOCK_SKEW)
        return CheckedTask._files

    def _nonce_store(self):
        if CheckedTask._nonces is None:
            import redis

            _, backend = broker_urls()
            CheckedTask._nonces = redis.Redis.from_url(backend, socket_timeout=10, socket_connect_timeout=5,
                                                       retry_on_timeout=True, **redis_tls(os.environ, (backend,)))
        return CheckedTask._nonces
