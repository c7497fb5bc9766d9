"""Who may reach the broker and whose messages run: Redis with a password and TLS (client
certificates required), and Celery message signing - an unsigned restore, one signed with a key
the worker does not trust, or with a forged certificate, is dropped and never runs."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import uuid

import psycopg
import pytest
import redis

from testkit import dataset, messages
from testkit.pki import signing_env, start_signed_worker
from testkit.site import ROOT
from testkit.faults import app_back, snapshot_ids, wait_until
from testkit.servers import RedisServer
from worker.runtime.stamp import queue
from worker.settings import SettingsError

REDIS_PASSWORD = "tls-redis-Pw-0e5a77c1"


# -- Redis TLS -------------------------------------------------------------------------------

@pytest.fixture
def tls_redis(pki):
    server = RedisServer(password=REDIS_PASSWORD, tls={**pki["server"], "ca": pki["ca"]}).start()
    yield server
    server.cleanup()


@pytest.mark.slow
def test_a_backup_runs_over_tls_with_a_password_and_clients_without_them_are_refused(
        repos, pki, tls_redis, start_worker, monkeypatch):
    from worker.celery_app import make_app

    site = repos
    url_file = site.secrets / "broker-url"
    url_file.write_text(tls_redis.url + "\n")
    assert tls_redis.url.startswith("rediss://:")
    env = {"CELERY_BROKER_URL": "", "CELERY_BROKER_URL_FILE": str(url_file), "CELERY_REDIS_CA_FILE": pki["ca"],
           "CELERY_REDIS_CERT_FILE": pki["client"]["cert"], "CELERY_REDIS_KEY_FILE": pki["client"]["key"]}
    monkeypatch.setenv("CELERY_BROKER_URL", "")  # Celery would prefer it to the URL from the file
    start_worker(**env)
    report = make_app({**site.env, **env}).send_task("taiga_backup.backup").get(timeout=120)
    assert report["state"] == "SUCCESS" and app_back(site)
    assert site.settings(**env).redis_ssl["ssl_ca_certs"] == pki["ca"]  # our own lease and reports too

    tls = {"ssl": True, "ssl_ca_certs": pki["ca"], "ssl_certfile": pki["client"]["cert"],
           "ssl_keyfile": pki["client"]["key"], "socket_timeout": 5}
    port = tls_redis.port
    assert redis.Redis(port=port, password=REDIS_PASSWORD, **tls).get(f"taiga-backup:taiga:report:{report['task_id']}")
    with pytest.raises(redis.AuthenticationError):  # certificate, no password
        redis.Redis(port=port, **tls).get("x")
    with pytest.raises(redis.AuthenticationError):  # wrong password
        redis.Redis(port=port, password="guess", **tls).get("x")
    no_client_cert = {k: v for k, v in tls.items() if k not in ("ssl_certfile", "ssl_keyfile")}
    with pytest.raises(redis.ConnectionError):  # password, no client certificate
        redis.Redis(port=port, password=REDIS_PASSWORD, **no_client_cert).get("x")
    with pytest.raises(redis.ConnectionError):  # a server we cannot verify is not talked to
        redis.Redis(port=port, password=REDIS_PASSWORD, **{**tls, "ssl_ca_certs": pki["server"]["cert"]}).get("x")
    with pytest.raises(redis.ConnectionError):  # plain text
        redis.Redis(port=port, password=REDIS_PASSWORD, socket_timeout=5).get("x")


def test_tls_and_signing_settings_are_all_or_nothing(site, pki):
    with pytest.raises(SettingsError, match="not rediss://"):
        site.settings(CELERY_REDIS_CA_FILE=pki["ca"])
    with pytest.raises(SettingsError, match="CELERY_REDIS_CERT_FILE and CELERY_REDIS_KEY_FILE"):
        site.settings(CELERY_BROKER_URL="rediss://:pw@127.0.0.1:1/0", CELERY_REDIS_CERT_FILE=pki["client"]["cert"])
    with pytest.raises(SettingsError, match="CELERY_REDIS_CA_FILE: cannot read"):
        site.settings(CELERY_BROKER_URL="rediss://:pw@127.0.0.1:1/0", CELERY_REDIS_CA_FILE="/nonexistent/ca.crt")
    tls = site.settings(CELERY_BROKER_URL="rediss://:pw@127.0.0.1:1/0", CELERY_REDIS_CA_FILE=pki["ca"]).redis_ssl
    assert tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": pki["ca"]}
    with pytest.raises(SettingsError, match="message signing needs all of"):
        site.settings(CELERY_SECURITY_KEY_FILE=pki["worker"]["key"], CELERY_SECURITY_CERT_FILE=pki["worker"]["cert"])
    with pytest.raises(SettingsError, match="CELERY_SECURITY_CERT_STORE: no certificate"):
        site.settings(CELERY_SECURITY_KEY_FILE=pki["worker"]["key"], CELERY_SECURITY_CERT_FILE=pki["worker"]["cert"],
                      CELERY_SECURITY_CERT_STORE=str(site.root / "empty-*.crt"))


# -- message signing -------------------------------------------------------------------------

def cli(site, env: dict, *args) -> subprocess.CompletedProcess:
    """The CLI in its own process, as a chat-ops bot or an operator runs it: signing configures
    itself from CELERY_SECURITY_* (it is process-wide in Celery, so never in the test process)."""
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=180, env={**os.environ, **site.env, **env, "PYTHONPATH": str(ROOT)})


def rejections(worker) -> int:
    """Messages the worker dropped: Celery logs each, with why."""
    return len(re.findall(r"Received invalid task message|Can't decode message body", worker.output()))


def raw_message(app, body: str, content_type: str) -> str:
    """A task message as anyone with broker access can write it; returns its task id."""
    task_id = str(uuid.uuid4())
    with app.producer_or_acquire() as producer:
        producer.publish(body, exchange="", routing_key="taiga-backup.taiga", content_type=content_type, content_encoding="utf-8",
                         headers={"lang": "py", "task": "taiga_backup.restore", "id": task_id, "root_id": task_id,
                                  "parent_id": None, "group": None, "argsrepr": "()", "kwargsrepr": "{}",
                                  "origin": "attacker", "retries": 0, "eta": None, "expires": None})
    return task_id


def attack(worker, send) -> str:
    """Sends one message and waits until the worker has dropped it."""
    before = rejections(worker)
    task_id = send()
    wait_until(lambda: rejections(worker) > before, 30, "the message to be dropped")
    return task_id


@pytest.mark.slow
def test_only_messages_signed_by_a_trusted_key_run(repos, pki, signed_worker, celery_client):
    site = repos
    # the chat-ops bot (its own key; its certificate is in the worker's store) queues a backup
    done = cli(site, signing_env(pki, "bot"), "backup", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)["result"]
    with psycopg.connect(site.conninfo, autocommit=True) as conn:  # what a restore would undo
        conn.execute("create table written_after_the_backup (id int)")
    before = dataset.table_checksums(site.conninfo)

    def signed_by(who: str, store: str):
        return lambda: json.loads(cli(site, signing_env(pki, who, store=store), "restore", "--json").stdout)["task_id"]

    attacks = {
        # anyone with broker access: plain JSON, no signature
        "unsigned": lambda: celery_client.send_task("taiga_backup.restore", kwargs={"trigger": "chat"}).id,
        # signed with a key and certificate the worker does not trust
        "untrusted key": signed_by("stranger", pki["stranger"]["cert"]),
        # signed with a forged certificate: the bot's name and serial, the forger's key
        "forged certificate": signed_by("forged", pki["forged"]["cert"]),
        # a content type kombu passes through undecoded
        "raw text": lambda: raw_message(celery_client, '[[], {"trigger": "chat"}, {}]', "application/text"),
    }
    sent = {what: attack(signed_worker, send) for what, send in attacks.items()}
    log = signed_worker.output()
    assert "Unknown certificate" in log and "Bad signature" in log
    for what, task_id in sent.items():
        assert f"taiga_backup.restore[{task_id}] received" not in log, what
        assert celery_client.AsyncResult(task_id).state == "PENDING", what
    assert dataset.table_checksums(site.conninfo) == before  # no restore ran

    # and the worker is still there for the bot
    done = cli(site, signing_env(pki, "bot"), "backup", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)["result"]
    assert sorted(snapshot_ids(site, "pg-database")) == sorted([first["snapshots"]["pg-database"],
                                                               second["snapshots"]["pg-database"]])


@pytest.mark.slow
def test_malformed_messages_do_not_stop_an_unsigned_worker(repos, start_worker, celery_client):
    """Without signing too: a body Celery cannot parse is dropped, and the worker goes on."""
    worker = start_worker()
    for body, content_type in (("[1, 2]", "application/json"), ('"x"', "application/json"),
                               ("[[], {}, {}]", "application/text"), ("\x00garbage", "application/data")):
        task_id = attack(worker, lambda: raw_message(celery_client, body, content_type))
        assert f"[{task_id}] received" not in worker.output()
    assert celery_client.send_task("taiga_backup.backup").get(timeout=120)["state"] == "SUCCESS"


# -- signed requests: bound to their task, their id and their lifetime ------------------------

def capture(site, pki, who: str, task: str, kwargs: dict) -> dict:
    """A message signed by `who`, taken from the broker as anyone with broker access could."""
    return messages.capture({**site.env, **signing_env(pki, who)}, task, kwargs)


def push(site, message: dict, task: str | None = None) -> str:
    """Puts a captured message into the worker's queue, as it is or relabelled as `task`."""
    return messages.push(site.env["CELERY_BROKER_URL"], message, queue(site.instance), task)


