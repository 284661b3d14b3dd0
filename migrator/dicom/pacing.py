"""Keeping pynetdicom from reading a file into memory faster than it sends it.

pynetdicom 3.0 encodes a C-STORE's data set into P-DATA primitives in the
sending thread, reading a file in chunks of the maximum PDU length, and
hands each one to its DUL thread through an unbounded queue
(``DULServiceProvider.to_provider_queue``). Reading from disk is faster
than sending, so the queue filled with a large part of each large file.
Sending one multi-frame image to storescp on 127.0.0.1 took the peak RSS
of ``migrator start`` to 222 MiB for a 200 MiB file and to 381 MiB for an
800 MiB file (2-core VM, ``tests/e2e/test_bad_files.py``). A slower
network leaves more in the queue. With :func:`pace` the peak was 126 MiB
for the 800 MiB file and 125 MiB for a 1 MiB one.

:func:`pace` gives the association a queue on which the sending thread
waits while :data:`MAX_QUEUED_PDATA` P-DATA primitives are queued. Other
primitives (release, abort) never wait, and neither does anything once the
DUL thread has stopped, so an abort or a lost connection cannot block the
sender.

NOTE: a destination that accepts PDUs of any length (maximum PDU length 0)
gets the whole data set in one P-DATA, which pynetdicom builds in memory.
"""

from __future__ import annotations

import queue
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

#: P-DATA primitives queued for the DUL thread before the sending thread
#: waits. With the default maximum PDU length of 16 KiB (storescp 3.6.7
#: ``--help``, Orthanc 1.10's /etc/orthanc/orthanc.json) that is 1 MiB.
MAX_QUEUED_PDATA = 64
#: Seconds between two checks that the DUL thread still runs.
_POLL_SECONDS = 0.05


class _PacedQueue(queue.Queue[Any]):
    """An unbounded queue whose ``put`` of a P-DATA primitive waits while ``limit`` are queued."""

    def __init__(self, dul: DULServiceProvider, limit: int) -> None:
        super().__init__()
        self._dul = dul
        self._limit = limit

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA):
            with self.not_full:  # notified by every get()
                while self._qsize() >= self._limit and self._dul.is_alive():
                    self.not_full.wait(_POLL_SECONDS)
        super().put(item, block, timeout)


def pace(assoc: Association, limit: int = MAX_QUEUED_PDATA) -> None:
    """Bound the P-DATA primitives that ``assoc`` queues for sending, from now on.

    Call it from the thread that sends, which is the only one that puts
    primitives on the queue, so none can be lost while it is replaced.
    """
    dul = assoc.dul
    paced = _PacedQueue(dul, limit)
    old = dul.to_provider_queue
    with old.mutex:
        paced.queue.extend(old.queue)
        old.queue.clear()
        dul.to_provider_queue = paced
