"""C-STORE senders ("engines"), chosen per destination with its ``engine`` setting.

An engine sends prepared Part 10 files over one association (opening a new
one when it drops) and yields each file's :class:`~migrator.dicom.send.StoreResult`
as soon as its C-STORE response arrives, so that the caller records every
outcome before the next one is known. Every engine:

- sends each file in its stored transfer syntax, in a presentation context
  of its own per (SOP Class, transfer syntax) pair;
- given a :class:`~migrator.dicom.decompress.Decompressor`, sends a decoded
  copy of each compressed file whose presentation context the destination
  did not accept, in Explicit VR Little Endian, and marks its result with
  the :class:`~migrator.dicom.send.Conversion`;
- classifies statuses with :func:`~migrator.dicom.send.classify_status` and
  marks no response and 0xA7xx as transient;
- raises :class:`~migrator.errors.DestinationError` (with the cause, and
  transient unless no presentation context was accepted) when it cannot
  open an association; the caller fails the files it did not yield;
- holds one ``max_associations`` slot and reports to the circuit breaker
  through a :class:`~migrator.dicom.send.DestinationGuard`.

``pynetdicom`` (the default) sends from the worker process. ``dcmsend``
runs DCMTK's dcmsend as a child process and reads its log line by line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Protocol, TypeVar

from migrator.config import DestinationConfig
from migrator.dicom.decompress import Decompressor
from migrator.dicom.prepare import PreparedFile
from migrator.dicom.send import ContextKey, DestinationGuard, StoreResult

#: Whatever the caller attaches to a file to know it again in the results.
Key = TypeVar("Key")


class StoreEngine(Protocol):
    """One sending session to one destination; a context manager."""

    def __enter__(self) -> StoreEngine: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def send(self, files: Iterable[tuple[Key, PreparedFile]]) -> Iterator[tuple[Key, StoreResult]]:
        """Send ``files`` in order, yielding each one's result when its response arrives.

        Files are taken from ``files`` only when the engine is ready to send
        them. A file that is not yielded was not sent, or its response never
        arrived, because a :class:`~migrator.errors.DestinationError` ended the session.
        """
        ...


def open_engine(calling_ae: str, name: str, destination: DestinationConfig,
                pairs: Iterable[ContextKey], guard: DestinationGuard,
                decompressor: Decompressor | None = None) -> StoreEngine:
    """Return the engine that ``destination.engine`` names, not yet entered.

    ``pairs`` are the presentation contexts to propose. With a
    ``decompressor`` they must include Explicit VR Little Endian for the SOP
    classes of compressed files (:func:`~migrator.dicom.send.with_decompressed_contexts`).

    Raises
    ------
    ConfigError
        The engine's program is not installed (dcmsend).
    """
    if destination.engine == "dcmsend":
        from migrator.dicom.engines.dcmsend import DcmsendEngine

        return DcmsendEngine(calling_ae, name, destination, pairs, guard, decompressor)
    from migrator.dicom.engines.pynetdicom_engine import PynetdicomEngine

    return PynetdicomEngine(calling_ae, name, destination, pairs, guard, decompressor)
