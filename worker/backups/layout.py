"""The seed's repository layout: `$RESTIC_REPOSITORY/files` and `$RESTIC_REPOSITORY/pg-database`."""

from __future__ import annotations

from worker.adapters import process
from worker.adapters.restic import Repository
from worker.settings import Settings

FILES = "files"
DATABASE = "pg-database"
NAMES = (FILES, DATABASE)
# restic's own knobs per repository, kept where the bench measured them winning (docs/performance.md):
# media is mostly already-compressed uploads, so zstd on it costs CPU (16 % of the media backup's
# time at scale 1.0) for 0.7 % of space; the SQL dump compresses 3:1 and keeps restic's default.
BACKUP_FLAGS: dict[str, tuple[str, ...]] = {FILES: ("--compression", "off"), DATABASE: ()}


# What restic may read from the worker's environment besides its repository and password: the one
# declared list (docs/settings.md#restics-environment lists the same; a test compares). Proxies,
# a private CA and the settings of every backend restic has - S3 (with IRSA's web identity),
# B2, Azure, GCS, Swift, the REST server, SFTP's ssh agent. Anything else never reaches restic.
RESTIC_ENV = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "RESTIC_CACERT", "RESTIC_TLS_CLIENT_CERT",
    "AWS_ENDPOINT", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_REGION", "AWS_STS_REGIONAL_ENDPOINTS",
    "B2_ACCOUNT_ID",
    "AZURE_ACCOUNT_NAME", "AZURE_ENDPOINT_SUFFIX", "AZURE_FORCE_CLI_CREDENTIAL",
    "GOOGLE_PROJECT_ID", "GOOGLE_APPLICATION_CREDENTIALS",
    "OS_AUTH_URL", "OS_REGION_NAME", "OS_USERNAME", "OS_USER_ID", "OS_TENANT_ID", "OS_TENANT_NAME",
    "OS_USER_DOMAIN_NAME", "OS_USER_DOMAIN_ID", "OS_PROJECT_NAME", "OS_PROJECT_DOMAIN_NAME",
    "OS_PROJECT_DOMAIN_ID", "OS_TRUST_ID", "OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_NAME",
    "OS_STORAGE_URL", "ST_AUTH", "ST_USER", "SWIFT_DEFAULT_CONTAINER_POLICY",
    "RESTIC_REST_USERNAME",
    "SSH_AUTH_SOCK",
)
# the secrets among them: only ever from NAME_FILE, into restic's environment as NAME
RESTIC_SECRETS = ("AWS_SESSION_TOKEN", "B2_ACCOUNT_KEY", "AZURE_ACCOUNT_KEY", "AZURE_ACCOUNT_SAS",
                  "GOOGLE_ACCESS_TOKEN", "OS_PASSWORD", "OS_APPLICATION_CREDENTIAL_SECRET", "OS_AUTH_TOKEN",
                  "ST_KEY", "RESTIC_REST_PASSWORD")


def restic_env(settings: Settings) -> dict:
    """restic's own environment beyond repository and password: the declared pass-through
    (RESTIC_ENV, RESTIC_SECRETS) and the S3 credentials of the settings."""
    env = process.passthrough(RESTIC_ENV, RESTIC_SECRETS)
    if settings.aws_access_key_id:
        env["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id.reveal()
    if settings.aws_secret_access_key:
        env["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key.reveal()
    if settings.aws_default_region:
        env["AWS_DEFAULT_REGION"] = settings.aws_default_region
    return env


def repository(settings: Settings, name: str, password_file: str | None = None) -> Repository:
    return Repository(settings.repo_url(name), password_file or settings.restic_password_file,
                      host=settings.restic_host, extra_env=restic_env(settings), cache_dir=settings.cache_dir,
                      name=name)


def both(settings: Settings, password_file: str | None = None) -> dict[str, Repository]:
    return {name: repository(settings, name, password_file) for name in NAMES}
