"""Settings from the environment, validated once, with the old procedure's variable names.

Every secret may come as NAME_FILE (preferred, the Kubernetes way) or NAME. Secrets are kept
in `Secret` objects whose repr never shows the value, so a settings object can be logged or end
up in a traceback without leaking anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_QUIESCE = "taiga-gateway-deployment,taiga-front-deployment"
DEFAULT_RESTORE_QUIESCE = (
    "taiga-gateway-deployment,taiga-front-deployment,taiga-back-deployment,"
    "taiga-async-deployment,taiga-events-deployment,taiga-protected-deployment"
)
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PG_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_CHOWN = re.compile(r"^\d+:\d+$")
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class SettingsError(ValueError):
    """A missing or invalid setting; the message names the variable."""


class Secret:
    """A secret value that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


def _get(env, name, default=None):
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def read_secret(env, name: str, required: bool = False) -> Secret:
    """NAME_FILE wins over NAME; a named file that cannot be read is an error, not a silent blank."""
    path = _get(env, name + "_FILE")
    if path:
        try:
            value = Path(path).read_text().strip("\r\n")
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
        if required and not value:
            raise SettingsError(f"{name}_FILE: {path} is empty")
        return Secret(value)
    value = env.get(name, "")
    if required and not value:
        raise SettingsError(f"{name} (or {name}_FILE) must be set")
    return Secret(value)


def _url_secret(env, name: str) -> Secret:
    """A notification URL: often carries a token, so it is a secret; http(s) only."""
    url = read_secret(env, name)
    if url and not re.match(r"^https?://[^/\s]+", url.reveal().strip()):
        raise SettingsError(f"{name}: expected an http:// or https:// URL")
    return Secret(url.reveal().strip())


def visibility_timeout(env) -> float:
    """Seconds before Redis hands an unacknowledged message to another worker (read by the
    Celery app at import, validated here with the rest)."""
    return _float(env, "BROKER_VISIBILITY_TIMEOUT", 24 * 3600.0, minimum=1)


def _broker_tls(env, broker: str, backend: str) -> dict:
    """TLS options for our own Redis connections; also refuses half a signing configuration."""
    from . import security

    security.signing(env)
    return security.redis_tls(env, (broker, backend))


def _int(env, name, default, minimum=0):
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _float(env, name, default, minimum=0.0):
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _bool(env, name, default):
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _names(env, name, default):
    raw = env.get(name)
    if raw is None:
        raw = default
    names = [part.strip() for part in raw.split(",") if part.strip()]
    for item in names:
        if not _K8S_NAME.match(item):
            raise SettingsError(f"{name}: {item!r} is not a valid Kubernetes name")
    return tuple(names)


def validate_cron(name: str, expr: str) -> str:
    """Five cron fields; checked by celery's own parser so beat never starts with a bad one."""
    parts = expr.split()
    if len(parts) != 5:
        raise SettingsError(f"{name}: expected 5 cron fields (minute hour day month weekday), got {expr!r}")
    from celery.schedules import crontab

    try:
        crontab(*parts[:2], day_of_month=parts[2], month_of_year=parts[3], day_of_week=parts[4])
    except Exception as exc:  # celery raises ValueError / ParseException
        raise SettingsError(f"{name}: invalid cron expression {expr!r}: {exc}") from None
    return expr


def validate_timezone(name: str, tz: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"{name}: unknown time zone {tz!r}") from None
    return tz


def _pg_host_port(env):
    """POSTGRES_SERVICE/POSTGRES_PORT win; POSTGRES_HOST may be 'host' or 'host:port' (the seed sets both)."""
    host = _get(env, "POSTGRES_SERVICE")
    port = _get(env, "POSTGRES_PORT")
    combined = _get(env, "POSTGRES_HOST")
    if combined:
        c_host, _, c_port = combined.rpartition(":") if ":" in combined else (combined, "", "")
        host = host or c_host
        port = port or c_port or None
    host = host or "localhost"
    port = port or "5432"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"POSTGRES_PORT: invalid port {port!r}")
    return host, int(port)


def _verify_postgres(env) -> dict:
    """The restore drill's server: VERIFY_POSTGRES_HOST (host or host:port); unset means the app's
    own server and credentials."""
    combined = _get(env, "VERIFY_POSTGRES_HOST")
    if not combined:
        return {}
    host, _, port = combined.rpartition(":") if ":" in combined else (combined, "", "5432")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"VERIFY_POSTGRES_HOST: expected host or host:port, got {combined!r}")
    out = {"verify_pg_host": host, "verify_pg_port": int(port),
           "verify_pg_password": read_secret(env, "VERIFY_POSTGRES_PASSWORD")}
    for name, key in (("VERIFY_POSTGRES_USER", "verify_pg_user"), ("VERIFY_POSTGRES_DB", "verify_pg_db")):
        value = _get(env, name)
        if value is not None and not _PG_IDENT.match(value):
            raise SettingsError(f"{name}: {value!r} is not a plain PostgreSQL name")
        out[key] = value
    return out


