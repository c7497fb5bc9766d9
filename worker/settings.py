"""Every setting of taiga-backup, declared once, with the old procedure's variable names.

`SETTINGS` is the single table: variable name, the attribute of `Settings` it fills, its default
as it would be written in the environment, the parser that validates it, one line of
documentation, and whether it is a secret. Everything else is derived from it: `Settings.from_env`
(the worker and the CLI), `read` (the few values Celery, beat and logging need before the rest),
the reference in docs/settings.md and the chart's environment (both checked against it by tests).

Every secret may come as NAME_FILE (preferred, the Kubernetes way) or NAME. Secrets are kept in
`Secret` objects whose repr never shows the value, so a settings object can be logged or end up
in a traceback without leaking anything.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from worker.errors import OperatorError

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PG_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_CHOWN = re.compile(r"^\d+:\d+$")
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
OFF = ("off", "never", "disabled")


class SettingsError(OperatorError, ValueError):
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


def read_secret(env, name: str, required: bool = False) -> Secret:
    """NAME_FILE wins over NAME; a named file that cannot be read is an error, not a silent blank."""
    path = (env.get(name + "_FILE") or "").strip()
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


# -- parsers: (variable name, text or None) -> value; None only where the default is None ------
Parser = Callable[[str, "str | None"], object]


def _text(name, raw):
    return raw


def _numeric(kind: type, minimum) -> Parser:
    noun = "an integer" if kind is int else "a number"

    def parse(name, raw):
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected {noun}, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
        return value
    return parse


def _integer(minimum: int = 0) -> Parser:
    return _numeric(int, minimum)


def _number(minimum: float = 0.0) -> Parser:
    return _numeric(float, minimum)


def _boolean(name, raw):
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _choice(*allowed: str) -> Parser:
    def parse(name, raw):
        if raw not in allowed:
            raise SettingsError(f"{name}: expected {' or '.join(allowed)}, got {raw!r}")
        return raw
    return parse


def _pg_name(name, raw):
    if raw is not None and not _PG_IDENT.match(raw):
        raise SettingsError(f"{name}: {raw!r} is not a plain PostgreSQL name")
    return raw


def _host_name(name, raw):
    if not _HOST.match(raw):
        raise SettingsError(f"{name}: {raw!r} is not a valid host name")
    return raw


def _deployments(name, raw):
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for item in names:
        if not _K8S_NAME.match(item):
            raise SettingsError(f"{name}: {item!r} is not a valid Kubernetes name")
    return names


def _own_namespace() -> str:
    """The namespace this pod runs in (its service account's), else the seed's `taiga`."""
    try:
        return _SA_NAMESPACE.read_text().strip()
    except OSError:
        return "taiga"


def _namespace(name, raw):
    raw = _own_namespace() if raw is None else raw
    if not _K8S_NAME.match(raw):
        raise SettingsError(f"{name}: {raw!r} is not a valid namespace name")
    return raw


# the key names of the one-instance layout (taiga-backup:<word>:...): an instance of that name
# would be taken for them by the migration (worker.adapters.redis_store.migrate); and `fleet`,
# the broker-wide keys of all instances (redis_store.FLEET_SLOTS_KEY)
RESERVED_INSTANCES = ("last", "report", "check", "nonce", "lock", "active", "interrupted", "workers", "fleet")


def _instance(name, raw):
    """A DNS label (it names a queue and a Redis key part, and by default is a namespace)."""
    raw = _own_namespace() if raw is None else raw
    if not _K8S_NAME.match(raw):  # a DNS label, as a namespace name is
        raise SettingsError(f"{name}: {raw!r} is not a DNS label (lower-case letters, digits and -, at most 63)")
    if raw in RESERVED_INSTANCES:
        raise SettingsError(f"{name}: {raw!r} is reserved (a key name of the one-instance layout)")
    return raw


def _chown(name, raw):
    if raw.lower() in ("off", "none", "no"):
        return None
    if not _CHOWN.match(raw):
        raise SettingsError(f"{name}: expected UID:GID or off, got {raw!r}")
    return raw


def _redis_url(name, raw):
    if raw is not None and not re.match(r"^(redis|rediss|memory)://", raw.strip()):
        raise SettingsError(f"{name}: only redis:// or rediss:// URLs are supported")
    return raw and raw.strip()


def _secret(name, raw):
    return Secret(raw or "")


def _http_url(name, raw):
    """A notification URL: often carries a token, so it is a secret; http(s) only."""
    url = (raw or "").strip()
    if url and not re.match(r"^https?://[^/\s]+", url):
        raise SettingsError(f"{name}: expected an http:// or https:// URL")
    return Secret(url)


def _readable_file(name, raw):
    if raw is not None and (not os.path.isfile(raw) or not os.access(raw, os.R_OK)):
        raise SettingsError(f"{name}: cannot read {raw}")
    return raw


def _password_file(name, raw):
    if not os.path.isfile(raw):
        raise SettingsError(f"{name}: {raw} does not exist")
    return raw


def cron_schedule(expr: str):
    """Five cron fields as Celery's crontab (beat's schedule, and the check that it parses)."""
    from celery.schedules import crontab

    minute, hour, dom, month, dow = expr.split()
    return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)


def validate_cron(name: str, expr: str) -> str:
    """Five cron fields; checked by celery's own parser so beat never starts with a bad one."""
    if len(expr.split()) != 5:
        raise SettingsError(f"{name}: expected 5 cron fields (minute hour day month weekday), got {expr!r}")
    try:
        cron_schedule(expr)
    except Exception as exc:  # celery raises ValueError / ParseException
        raise SettingsError(f"{name}: invalid cron expression {expr!r}: {exc}") from None
    return expr


