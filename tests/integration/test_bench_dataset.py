"""The dataset generator and the old shell procedure: a backup/restore round trip is exact.

Why: the benchmark and the compatibility tests trust two things -- that testkit.dataset
builds a valid, reproducible Taiga-like dataset, and that testkit.old_procedure really
backs up and restores it.  Uses a tiny dataset (scale 0.001) so the file stays fast.
"""

import os
import uuid

import pytest

import psycopg

from testkit import dataset, old_procedure  # noqa: E402


@pytest.fixture(scope="module")
def pg_server(pg):
    """Connection parameters (no dbname) of the session's throwaway PostgreSQL cluster."""
    return {"host": "127.0.0.1", "port": pg.port, "user": pg.superuser, "password": pg.superuser_password}


def _conninfo(db: dict) -> str:
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in db.items() if v is not None})


@pytest.fixture
def make_db(pg_server):
    """Factory for scratch databases; returns the old procedure's `db` dict. Dropped afterwards."""
    created = []
    admin = _conninfo({**pg_server, "dbname": "postgres"})

    def make():
        name = f"bench_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return {**pg_server, "dbname": name}

    yield make
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def old_repo(tmp_path_factory):
    """(repository base, env) initialised once by old_init: restic's key derivation costs ~2 s."""
    tmp = tmp_path_factory.mktemp("old-repo")
    pw = tmp / "restic-password"
    pw.write_text("correct horse battery staple\n")
    env = {"RESTIC_PASSWORD_FILE": str(pw), "RESTIC_CACHE_DIR": str(tmp / "restic-cache")}
    repo = str(tmp / "repo")
    old_procedure.old_init(repo, env)
    assert os.path.isfile(os.path.join(repo, "files", "config"))
    assert os.path.isfile(os.path.join(repo, "pg-database", "config"))
    return repo, env


def test_populate_is_deterministic_and_tiny(make_db, tmp_path):
    digests, checksums = [], []
    for i in range(2):
        db = make_db()
        media = tmp_path / f"media{i}"
        dataset.create_schema(_conninfo(db))
        stats = dataset.populate(_conninfo(db), str(media), scale=0.001, seed=7)
        assert stats["seconds"] < 2
        assert stats["media_bytes"] < 2_000_000 and stats["db_rows"]["history_historyentry"] > 0
        checksums.append(dataset.table_checksums(_conninfo(db)))
        digests.append(dataset.tree_digest(str(media)))
    assert checksums[0] == checksums[1]
    assert digests[0] == digests[1]
    names = {os.path.basename(p) for p in digests[0]}
    assert set(dataset.ODD_FILENAMES) <= names
    n_attachment_files = sum(p.startswith("attachments/") for p in digests[0])
    assert checksums[0]["attachments_attachment"].startswith(f"{n_attachment_files}:")  # one row per file


def test_old_backup_then_restore_is_exact(make_db, old_repo, tmp_path):
    repo, restic_env = old_repo
    db = make_db()
    conninfo = _conninfo(db)
    media = tmp_path / "media"
    dataset.create_schema(conninfo)
    dataset.populate(conninfo, str(media), scale=0.001, seed=1)

    old_procedure.old_init(repo, restic_env)  # the repositories exist: a no-op
    db_before, files_before = dataset.table_checksums(conninfo), dataset.tree_digest(str(media))
    backup = old_procedure.old_backup(repo, str(media), db, restic_env)
    assert backup["snapshots"]["db"] and backup["snapshots"]["files"]

    # a day passes; some junk appears, including a top-level dotfile
    changes = dataset.apply_day_of_changes(conninfo, str(media), fraction=0.05)
    assert changes["inserted"]["userstories_userstory"] > 0 and changes["media_files_deleted"] > 0
    (media / ".stray dotfile").write_text("x")
    (media / "-stray").write_text("y")
    db_changed, files_changed = dataset.table_checksums(conninfo), dataset.tree_digest(str(media))
    for table in ("userstories_userstory", "tasks_task", "issues_issue", "history_historyentry",
                  "attachments_attachment", "users_user"):
        assert db_changed[table] != db_before[table], table
    assert files_changed != files_before

    result = old_procedure.old_restore(repo, str(media), db, restic_env, chown=None)
    assert result["psql_errors"] == []
    assert dataset.table_checksums(conninfo) == db_before
    assert dataset.tree_digest(str(media)) == files_before


def test_old_procedure_reports_stderr(make_db, old_repo, tmp_path):
    repo, restic_env = old_repo
    db = make_db()
    wrong = tmp_path / "wrong-password"
    wrong.write_text("nope\n")
    with pytest.raises(old_procedure.OldProcedureError, match="wrong password") as exc:
        old_procedure.old_backup(repo, str(tmp_path), db, {**restic_env, "RESTIC_PASSWORD_FILE": str(wrong)})
    assert exc.value.step == "unlock files"
