"""FLEET_MAX_CONCURRENT_BACKUPS with real workers: two instances on one redis-server, a cap of one.
Both backups sent at once both succeed, never both holding a slot or both apps down at the same
moment, and the one that waited said so while it waited; a holder SIGKILLed with its children
gives its slot up by its lease running out, and the other instance's backup goes on; a failed
backup gives its slot back at once."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from testkit.faults import app_back, wait_until
from testkit.scenarios import start_instance
from testkit.site import BACKUP_DEPLOYMENTS
from worker.adapters import redis_store
from worker.adapters.fleet_slots import Slots
from worker.celery_app import make_app

WAITING = "waiting for a fleet backup slot (1 of 1 busy)"
LEASE = 5  # JOB_LOCK_LEASE: the slot's lease too


def down(site) -> bool:
    return any(site.kube.replicas(site.namespace, name) != count for name, count in BACKUP_DEPLOYMENTS.items())


class Watch:
    """Samples, every 20 ms until stopped: the slots' holders, which app is down, and what each
    backup's Celery state says - the record the assertions read."""

    def __init__(self, sites: dict, results: dict):
        broker = redis.Redis.from_url(next(iter(sites.values())).env["CELERY_BROKER_URL"])
        self.slots = Slots(broker, 1, LEASE)
        self.sites, self.results = sites, results
        self.samples: list[tuple[set, set]] = []
        self.messages: dict[str, set] = {name: set() for name in sites}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            holders = set(self.slots.holders())
            self.samples.append((holders, {name for name, site in self.sites.items() if down(site)}))
            for name, result in list(self.results.items()):
                info = result.info
                if result.state == "PROGRESS" and isinstance(info, dict) and info.get("message"):
                    self.messages[name].add(info["message"])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def holders_ever(self) -> set:
        return set().union(*(holders for holders, _ in self.samples))


def instances(repos, site_b, **env):
    sites = {"taiga": repos, "taiga-b": site_b}
    workers = {name: start_instance(site, f"worker-{name}", FLEET_MAX_CONCURRENT_BACKUPS=1, JOB_LOCK_LEASE=LEASE,
                                    **env.get(name, {}))
               for name, site in sites.items()}
    return sites, workers, {name: make_app(site.env) for name, site in sites.items()}


@pytest.mark.slow
def test_two_instances_with_a_cap_of_one_back_up_one_after_the_other(repos, site_b):
    sites, workers, apps = instances(repos, site_b)
    try:
        results = {name: app.send_task("taiga_backup.backup") for name, app in apps.items()}
        watch = Watch(sites, results)
        try:
            reports = {name: result.get(timeout=240) for name, result in results.items()}
        finally:
            watch.stop()
        assert all(r["state"] == "SUCCESS" for r in reports.values()), reports
        assert all(app_back(site) for site in sites.values())

        assert max(len(holders) for holders, _ in watch.samples) == 1
        assert watch.holders_ever() == {f"{name}:{results[name].id}" for name in sites}  # each held it once
        assert all(len(apps_down) <= 1 for _, apps_down in watch.samples)  # never both apps down
        assert watch.slots.holders() == {}  # both released

        waited = [name for name, r in reports.items() if r["steps"]["fleet_slot"].get("waited")]
        assert len(waited) == 1, reports
        (second,) = waited
        step = reports[second]["steps"]["fleet_slot"]
        assert step["waited"] == WAITING and step["waited_seconds"] > 1 and step["cap"] == 1
        assert WAITING in watch.messages[second]  # the progress said so while it waited
        assert f"backup: {WAITING}; held by " in workers[second].output()
        (first,) = set(sites) - {second}
        assert not reports[first]["steps"]["fleet_slot"].get("waited")
        # the second quiesced only after the first had given its slot back
        assert reports[second]["steps"]["quiesce"]["started_at"] >= reports[first]["steps"]["resume"]["started_at"]
    finally:
        for worker in workers.values():
            worker.stop()


@pytest.mark.slow
def test_a_killed_holders_slot_frees_after_its_lease_and_the_other_instance_proceeds(repos, site_b):
    sites, workers, apps = instances(repos, site_b, taiga={"TAIGA_BACKUP_TEST_PAUSE": "fleet_slot"})
    try:
        held = apps["taiga"].send_task("taiga_backup.backup")
        wait_until(lambda: "taiga-backup test pause: fleet_slot" in workers["taiga"].output(), 120,
                   "instance taiga paused holding its slot")
        waiting = apps["taiga-b"].send_task("taiga_backup.backup")
        slots = Slots(redis.Redis.from_url(repos.env["CELERY_BROKER_URL"]), 1, LEASE)
        wait_until(lambda: f"backup: {WAITING}" in workers["taiga-b"].output(), 60, "taiga-b waiting for the slot")
        time.sleep(LEASE)  # the holder renews: its slot outlives a lease
        assert set(slots.holders()) == {f"taiga:{held.id}"}
        assert waiting.state == "PROGRESS" and waiting.info["message"] == WAITING

        workers["taiga"].kill()  # SIGKILL, the whole process group and every descendant
        killed = time.monotonic()
        wait_until(lambda: f"taiga-b:{waiting.id}" in slots.holders(), LEASE + 30, "taiga-b to take the freed slot")
        assert time.monotonic() - killed >= LEASE * 2 / 3 - 0.5  # not released: it ran out (renewed every LEASE/3)
        report = waiting.get(timeout=240)
        assert report["state"] == "SUCCESS" and report["steps"]["fleet_slot"]["waited"] == WAITING
        assert app_back(sites["taiga-b"]) and slots.holders() == {}
    finally:
        for worker in workers.values():
            worker.stop()


@pytest.mark.slow
def test_a_failed_backup_gives_its_slot_back(repos):
    """A backup whose preflight fails (a database that does not exist) ends FAILURE through the
    chain's last link, and its slot is free at once: the next backup does not wait."""
    worker = start_instance(repos, "worker", FLEET_MAX_CONCURRENT_BACKUPS=1, JOB_LOCK_LEASE=LEASE,
                            POSTGRES_DB="no_such_database")
    try:
        app = make_app(repos.env)
        slots = Slots(redis.Redis.from_url(repos.env["CELERY_BROKER_URL"]), 1, LEASE)
        failed = app.send_task("taiga_backup.backup")
        with pytest.raises(Exception, match="preflight"):
            failed.get(timeout=120)
        assert slots.holders() == {}
        again = app.send_task("taiga_backup.backup")
        with pytest.raises(Exception, match="preflight"):
            again.get(timeout=120)
        report = json.loads(redis.Redis.from_url(repos.env["CELERY_BROKER_URL"]).get(
            redis_store.report_key("taiga", again.id)))
        assert "waited" not in report["steps"]["fleet_slot"] and report["steps"]["fleet_slot"]["ok"]
    finally:
        worker.stop()