def _schedule(name, raw):
    """A cron expression, or off."""
    return None if raw.lower() in OFF else validate_cron(name, raw)


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?$")
DAY_MINUTES = 24 * 60


def _window(name, raw):
    """Whole minutes, written 2h, 90m or 1h30m; 0 (or off): no window. At most 24h: a longer one
    would only wrap around to the same times of day."""
    text = raw.lower()
    if text in ("0", *OFF):
        return 0
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        raise SettingsError(f"{name}: expected a duration like 2h, 90m or 1h30m (or 0), got {raw!r}")
    minutes = int(match.group(1) or 0) * 60 + int(match.group(2) or 0)
    if minutes > DAY_MINUTES:
        raise SettingsError(f"{name}: at most 24h, got {raw!r}")
    return minutes


def instance_offset(instance: str, window: int) -> int:
    """This instance's minutes into a window of `window` minutes: from sha256 of its name, so the
    same on every start and in every process (Python's hash() of a string changes per process)."""
    if window <= 0:
        return 0
    return int.from_bytes(hashlib.sha256(instance.encode()).digest()[:8], "big") % window


def shift_cron(expr: str, minutes: int) -> str:
    """`expr` with every run `minutes` later. The rule (docs/settings.md, BACKUP_WINDOW): the
    minute field must name one minute, the hours may be any set (they shift together, wrapping
    past midnight); a run moved past midnight would change its day, so that is refused unless the
    day-of-month, month and day-of-week fields are all *."""
    if minutes == 0:
        return expr
    _, _, dom, month, dow = expr.split()
    parsed = cron_schedule(expr)
    if len(parsed.minute) != 1:
        raise SettingsError(f"BACKUP_WINDOW needs a BACKUP_SCHEDULE that names one minute (like '10 23 * * *' or "
                            f"'0 */6 * * *'), got {expr!r}")
    (minute,) = parsed.minute
    carry, new_minute = divmod(minute + minutes, 60)
    if max(parsed.hour) + carry >= 24 and (dom, month, dow) != ("*", "*", "*"):
        raise SettingsError(f"BACKUP_WINDOW: {minutes} minutes later, a run of BACKUP_SCHEDULE {expr!r} would pass "
                            f"midnight, into another day than its day fields name: start it earlier by the window, "
                            f"or leave day of month, month and day of week *")
    hours = sorted({(hour + carry) % 24 for hour in parsed.hour})
    return f"{new_minute} {'*' if len(hours) == 24 else ','.join(map(str, hours))} {dom} {month} {dow}"


