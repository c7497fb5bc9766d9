"""The seed's repository layout: `$RESTIC_REPOSITORY/files` and `$RESTIC_REPOSITORY/pg-database`."""

from __future__ import annotations

from worker.adapters.restic import Repository
from worker.settings import Settings

FILES = "files"
DATABASE = "pg-database"
NAMES = (FILES, DATABASE)
# restic's own knobs per repository, kept where the bench measured them winning (docs/performance.md):
# media is mostly already-compressed uploads, so zstd on it costs CPU (16 % of the media backup's
# time at scale 1.0) for 0.7 % of space; the SQL dump compresses 3:1 and keeps restic's default.
BACKUP_FLAGS: dict[str, tuple[str, ...]] = {FILES: ("--compression", "off"), DATABASE: ()}


def s3_env(settings: Settings) -> dict:
    """S3 credentials, given to restic's own environment only."""
    env = {}
    if settings.aws_access_key_id:
        env["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id.reveal()
    if settings.aws_secret_access_key:
        env["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key.reveal()
    if settings.aws_default_region:
        env["AWS_DEFAULT_REGION"] = settings.aws_default_region
    return env


def repository(settings: Settings, name: str, password_file: str | None = None) -> Repository:
    return Repository(settings.repo_url(name), password_file or settings.restic_password_file,
                      host=settings.restic_host, extra_env=s3_env(settings), cache_dir=settings.cache_dir,
                      name=name)


def both(settings: Settings, password_file: str | None = None) -> dict[str, Repository]:
    return {name: repository(settings, name, password_file) for name in NAMES}