def _namespace(env):
    ns = _get(env, "KUBE_NAMESPACE")
    if ns is None:
        try:
            ns = _SA_NAMESPACE.read_text().strip()
        except OSError:
            ns = "taiga"
    if not _K8S_NAME.match(ns):
        raise SettingsError(f"KUBE_NAMESPACE: {ns!r} is not a valid namespace name")
    return ns


@dataclass(frozen=True)
class Settings:
    """All settings of a worker or CLI process. Build with Settings.from_env()."""

    broker_url: str
    result_backend: str
    restic_repository: str
    restic_password_file: str
    restic_new_password_file: str | None
    restic_host: str
    aws_access_key_id: Secret
    aws_secret_access_key: Secret
    aws_default_region: str | None
    pg_host: str
    pg_port: int
    pg_db: str
    pg_user: str
    pg_password: Secret
    pg_dump_format: str
    files_dir: str
    kube_namespace: str
    quiesce_deployments: tuple
    restore_quiesce_deployments: tuple
    restore_chown: str | None
    timezone: str
    days_to_keep: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    parallel_backup: bool
    quiesce_timeout: float
    resume_timeout: float
    dump_timeout: float
    files_timeout: float
    restore_timeout: float
    lock_lease_seconds: int
    restic_lock_wait: float
    metrics_port: int
    notify_webhook_url: Secret
    healthcheck_ping_url: Secret
    log_format: str
    cache_dir: str | None
    extra: dict = field(default_factory=dict, repr=False)
    preflight_timeout: float = 120.0
    discard_timeout: float = 600.0
    broker_visibility_timeout: float = 24 * 3600.0
    redis_ssl: dict = field(default_factory=dict, repr=False)
    check_subset_parts: int = 10
    verify_dir: str | None = None
    verify_pg_host: str | None = None
    verify_pg_port: int = 5432
    verify_pg_user: str | None = None
    verify_pg_password: Secret = field(default_factory=lambda: Secret(""))
    verify_pg_db: str | None = None

    @property
    def kube_enabled(self) -> bool:
        return bool(self.quiesce_deployments or self.restore_quiesce_deployments)

    def repo_url(self, name: str) -> str:
        """The seed's layout: two repositories below the base URL."""
        return self.restic_repository.rstrip("/") + "/" + name

    @property
    def pg_address(self) -> str:
        return f"{self.pg_host}:{self.pg_port}"

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        broker = read_secret(env, "CELERY_BROKER_URL").reveal() or "redis://localhost:6379/0"
        backend = read_secret(env, "CELERY_RESULT_BACKEND").reveal() or broker
        for name, url in (("CELERY_BROKER_URL", broker), ("CELERY_RESULT_BACKEND", backend)):
            if not re.match(r"^(redis|rediss|memory)://", url):
                raise SettingsError(f"{name}: only redis:// or rediss:// URLs are supported")

        repo = _get(env, "RESTIC_REPOSITORY")
        if not repo:
            raise SettingsError("RESTIC_REPOSITORY must be set (base URL; files and pg-database live below it)")
        pw_file = _get(env, "RESTIC_PASSWORD_FILE")
        if not pw_file:
            raise SettingsError("RESTIC_PASSWORD_FILE must be set (a file holding the repository password)")
        if not os.path.isfile(pw_file):
            raise SettingsError(f"RESTIC_PASSWORD_FILE: {pw_file} does not exist")

        restic_host = _get(env, "RESTIC_HOST", "taiga-backup")
        if not _HOST.match(restic_host):
            raise SettingsError(f"RESTIC_HOST: {restic_host!r} is not a valid host name")

        pg_host, pg_port = _pg_host_port(env)
        for name, default in (("POSTGRES_DB", "taiga"), ("POSTGRES_USER", "taiga")):
            if not _PG_IDENT.match(_get(env, name, default)):
                raise SettingsError(f"{name}: {_get(env, name)!r} is not a plain PostgreSQL name")
        fmt = _get(env, "PG_DUMP_FORMAT", "plain")
        if fmt not in ("plain", "custom"):
            raise SettingsError(f"PG_DUMP_FORMAT: expected plain or custom, got {fmt!r}")
        log_format = _get(env, "LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT: expected text or json, got {log_format!r}")
        chown = _get(env, "RESTORE_CHOWN", "999:999")
        if chown.lower() in ("off", "none", "no"):
            chown = None
        elif not _CHOWN.match(chown):
            raise SettingsError(f"RESTORE_CHOWN: expected UID:GID or off, got {chown!r}")

        return cls(
            broker_url=broker,
            result_backend=backend,
            restic_repository=repo,
            restic_password_file=pw_file,
            restic_new_password_file=_get(env, "RESTIC_NEW_PASSWORD_FILE"),
            restic_host=restic_host,
            aws_access_key_id=read_secret(env, "AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=read_secret(env, "AWS_SECRET_ACCESS_KEY"),
            aws_default_region=_get(env, "AWS_DEFAULT_REGION"),
            pg_host=pg_host,
            pg_port=pg_port,
            pg_db=_get(env, "POSTGRES_DB", "taiga"),
            pg_user=_get(env, "POSTGRES_USER", "taiga"),
            pg_password=read_secret(env, "POSTGRES_PASSWORD"),
            pg_dump_format=fmt,
            files_dir=_get(env, "BACKUP_FILES_DIR", "/media"),
            kube_namespace=_namespace(env),
            quiesce_deployments=_names(env, "QUIESCE_DEPLOYMENTS", DEFAULT_QUIESCE),
            restore_quiesce_deployments=_names(env, "RESTORE_QUIESCE_DEPLOYMENTS", DEFAULT_RESTORE_QUIESCE),
            restore_chown=chown,
            timezone=validate_timezone("BACKUP_TIMEZONE", _get(env, "BACKUP_TIMEZONE", "UTC")),
            days_to_keep=_int(env, "RESTIC_DAYS_TO_KEEP", 30, minimum=1),
            keep_daily=_int(env, "RESTIC_KEEP_DAILY", 0),
            keep_weekly=_int(env, "RESTIC_KEEP_WEEKLY", 0),
            keep_monthly=_int(env, "RESTIC_KEEP_MONTHLY", 0),
            keep_yearly=_int(env, "RESTIC_KEEP_YEARLY", 0),
            parallel_backup=_bool(env, "BACKUP_PARALLEL", True),
            quiesce_timeout=_float(env, "QUIESCE_TIMEOUT", 300.0, minimum=1),
            resume_timeout=_float(env, "RESUME_TIMEOUT", 300.0, minimum=1),
            dump_timeout=_float(env, "DUMP_TIMEOUT", 4 * 3600.0, minimum=1),
            files_timeout=_float(env, "FILES_TIMEOUT", 6 * 3600.0, minimum=1),
            restore_timeout=_float(env, "RESTORE_TIMEOUT", 6 * 3600.0, minimum=1),
            lock_lease_seconds=_int(env, "JOB_LOCK_LEASE", 30, minimum=5),
            restic_lock_wait=_float(env, "RESTIC_LOCK_WAIT", 120.0),
            metrics_port=_int(env, "METRICS_PORT", 9808),
            notify_webhook_url=_url_secret(env, "NOTIFY_WEBHOOK_URL"),
            healthcheck_ping_url=_url_secret(env, "HEALTHCHECK_PING_URL"),
            log_format=log_format,
            cache_dir=_get(env, "RESTIC_CACHE_DIR"),
            preflight_timeout=_float(env, "PREFLIGHT_TIMEOUT", 120.0, minimum=1),
            discard_timeout=_float(env, "DISCARD_TIMEOUT", 600.0, minimum=1),
            broker_visibility_timeout=visibility_timeout(env),
            redis_ssl=_broker_tls(env, broker, backend),
            check_subset_parts=_int(env, "CHECK_SUBSET_PARTS", 10, minimum=1),
            verify_dir=_get(env, "VERIFY_DIR"),
            **_verify_postgres(env),
        )

    def secrets(self) -> list[str]:
        """Every secret value, for the log/exception redactor."""
        values = [f.reveal() for f in (self.aws_access_key_id, self.aws_secret_access_key, self.pg_password,
                                       self.notify_webhook_url, self.healthcheck_ping_url,
                                       self.verify_pg_password) if f]
        for path in (self.restic_password_file, self.restic_new_password_file):
            if path:
                try:
                    value = Path(path).read_text().strip("\r\n")
                except OSError:
                    continue
                if value:
                    values.append(value)
        for url in (self.broker_url, self.result_backend):
            match = re.match(r"^\w+://(?:[^:@/]*):([^@/]+)@", url)
            if match:
                values.append(match.group(1))
        return values


__all__ = ["Settings", "SettingsError", "Secret", "read_secret", "validate_cron", "validate_timezone"]
