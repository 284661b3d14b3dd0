"""The default engine: pynetdicom in the worker process, one C-STORE at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from migrator.config import DestinationConfig
from migrator.dicom.prepare import PreparedFile
from migrator.dicom.send import ContextKey, DestinationGuard, StoreResult, StoreSession

if TYPE_CHECKING:
    from migrator.dicom.decompress import Decompressor

Key = TypeVar("Key")


class PynetdicomEngine:
    """Sends each file with :meth:`StoreSession.store`, which streams it from disk.

    With a ``decompressor``, a compressed file whose presentation context the
    association did not accept goes as a decoded copy over the same association.
    """

    def __init__(self, calling_ae: str, name: str, destination: DestinationConfig,
                 pairs: Iterable[ContextKey], guard: DestinationGuard,
                 decompressor: Decompressor | None = None) -> None:
        self._session = StoreSession(calling_ae, name, destination, pairs, guard=guard)
        self._decompressor = decompressor

    def __enter__(self) -> PynetdicomEngine:
        self._session.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._session.close()

    def send(self, files: Iterable[tuple[Key, PreparedFile]]) -> Iterator[tuple[Key, StoreResult]]:
        for key, prepared in files:
            if self._decompressor is not None:
                yield key, self._decompressor.store(prepared, self._session)
                continue
            yield key, self._session.store(prepared.path, prepared.sop_class_uid,
                                           prepared.transfer_syntax)
