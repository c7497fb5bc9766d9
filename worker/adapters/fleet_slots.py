"""A semaphore shared by every instance on the broker: at most `cap` holders at once, each with a
lease (FLEET_MAX_CONCURRENT_BACKUPS; the waiting policy is worker.jobs.fleet's).

Why a sorted set of holder -> deadline, not a counter: a worker that is SIGKILLed never gives
its slot back. Each holder's score is when its lease runs out (the Redis server's clock, so pods
whose clocks differ agree); a holder renews it while it works, and whoever tries to take a slot
first drops the holders whose deadline has passed. So a dead holder's slot frees itself within
its lease, with no process in charge of cleaning up. Taking is one WATCH/MULTI transaction (drop
the expired, count, add below the cap), redone when another client changed the set meanwhile,
as the job lease does (worker.jobs.lease): two instances never both take the last slot.

A renewal never takes a slot back: a slot that is gone (released by the backup's errback on
another worker, or Redis restarted empty) stays gone, and the renewal says so.
"""

from __future__ import annotations

import redis

from worker.adapters.redis_store import FLEET_SLOTS_KEY


def server_time(client: redis.Redis) -> float:
    """Seconds since the epoch on the Redis server: the clock every holder's deadline is on."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


class Slots:
    """The slots of one broker, seen by one holder's client."""

    def __init__(self, client: redis.Redis, cap: int, lease: float, key: str = FLEET_SLOTS_KEY):
        self.redis = client
        self.cap = int(cap)
        self.lease = float(lease)
        self.key = key

    def try_acquire(self, holder: str) -> tuple[bool, int]:
        """(taken, busy): takes a slot for `holder` if fewer than `cap` live holders have one (a
        holder that has one already keeps it, renewed); busy is how many live holders other than
        `holder` hold one."""
        def body(pipe) -> tuple[bool, int]:
            now = server_time(pipe)
            live = {member.decode() if isinstance(member, bytes) else member
                    for member in pipe.zrangebyscore(self.key, f"({now}", "+inf")}
            others = len(live - {holder})
            pipe.multi()
            pipe.zremrangebyscore(self.key, "-inf", now)
            if others < self.cap:
                pipe.zadd(self.key, {holder: now + self.lease})
                return True, others
            return False, others

        return self.redis.transaction(body, self.key, value_from_callable=True)

    def renew(self, holder: str) -> bool:
        """Moves `holder`'s deadline a lease on; False when it holds no live slot (expired,
        released, or Redis restarted empty): the slot is not taken back."""
        def body(pipe) -> bool:
            now = server_time(pipe)
            score = pipe.zscore(self.key, holder)
            pipe.multi()
            if score is None or score <= now:
                return False
            pipe.zadd(self.key, {holder: now + self.lease}, xx=True)
            return True

        return self.redis.transaction(body, self.key, value_from_callable=True)

    def release(self, holder: str) -> None:
        self.redis.zrem(self.key, holder)

    def holders(self) -> dict[str, float]:
        """Live holders and the seconds left on their leases (metrics, tests, the bench)."""
        now = server_time(self.redis)
        return {(member.decode() if isinstance(member, bytes) else member): round(score - now, 3)
                for member, score in self.redis.zrangebyscore(self.key, f"({now}", "+inf", withscores=True)}
