"""Association slots for parallel sessions: extra sessions take only slots that are free now."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from migrator.config import DestinationConfig
from migrator.dicom.limit import AssociationLimiter
from migrator.dicom.send import DestinationGuard
from migrator.errors import DestinationError

REDIS_URL = os.environ.get("MIGRATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def limiter() -> Iterator[AssociationLimiter]:
    """A limiter whose Redis keys belong to this test alone."""
    yield AssociationLimiter(REDIS_URL, f"test-{uuid.uuid4().hex}")


def _destination(max_associations: int) -> DestinationConfig:
    return DestinationConfig(ae_title="PACS", host="127.0.0.1", port=104,
                             max_associations=max_associations, association_wait=0.5)


def test_try_hold_takes_free_slots_only(limiter: AssociationLimiter) -> None:
    """try_hold succeeds while slots are free and fails at once when all are held."""
    destination = _destination(2)
    guards = [DestinationGuard("main", destination, limiter) for _ in range(3)]
    started = time.monotonic()
    assert [guard.try_hold() for guard in guards] == [True, True, False]
    assert time.monotonic() - started < 0.4
    guards[0].close()
    assert guards[2].try_hold()
    for guard in guards:
        guard.close()


def test_keep_waits_then_fails(limiter: AssociationLimiter) -> None:
    """With every slot held, keep waits association_wait and raises DestinationError."""
    destination = _destination(1)
    holder = DestinationGuard("main", destination, limiter)
    holder.keep()
    waiting = DestinationGuard("main", destination, limiter)
    with pytest.raises(DestinationError, match="max_associations = 1"):
        waiting.keep()
    holder.close()
    waiting.keep()
    waiting.close()


def test_no_limit_always_holds() -> None:
    """Without max_associations every session gets a slot."""
    destination = DestinationConfig(ae_title="PACS", host="127.0.0.1", port=104)
    assert DestinationGuard("main", destination).try_hold()
