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

from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.serialization import prepare_accept_content

from worker.settings import redis_tls, signing


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
