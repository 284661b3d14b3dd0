"""A limit on concurrent associations per destination, shared by every worker through Redis.

Each held association is a member of a sorted set scored by the time it
was last renewed. A member not renewed within ``TTL`` belongs to a worker
that died and no longer counts, so a crash cannot use up the slots.
"""

from __future__ import annotations

import logging
import time
import uuid

import redis

from migrator.errors import DestinationError

LOGGER = logging.getLogger(__name__)

#: Seconds after which a slot whose holder stopped renewing it is free again.
TTL = 300.0
#: Seconds between two attempts to get a slot.
POLL = 0.2

# Drop expired members, then add ours if a slot is free: one atomic step.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  return 1
end
return 0
"""


class AssociationLimiter:
    """Counts associations per destination across machines."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)

    def _key(self, destination: str) -> str:
        return f"{self._prefix}:associations:{destination}"

    def acquire(self, destination: str, limit: int, wait_seconds: float) -> str:
        """Wait for a free slot and return its token.

        Raises
        ------
        DestinationError
            No slot became free within ``wait_seconds``.
        """
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_seconds
        while True:
            if self._acquire(keys=[self._key(destination)], args=[time.time(), TTL, limit, token]):
                return token
            if time.monotonic() > deadline:
                raise DestinationError(
                    f"no association slot to destination {destination} became free within "
                    f"{wait_seconds:g} s (max_associations = {limit}); the instances will be "
                    "sent by 'migrator requeue' and 'migrator start' later")
            time.sleep(POLL)

    def try_acquire(self, destination: str, limit: int) -> str | None:
        """Take a free slot without waiting and return its token, or None when all are held."""
        token = uuid.uuid4().hex
        if self._acquire(keys=[self._key(destination)], args=[time.time(), TTL, limit, token]):
            return token
        return None

    def renew(self, destination: str, token: str) -> None:
        self._redis.zadd(self._key(destination), {token: time.time()}, xx=True)

    def release(self, destination: str, token: str) -> None:
        self._redis.zrem(self._key(destination), token)