def refused(worker, task: str, task_id: str, why: str, timeout: float = 60) -> None:
    """The worker refused the message before the task's code ran. (Its result is not a sign: a
    replay carries the id of a request that succeeded, and Celery keeps a SUCCESS it stored.)"""
    wait_until(lambda: f"refused {task}[{task_id}]: " in worker.output(), timeout, f"task {task_id} to be refused")
    line = next(x for x in worker.output().splitlines() if f"refused {task}[{task_id}]: " in x)
    assert why in line, line


@pytest.mark.slow
def test_a_signed_message_relabelled_or_replayed_is_refused_and_changes_nothing(repos, pki, signed_worker,
                                                                               celery_client):
    site = repos
    done = cli(site, signing_env(pki, "bot"), "backup", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    with psycopg.connect(site.conninfo, autocommit=True) as conn:  # what a restore would undo
        conn.execute("create table written_after_the_backup (id int)")
    before = dataset.table_checksums(site.conninfo)

    # beat's every-minute reconcile, signed by the worker's own key, pushed again as a restore
    reconcile = capture(site, pki, "worker", "taiga_backup.reconcile", {})
    relabelled = push(site, reconcile, task="taiga_backup.restore")
    refused(signed_worker, "taiga_backup.restore", relabelled, "is for 'taiga_backup.reconcile'")
    assert celery_client.AsyncResult(relabelled).state == "FAILURE"
    assert dataset.table_checksums(site.conninfo) == before

    # a signed restore, run once as meant, then sent again later
    restore = capture(site, pki, "bot", "taiga_backup.restore", {"trigger": "chat", "safety_backup": False})
    kept = records(site)
    task_id = push(site, restore)
    wait_until(lambda: celery_client.AsyncResult(task_id).state == "SUCCESS", 180, "the signed restore")
    assert kept and records(site) > kept  # the restore's switch left the record of what ran in place
    with psycopg.connect(site.conninfo, autocommit=True) as conn:
        conn.execute("create table written_after_the_restore (id int)")
    after_restore = dataset.table_checksums(site.conninfo)
    refused(signed_worker, "taiga_backup.restore", push(site, restore), "already run once")
    assert dataset.table_checksums(site.conninfo) == after_restore
    assert app_back(site)


def records(site) -> set:
    """The signed requests the worker recorded as run, on the media volume (NONCE_DIR's default)."""
    directory = site.media / ".taiga-backup-state" / "nonces"
    return set(os.listdir(directory)) if directory.exists() else set()


def stored_state(site, task_id: str) -> str | None:
    """A task's result state, read with a connection of its own (pooled ones die with Redis)."""
    raw = redis.Redis.from_url(site.env["CELERY_BROKER_URL"], socket_timeout=5).get(f"celery-task-meta-{task_id}")
    return raw and json.loads(raw)["status"]


def restart_redis_empty(site) -> None:
    """Redis as the chart runs it, without persistence: a restart forgets everything in it (the
    queues, the results, the reports and any nonce kept there)."""
    client = redis.Redis.from_url(site.env["CELERY_BROKER_URL"])
    before = set(client.keys("*"))
    site.redis_server.stop()
    site.redis_server.start()
    # nothing from before survived (the worker may write new keys at once: a late result, and
    # kombu's queue bindings, which every client declares again as soon as it reconnects)
    after = {k for k in redis.Redis.from_url(site.env["CELERY_BROKER_URL"]).keys("*") if not k.startswith(b"_kombu.")}
    assert before and not before & after


def replayed_after_redis_restart(site, worker, message: dict, made: list) -> None:
    """Redis restarts empty, the captured message is pushed again as it was: the worker refuses
    it as a replay and no second backup is made."""
    task_id = message["headers"]["id"]
    restart_redis_empty(site)
    assert stored_state(site, task_id) is None  # the first run's result went with Redis
    push(site, message)
    wait_until(lambda: stored_state(site, task_id) in ("SUCCESS", "FAILURE"), 180, "the replay to end")
    assert snapshot_ids(site, "pg-database") == made, "the replayed backup ran a second time"
    refused(worker, "taiga_backup.backup", task_id, "already run once")
    assert stored_state(site, task_id) == "FAILURE"
    assert app_back(site)


@pytest.mark.slow
def test_a_signed_request_replayed_after_redis_and_the_worker_restarted_is_refused(repos, pki, signed_worker,
                                                                                   tmp_path):
    """Issue 20, hole 11: Redis runs without persistence, so a replay defence kept only there is
    gone after a restart. A signed backup captured from the broker runs once; after Redis
    restarted empty, the same raw message runs no second backup, and neither after the worker
    restarted as well (a new pod on the same media volume)."""
    site = repos
    backup = capture(site, pki, "bot", "taiga_backup.backup", {"trigger": "chat"})
    task_id = push(site, backup)
    wait_until(lambda: stored_state(site, task_id) == "SUCCESS", 180, "the signed backup")
    made = snapshot_ids(site, "pg-database")
    assert len(made) == 1
    assert records(site)  # the backup and each of its links, on the media volume ...
    listed = [json.loads(line).get("path") for line in site.restic("files", "ls", "latest", "--json",
                                                                      "--no-lock").stdout.splitlines()]
    assert len(listed) > 3 and not [p for p in listed if p and ".taiga-backup-state" in p]  # ... left out of it

    replayed_after_redis_restart(site, signed_worker, backup, made)

    signed_worker.stop()
    restarted = start_signed_worker(site, pki, tmp_path, "restarted-worker")
    try:
        replayed_after_redis_restart(site, restarted, backup, made)
    finally:
        restarted.stop()


@pytest.mark.slow
def test_the_chatops_client_signs_and_reads_the_broker_url_from_a_file(repos, pki, signed_worker, tmp_path):
    site = repos
    url_file = tmp_path / "broker-url"
    url_file.write_text(site.env["CELERY_BROKER_URL"] + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CELERY_BROKER_URL_FILE": str(url_file),
           **signing_env(pki, "bot")}
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "chatops_client.py"), "--instance", site.instance,
                           "--timeout", "240", "backup"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["state"] == "SUCCESS" and report["snapshots"]["pg-database"] in snapshot_ids(site, "pg-database")