def validate_timezone(name: str, tz: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"{name}: unknown time zone {tz!r}") from None
    return tz


def _port(name, raw):
    if raw is not None and (not raw.isdigit() or not 0 < int(raw) < 65536):
        raise SettingsError(f"{name}: invalid port {raw!r}")
    return raw and int(raw)


@dataclass(frozen=True)
class Setting:
    """One environment variable. `field` is the Settings attribute it fills (None: read on its
    own with `read`, or combined with others in `from_env`)."""

    env: str
    field: str | None
    default: str | None
    parse: Parser
    doc: str
    secret: bool = False      # may come as NAME_FILE; never printed
    secret_file: bool = False  # the value is a file whose content is a secret (redacted like one)
    required: bool = False
    blank_ok: bool = False    # an empty value means "none" rather than "the default"
    missing: str = ""         # the error when a required one is missing


DEFAULT_QUIESCE = "taiga-gateway-deployment,taiga-front-deployment"
DEFAULT_RESTORE_QUIESCE = (
    "taiga-gateway-deployment,taiga-front-deployment,taiga-back-deployment,"
    "taiga-async-deployment,taiga-events-deployment,taiga-protected-deployment"
)

SETTINGS: tuple[Setting, ...] = (
    # -- broker and results --------------------------------------------------------------------
    Setting("CELERY_BROKER_URL", "broker_url", "redis://localhost:6379/0", _redis_url,
            "Redis URL of the message broker (redis:// or rediss://)", secret=True),
    Setting("CELERY_RESULT_BACKEND", "result_backend", None, _redis_url,
            "Redis URL where results and reports are kept; default: the broker", secret=True),
    Setting("BROKER_VISIBILITY_TIMEOUT", None, "86400", _number(1),
            "seconds before Redis hands an unacknowledged message to another worker"),
    Setting("CELERY_REDIS_CA_FILE", None, None, _readable_file, "CA certificate for rediss:// connections"),
    Setting("CELERY_REDIS_CERT_FILE", None, None, _readable_file, "client certificate for rediss://"),
    Setting("CELERY_REDIS_KEY_FILE", None, None, _readable_file, "client key for rediss://"),
    Setting("CELERY_SECURITY_KEY_FILE", None, None, _readable_file, "private key that signs messages"),
    Setting("CELERY_SECURITY_CERT_FILE", None, None, _readable_file, "certificate of that key"),
    Setting("CELERY_SECURITY_CERT_STORE", None, None, _text,
            "trusted signers' certificates (a file, a directory or a glob); message signing is on when "
            "the three CELERY_SECURITY_* are set"),
    Setting("SIGNED_REQUEST_TTL", None, "900", _number(60),
            "with signing: seconds a signed request stays valid; each is run at most once within it"),
    Setting("NONCE_DIR", None, None, _text,
            "with signing: where the worker records each signed request it ran, so a replay is refused even "
            "after Redis restarted empty; default: $BACKUP_FILES_DIR/.taiga-backup-state/nonces"),
    Setting("TAIGA_INSTANCE", "instance", None, _instance,
            "the Taiga this worker serves, when several share a broker: its queue is taiga-backup.<instance>, its "
            "Redis keys taiga-backup:<instance>:..., and it runs only requests naming it; default: the pod's "
            "namespace, else taiga"),
    # -- repositories --------------------------------------------------------------------------
    Setting("RESTIC_REPOSITORY", "restic_repository", None, _text,
            "base URL of the repositories; `files` and `pg-database` live below it", required=True,
            missing="RESTIC_REPOSITORY must be set (base URL; files and pg-database live below it)"),
    Setting("RESTIC_PASSWORD_FILE", "restic_password_file", None, _password_file,
            "file holding the repositories' password", required=True, secret_file=True,
            missing="RESTIC_PASSWORD_FILE must be set (a file holding the repository password)"),
    Setting("RESTIC_NEW_PASSWORD_FILE", "restic_new_password_file", None, _text,
            "file holding the new password, for change-password", secret_file=True),
    Setting("RESTIC_HOST", "restic_host", "taiga-backup", _host_name,
            "host name recorded in snapshots (stable, so retention and parents work across pods)"),
    Setting("RESTIC_CACHE_DIR", "cache_dir", None, _text, "restic's cache directory"),
    Setting("AWS_ACCESS_KEY_ID", "aws_access_key_id", None, _secret, "S3 access key", secret=True),
    Setting("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", None, _secret, "S3 secret key", secret=True),
    Setting("AWS_DEFAULT_REGION", "aws_default_region", None, _text, "S3 region"),
    # -- database ------------------------------------------------------------------------------
    Setting("POSTGRES_HOST", None, None, _text, "database host, or host:port"),
    Setting("POSTGRES_SERVICE", None, None, _text, "database host (wins over POSTGRES_HOST)"),
    Setting("POSTGRES_PORT", None, None, _port, "database port; default: from POSTGRES_HOST, else 5432"),
    Setting("POSTGRES_DB", "pg_db", "taiga", _pg_name, "the application database"),
    Setting("POSTGRES_USER", "pg_user", "taiga", _pg_name, "the role taiga-backup connects as"),
    Setting("POSTGRES_PASSWORD", "pg_password", None, _secret, "that role's password", secret=True),
    Setting("PG_DUMP_FORMAT", "pg_dump_format", "plain", _choice("plain", "custom"),
            "pg_dump format: plain (the old procedure's) or custom (uncompressed archive)"),
    # -- media and Kubernetes ------------------------------------------------------------------
    Setting("BACKUP_FILES_DIR", "files_dir", "/media", _text, "the media volume's mount point"),
    Setting("KUBE_NAMESPACE", "kube_namespace", None, _namespace,
            "namespace of Taiga's deployments; default: the pod's own, else taiga"),
    Setting("QUIESCE_DEPLOYMENTS", "quiesce_deployments", DEFAULT_QUIESCE, _deployments,
            "deployments scaled to 0 during a backup (empty: none)", blank_ok=True),
    Setting("RESTORE_QUIESCE_DEPLOYMENTS", "restore_quiesce_deployments", DEFAULT_RESTORE_QUIESCE,
            _deployments, "deployments scaled to 0 during a restore (empty: none)", blank_ok=True),
    Setting("RESTORE_CHOWN", "restore_chown", "999:999", _chown, "owner given to restored media (or off)"),
    Setting("RESTORE_KEEP_PREVIOUS", "restore_keep_previous", "86400", _number(0),
            "seconds a restore keeps the replaced database and media for undo-restore"),
    # -- schedule and retention ----------------------------------------------------------------
    Setting("BACKUP_SCHEDULE", None, "10 23 * * *", _schedule, "cron of the nightly backup (or off)"),
    Setting("PRUNE_SCHEDULE", None, "40 23 * * *", _schedule, "cron of retention (or off)"),
    Setting("CHECK_SCHEDULE", None, "10 2 * * 0", _schedule, "cron of the repository check (or off)"),
    Setting("VERIFY_SCHEDULE", None, "10 3 * * 0", _schedule, "cron of the restore drill (or off)"),
    Setting("BACKUP_WINDOW", None, "0", _window,
            "the nightly backup starts this long (2h, 90m) after BACKUP_SCHEDULE at most: each instance at its own "
            "minute in it, from a hash of TAIGA_INSTANCE (0: at BACKUP_SCHEDULE)"),
    Setting("BACKUP_TIMEZONE", "timezone", "UTC", validate_timezone, "time zone of the cron schedules"),
    Setting("RESTIC_DAYS_TO_KEEP", "days_to_keep", "30", _integer(1), "keep every backup of this many days"),
    Setting("RESTIC_KEEP_DAILY", "keep_daily", "0", _integer(), "also keep this many daily backups"),
    Setting("RESTIC_KEEP_WEEKLY", "keep_weekly", "0", _integer(), "also keep this many weekly backups"),
    Setting("RESTIC_KEEP_MONTHLY", "keep_monthly", "0", _integer(), "also keep this many monthly backups"),
    Setting("RESTIC_KEEP_YEARLY", "keep_yearly", "0", _integer(), "also keep this many yearly backups"),
    # -- how jobs run --------------------------------------------------------------------------
    Setting("BACKUP_PARALLEL", "parallel_backup", "true", _boolean,
            "dump the database and back up the media at the same time"),
    Setting("PREFLIGHT_TIMEOUT", "preflight_timeout", "120", _number(1), "seconds for the checks before a backup"),
    Setting("QUIESCE_TIMEOUT", "quiesce_timeout", "300", _number(1), "seconds for the pods to stop"),
    Setting("QUIESCE_LEAD_MAX", "quiesce_lead_max", "10", _number(0),
            "the quiesce starts before the media pre-pass's estimated end by as long as the last backup's "
            "quiesce took, but at most this many seconds (0: after the pre-pass)"),
    Setting("MEDIA_CATCHUP_PASSES", "media_catchup_passes", "1", _integer(0),
            "media written while the pre-pass ran are read by up to this many more restic passes with the app "
            "up, so the quiesced pass is not needed (0: they are read with the app down)"),
    Setting("RESUME_TIMEOUT", "resume_timeout", "300", _number(1), "seconds for the pods to be available again"),
    Setting("DUMP_TIMEOUT", "dump_timeout", "14400", _number(1), "seconds for the database dump"),
    Setting("FILES_TIMEOUT", "files_timeout", "21600", _number(1), "seconds for the media backup"),
    Setting("RESTORE_TIMEOUT", "restore_timeout", "21600", _number(1),
            "seconds for each long restore, check or drill step"),
    Setting("DISCARD_TIMEOUT", "discard_timeout", "600", _number(1), "seconds to forget a failed backup's snapshots"),
    Setting("PRUNE_TIMEOUT", "prune_timeout", "14400", _number(1),
            "seconds for forget --prune of each repository (large ones prune for hours)"),
    Setting("FLEET_MAX_CONCURRENT_BACKUPS", "fleet_max_backups", "0", _integer(),
            "at most this many backups at once across every instance on the broker (set it alike on all); "
            "a backup waits for a slot before it touches the app (0: no cap)"),
    Setting("JOB_LOCK_LEASE", "lock_lease_seconds", "30", _integer(5),
            "seconds of the one-job-per-repository lease (renewed while the job runs)"),
    Setting("RESTIC_LOCK_WAIT", "restic_lock_wait", "120", _number(), "seconds to wait for someone else's restic lock"),
    Setting("CHECK_SUBSET_PARTS", "check_subset_parts", "10", _integer(1),
            "the check reads 1/N of the data each run, a different part each time"),
    # -- restore drill -------------------------------------------------------------------------
    Setting("VERIFY_DIR", "verify_dir", None, _text, "where the drill restores the media; default: the temp dir"),
    Setting("VERIFY_POSTGRES_HOST", None, None, _text, "the drill's server (host or host:port); default: the app's"),
    Setting("VERIFY_POSTGRES_USER", "verify_pg_user", None, _pg_name, "role on the drill's server"),
    Setting("VERIFY_POSTGRES_PASSWORD", "verify_pg_password", None, _secret, "its password", secret=True),
    Setting("VERIFY_POSTGRES_DB", "verify_pg_db", None, _pg_name, "database to connect to there"),
    # -- telling people ------------------------------------------------------------------------
    Setting("METRICS_PORT", "metrics_port", "9808", _integer(), "Prometheus metrics port (0: off)"),
    Setting("NOTIFY_WEBHOOK_URL", "notify_webhook_url", None, _http_url,
            "JSON webhook after every job (Slack, Mattermost, ...)", secret=True),
    Setting("HEALTHCHECK_PING_URL", "healthcheck_ping_url", None, _http_url,
            "healthchecks.io-style ping URL for the backup", secret=True),
    Setting("LOG_FORMAT", "log_format", "text", _choice("text", "json"), "text, or one JSON object per line"),
    Setting("LOG_LEVEL", None, "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "the worker's log level"),
    Setting("BEAT_SCHEDULE_FILE", None, "/tmp/taiga-backup-beat", _text, "where embedded beat keeps its state"),
    Setting("LIVENESS_FILE", None, "/tmp/taiga-backup-alive", _text,
            "touched by the running worker every few seconds; `taiga-backup alive` (the liveness probe) reads it"),
)
BY_ENV = {s.env: s for s in SETTINGS}
TLS_FILES = ("CELERY_REDIS_CA_FILE", "CELERY_REDIS_CERT_FILE", "CELERY_REDIS_KEY_FILE")
SIGNING = ("CELERY_SECURITY_KEY_FILE", "CELERY_SECURITY_CERT_FILE", "CELERY_SECURITY_CERT_STORE")


def read(name: str, env=None):
    """One setting, parsed and validated (the default when unset)."""
    s = BY_ENV[name]
    env = os.environ if env is None else env
    if s.secret:
        raw = read_secret(env, name).reveal() or None
    else:
        raw = env.get(name)
        if raw is not None:
            raw = raw.strip()
            if not raw and not s.blank_ok:
                raw = None
    if raw is None:
        if s.required:
            raise SettingsError(s.missing or f"{name} must be set")
        raw = s.default
    return s.parse(name, raw)


def backup_cron(env=None) -> str | None:
    """What beat runs for the nightly backup: BACKUP_SCHEDULE moved by this instance's offset in
    BACKUP_WINDOW (instance_offset), so instances sharing a broker and a schedule do not all
    start at once. Whether a schedule can take the window is decided by the window's last
    minute, never by the instance: one configuration is valid for all instances or for none."""
    expr, window = read("BACKUP_SCHEDULE", env), read("BACKUP_WINDOW", env)
    if expr is None or not window:
        return expr
    shift_cron(expr, window - 1)
    return shift_cron(expr, instance_offset(read("TAIGA_INSTANCE", env), window))


def broker_urls(env=None) -> tuple[str, str]:
    """Broker and result backend: all a client (the CLI, Flower, a chat-ops bot) needs."""
    broker = read("CELERY_BROKER_URL", env)
    return broker, read("CELERY_RESULT_BACKEND", env) or broker


def redis_tls(env, urls) -> dict:
    """TLS options for every rediss:// connection (redis-py and Celery use the same names);
    {} without TLS. Certificate files with a plain redis:// URL are a mistake, not a fallback."""
    ca, cert, key = (read(name, env) for name in TLS_FILES)
    if not any(url.startswith("rediss://") for url in urls):
        if ca or cert or key:
            raise SettingsError("CELERY_REDIS_*_FILE are set but the broker URL is not rediss://")
        return {}
    if bool(cert) != bool(key):
        raise SettingsError("CELERY_REDIS_CERT_FILE and CELERY_REDIS_KEY_FILE must be set together")
    options = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if ca:
        options["ssl_ca_certs"] = ca
    if cert:
        options.update(ssl_certfile=cert, ssl_keyfile=key)
    return options


def signing(env) -> dict | None:
    """Key, certificate and trusted store (a file, a directory or a glob) for message signing;
    None when signing is off. Half a configuration is refused rather than silently unsigned."""
    key, cert, store = (read(name, env) for name in SIGNING)
    if not (key or cert or store):
        return None
    if not (key and cert and store):
        raise SettingsError("message signing needs all of " + ", ".join(SIGNING))
    pattern = os.path.join(store, "*") if os.path.isdir(store) else store
    if not glob.glob(pattern):
        raise SettingsError(f"CELERY_SECURITY_CERT_STORE: no certificate at {store}")
    return {"key": key, "cert": cert, "store": store}


def _pg_host_port(env) -> dict:
    """POSTGRES_SERVICE/POSTGRES_PORT win; POSTGRES_HOST may be 'host' or 'host:port' (the seed sets both)."""
    host, port = read("POSTGRES_SERVICE", env), read("POSTGRES_PORT", env)
    combined = read("POSTGRES_HOST", env)
    if combined:
        c_host, _, c_port = combined.rpartition(":") if ":" in combined else (combined, "", "")
        host = host or c_host
        port = port or _port("POSTGRES_PORT", c_port or None)
    return {"pg_host": host or "localhost", "pg_port": port or 5432}


def _verify_postgres(env) -> dict:
    """The restore drill's server: VERIFY_POSTGRES_HOST (host or host:port); unset means the app's."""
    combined = read("VERIFY_POSTGRES_HOST", env)
    if not combined:
        return {"verify_pg_host": None, "verify_pg_port": 5432}
    host, _, port = combined.rpartition(":") if ":" in combined else (combined, "", "5432")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"VERIFY_POSTGRES_HOST: expected host or host:port, got {combined!r}")
    return {"verify_pg_host": host, "verify_pg_port": int(port)}


