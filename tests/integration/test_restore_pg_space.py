"""The side database must not fill the PostgreSQL server's disk: the live
database lives in a tablespace on a small real tmpfs; a restore whose load would leave less
than the margin there is refused before anything is written - the live database byte-identical,
the app never stopped. Real PostgreSQL, restic and the Kubernetes double."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit import dataset, mounts
from testkit.restore_checks import live_state, side_copies
from testkit.scenarios import ALL_DEPLOYMENTS, change_everything, run_backup, run_restore
from testkit.site import NAMESPACE

from worker.adapters import databases
from worker.errors import JobFailed

SIZE = 30 * 1024 * 1024


@pytest.fixture
def small_tablespace(repos):
    """The site's database moved into a tablespace on a 30 MB tmpfs (moved back afterwards)."""
    if not mounts.can_mount():
        pytest.skip("mounting a tmpfs needs root")
    site = repos
    name = f"ts_{site.dbname}"
    # inside the cluster's own directory: the server's user can reach it (the test's tmp_path it cannot)
    with mounts.tmpfs(Path(site.pg.root) / f"space-{site.dbname}", SIZE, owner="postgres") as where:
        site.pg.sql(f"create tablespace {name} location '{where}'")
        try:
            site.pg.sql(f"grant create on tablespace {name} to {site.db_user}")
            site.pg.sql(f"alter database {site.dbname} set tablespace {name}")
            yield site, name
        finally:
            for (db,) in site.pg.sql(f"select datname from pg_database d join pg_tablespace t on t.oid = "
                                     f"d.dattablespace where t.spcname = '{name}'"):
                site.pg.sql(f'alter database "{db}" set tablespace pg_default')
            site.pg.sql(f"drop tablespace {name}")


@pytest.mark.slow
def test_a_load_that_would_fill_the_servers_disk_is_refused_beforehand(small_tablespace):
    site, tablespace = small_tablespace
    run_backup()
    change_everything(site)
    before = {"state": live_state(site), "digest": dataset.tree_digest(str(site.media)),
              "history": {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS}}
    with pytest.raises(JobFailed) as err:
        run_restore(safety_backup=False)
    assert "PostgreSQL server has" in str(err.value) and "nothing was changed" in str(err.value), str(err.value)
    assert tablespace in str(err.value)
    assert {"state": live_state(site), "digest": dataset.tree_digest(str(site.media)),
            "history": {n: site.kube.history(NAMESPACE, n) for n in ALL_DEPLOYMENTS}} == before
    assert side_copies(site) == {"databases": [], "dirs": []} and site.replicas() == ALL_DEPLOYMENTS


def test_the_side_database_goes_where_the_live_one_is(small_tablespace):
    """Beside the live database, on its disk: that is the disk the check reads, and the app's
    database stays there after the switch."""
    site, tablespace = small_tablespace
    settings = site.settings()
    target = databases.inspect(settings)
    assert target.tablespace == tablespace
    free, where = databases.free_bytes(settings, target)
    assert free is not None and 0 < free < SIZE and tablespace in where
    databases.create_like(settings, target, f"{site.dbname}__restore_20250101000000")
    try:
        assert site.pg.sql(f"select t.spcname from pg_database d join pg_tablespace t on t.oid = d.dattablespace "
                           f"where d.datname = '{site.dbname}__restore_20250101000000'") == [(tablespace,)]
    finally:
        databases.drop(settings, f"{site.dbname}__restore_20250101000000")
