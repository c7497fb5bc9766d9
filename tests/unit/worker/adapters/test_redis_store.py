"""The keys of a worker from before instances move into the first instance's namespace, each only
where the instance has none of its own, and the per-repository keys stay where they are; the
reconciler's summaries stay one capped key."""

from __future__ import annotations

import fakeredis

from worker.adapters import redis_store


def test_the_one_instance_layout_moves_once_into_the_instance_and_the_lease_stays():
    client = fakeredis.FakeRedis()
    lock, _, _ = redis_store.lease_keys("/repo")
    client.set("taiga-backup:report:t1", "old report", ex=1000)
    client.set("taiga-backup:last:backup:success", "old last")
    client.set("taiga-backup:check:last-part", "3")
    client.set("taiga-backup:nonce:ab", "t1", ex=1000)
    client.set(redis_store.last_report_key("a", "prune", "SUCCESS"), "newer")
    client.set("taiga-backup:last:prune:success", "older")
    client.set(lock, "held")
    client.hset(redis_store.WORKERS_KEY, "host", 1)

    moved = dict(redis_store.migrate(client, "a"))
    assert moved == {"taiga-backup:report:t1": redis_store.report_key("a", "t1"),
                     "taiga-backup:last:backup:success": redis_store.last_report_key("a", "backup", "SUCCESS"),
                     "taiga-backup:check:last-part": redis_store.check_part_key("a"),
                     "taiga-backup:nonce:ab": redis_store.nonce_key("a", "ab")}
    assert client.get(redis_store.report_key("a", "t1")) == b"old report"
    assert 0 < client.ttl(redis_store.report_key("a", "t1")) <= 1000  # the TTL moved with it
    assert client.get(redis_store.last_report_key("a", "prune", "SUCCESS")) == b"newer"  # the instance's own wins
    assert client.get("taiga-backup:last:prune:success") == b"older"  # left for the operator
    assert client.get(lock) == b"held" and client.hget(redis_store.WORKERS_KEY, "host") == b"1"
    assert redis_store.migrate(client, "b") == []  # another instance added later takes none
    client.set("taiga-backup:last:check:success", "an old worker's, in a rolling upgrade")
    assert redis_store.migrate(client, "a") == [("taiga-backup:last:check:success",
                                                 redis_store.last_report_key("a", "check", "SUCCESS"))]


def test_the_reconcile_summaries_are_one_capped_list_newest_first_per_instance():
    client = fakeredis.FakeRedis()
    for n in range(redis_store.RECONCILE_RECENT + 5):
        redis_store.push_reconcile_summary(client, "a", f"run {n}", 1000)
    redis_store.push_reconcile_summary(client, "b", "b's", 1000)
    recent = client.lrange(redis_store.reconcile_recent_key("a"), 0, -1)
    assert len(recent) == redis_store.RECONCILE_RECENT
    assert recent[0] == f"run {redis_store.RECONCILE_RECENT + 4}".encode() and recent[-1] == b"run 5"
    assert 0 < client.ttl(redis_store.reconcile_recent_key("a")) <= 1000
    assert client.lrange(redis_store.reconcile_recent_key("b"), 0, -1) == [b"b's"]