@dataclass(frozen=True)
class Settings:
    """All settings of a worker or CLI process. Build with Settings.from_env(); the fields are
    those named in SETTINGS plus the few combined from several variables."""

    broker_url: str
    result_backend: str
    instance: str
    restic_repository: str
    restic_password_file: str
    restic_new_password_file: str | None
    restic_host: str
    cache_dir: str | None
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
    restore_keep_previous: float
    timezone: str
    days_to_keep: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    parallel_backup: bool
    quiesce_lead_max: float
    media_catchup_passes: int
    preflight_timeout: float
    quiesce_timeout: float
    resume_timeout: float
    dump_timeout: float
    files_timeout: float
    restore_timeout: float
    discard_timeout: float
    prune_timeout: float
    fleet_max_backups: int
    lock_lease_seconds: int
    restic_lock_wait: float
    check_subset_parts: int
    verify_dir: str | None
    verify_pg_host: str | None
    verify_pg_port: int
    verify_pg_user: str | None
    verify_pg_password: Secret
    verify_pg_db: str | None
    metrics_port: int
    notify_webhook_url: Secret
    healthcheck_ping_url: Secret
    log_format: str
    redis_ssl: dict = field(repr=False)

    def repo_url(self, name: str) -> str:
        """The seed's layout: two repositories below the base URL."""
        return self.restic_repository.rstrip("/") + "/" + name

    @property
    def pg_address(self) -> str:
        return f"{self.pg_host}:{self.pg_port}"

    @property
    def all_quiesced_deployments(self) -> list[str]:
        """Every deployment a job may leave scaled down (a backup's set and a restore's wider one):
        what the operator's resume and the reconciler bring back up."""
        return sorted(set(self.quiesce_deployments) | set(self.restore_quiesce_deployments))

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        values = {s.field: read(s.env, env) for s in SETTINGS if s.field}
        values["result_backend"] = values["result_backend"] or values["broker_url"]
        values.update(_pg_host_port(env), **_verify_postgres(env))
        for s in SETTINGS:  # validated here too, so a bad one stops the worker at start
            if not s.field:
                read(s.env, env)
        signing(env)  # refuses half a signing configuration
        backup_cron(env)  # refuses a window the backup's schedule cannot take
        values["redis_ssl"] = redis_tls(env, (values["broker_url"], values["result_backend"]))
        return cls(**values)

    def secrets(self) -> list[str]:
        """Every secret value, for the log/exception redactor: derived from the table (`secret`,
        `secret_file`), so a secret setting added there is redacted without more code. A secret
        kept as plain text (a broker URL) gives its password."""
        values = []
        for s in SETTINGS:
            value = getattr(self, s.field) if s.field else None
            if not value:
                continue
            if s.secret_file:
                try:
                    value = Path(value).read_text().strip("\r\n")
                except OSError:
                    continue
                values.append(value)
            elif isinstance(value, Secret):
                values.append(value.reveal())
            elif s.secret:
                match = re.match(r"^\w+://(?:[^:@/]*):([^@/]+)@", value)
                if match:
                    values.append(match.group(1))
        return [v for v in values if v]


__all__ = ["Settings", "SettingsError", "Secret", "SETTINGS", "Setting", "read", "read_secret", "broker_urls",
           "redis_tls", "signing", "cron_schedule", "validate_cron", "validate_timezone", "backup_cron",
           "instance_offset", "shift_cron"]
