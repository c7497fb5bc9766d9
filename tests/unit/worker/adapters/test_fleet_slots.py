"""worker/adapters/fleet_slots.py on fakeredis: never more holders than the cap, a dead holder's
slot frees itself after its lease, a renewal keeps it, a release frees it at once and is never
undone by a renewal."""

from __future__ import annotations

import threading
import time

import fakeredis

from worker.adapters.fleet_slots import Slots
from worker.adapters.redis_store import FLEET_SLOTS_KEY


def clients(server, n, cap=2, lease=30.0):
    return [Slots(fakeredis.FakeRedis(server=server), cap, lease) for _ in range(n)]


def test_the_cap_holds_and_a_release_frees_a_slot():
    a, b, c = clients(fakeredis.FakeServer(), 3)
    assert a.try_acquire("taiga-a:1") == (True, 0)
    assert b.try_acquire("taiga-b:2") == (True, 1)
    assert c.try_acquire("taiga-c:3") == (False, 2)
    assert a.try_acquire("taiga-a:1") == (True, 1)  # a holder asking again keeps its slot
    assert set(c.holders()) == {"taiga-a:1", "taiga-b:2"}
    assert a.redis.type(FLEET_SLOTS_KEY) == b"zset"  # one broker-wide key, no instance in it
    a.release("taiga-a:1")
    assert c.try_acquire("taiga-c:3") == (True, 1)
    assert set(c.holders()) == {"taiga-b:2", "taiga-c:3"}


def test_a_dead_holders_slot_frees_itself_after_its_lease_and_a_renewed_one_does_not():
    server = fakeredis.FakeServer()
    dead, alive = clients(server, 2, cap=2, lease=1.0)
    (waiting,) = clients(server, 1, cap=2, lease=1.0)
    assert dead.try_acquire("taiga-a:dead")[0] and alive.try_acquire("taiga-b:alive")[0]
    assert waiting.try_acquire("taiga-c:next") == (False, 2)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:  # taiga-b renews, taiga-a has stopped (SIGKILL)
        assert alive.renew("taiga-b:alive")
        time.sleep(0.2)
    assert set(waiting.holders()) == {"taiga-b:alive"}
    assert waiting.try_acquire("taiga-c:next") == (True, 1)
    assert waiting.redis.zscore(FLEET_SLOTS_KEY, "taiga-a:dead") is None  # dropped by the taker
    assert not dead.renew("taiga-a:dead")  # an expired slot is not taken back


def test_a_released_slot_is_not_taken_back_by_its_renewal():
    (slots,) = clients(fakeredis.FakeServer(), 1)
    slots.try_acquire("taiga-a:1")
    slots.release("taiga-a:1")  # the errback, on another worker
    assert not slots.renew("taiga-a:1")
    assert slots.holders() == {}


def test_many_takers_at_once_never_exceed_the_cap():
    server = fakeredis.FakeServer()
    takers = clients(server, 12, cap=3)
    seen, taken = [], []
    barrier = threading.Barrier(len(takers))

    def take(i, slots):
        barrier.wait()
        if slots.try_acquire(f"i{i}:t")[0]:
            taken.append(i)
        seen.append(len(slots.holders()))

    threads = [threading.Thread(target=take, args=(i, s)) for i, s in enumerate(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 3 and max(seen) <= 3
