"""A circuit breaker per destination, shared by every worker through Redis.

After ``circuit_breaker_failures`` association failures in a row to one
destination, no worker tries it for ``circuit_breaker_seconds``: its
instances fail at once with that reason instead of each waiting for a
connection timeout, and other destinations go on. After the pause one
attempt is let through; a success closes the circuit again.
"""

from __future__ import annotations

import logging

import redis

from migrator.errors import DestinationError

LOGGER = logging.getLogger(__name__)


class CircuitBreaker:
    """Consecutive association failures and the open circuit, per destination."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix

    def _keys(self, destination: str) -> tuple[str, str]:
        base = f"{self._prefix}:circuit:{destination}"
        return f"{base}:failures", f"{base}:open"

    def remaining(self, destination: str) -> int:
        """Return the seconds for which the circuit of ``destination`` stays open; 0 when closed."""
        _, open_key = self._keys(destination)
        remaining = self._redis.ttl(open_key)
        return remaining if isinstance(remaining, int) and remaining > 0 else 0

    def check(self, destination: str) -> None:
        """Raise DestinationError while the circuit of ``destination`` is open."""
        remaining = self.remaining(destination)
        if remaining:
            raise DestinationError(
                f"destination {destination} is paused for {remaining} s more after repeated "
                "association failures (circuit breaker); these instances were not tried, and "
                "'migrator requeue --reason \"circuit breaker\"' returns them to the plan")

    def record_failure(self, destination: str, threshold: int, pause_seconds: float) -> None:
        failures_key, open_key = self._keys(destination)
        failures = int(self._redis.incr(failures_key))
        if failures >= threshold:
            self._redis.set(open_key, "1", ex=max(1, int(pause_seconds)))
            self._redis.delete(failures_key)
            LOGGER.warning("destination %s: %d association failures in a row; no worker tries it "
                           "for %g s", destination, failures, pause_seconds)

    def record_success(self, destination: str) -> None:
        failures_key, _ = self._keys(destination)
        self._redis.delete(failures_key)
