"""A storage SCP on 127.0.0.1 that keeps what it receives, for the demo.

It accepts every storage SOP class in every transfer syntax as proposed, so
compressed instances arrive as they were sent, and writes each one to its
folder named by SOP Instance UID.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from migrator.dicom.net import NODELAY_HANDLERS

#: Verification SOP Class, for C-ECHO.
VERIFICATION = "1.2.840.10008.1.1"

LOGGER = logging.getLogger(__name__)


class StorageSCP:
    """A C-STORE SCP in a background thread.

    Parameters
    ----------
    ae_title
        Its own (called) AE title.
    folder
        Where received instances are written.
    allowed_callers
        Calling AE titles it accepts; others are rejected. It must not be
        empty, because pynetdicom takes an empty list as "accept any caller".
    status_for
        Returns the C-STORE status to send for a SOP Instance UID; tests
        use it to play a destination that warns or fails. Default: success.
    delay
        Seconds to wait before each response, to play a slow destination.
    transfer_syntaxes
        Transfer syntaxes it accepts; by default every one that pynetdicom supports.
    port
        TCP port on 127.0.0.1; 0 takes a free one.
    """

    def __init__(self, ae_title: str, folder: Path, allowed_callers: list[str],
                 status_for: Callable[[str], int] | None = None, delay: float = 0.0,
                 transfer_syntaxes: list[str] | None = None, port: int = 0) -> None:
        if not allowed_callers:
            raise ValueError(f"storage SCP {ae_title} needs at least one calling AE title to accept")
        self.ae_title = ae_title
        self.folder = folder
        self.status_for = status_for
        self.delay = delay
        #: Every SOP Instance UID in the order it arrived, repeats included.
        self.arrivals: list[str] = []
        #: Connections open now, and the most open at once.
        self.connections = 0
        self.max_connections = 0
        self.received: dict[str, str] = {}  # SOP Instance UID -> transfer syntax
        self._lock = threading.Lock()
        self._ae = AE(ae_title=ae_title)
        self._ae.require_called_aet = True
        self._ae.require_calling_aet = allowed_callers
        self._ae.add_supported_context(VERIFICATION)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            self._ae.add_supported_context(context.abstract_syntax,
                                           transfer_syntaxes or ALL_TRANSFER_SYNTAXES)
        self._server: ThreadedAssociationServer | None = None
        self.port = port

    def start(self) -> StorageSCP:
        self.folder.mkdir(parents=True, exist_ok=True)
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_CONN_CLOSE, self._on_close), *NODELAY_HANDLERS]
        server = self._ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        assert server is not None  # block=False always returns the server
        self._server = server
        self.port = server.server_address[1]
        return self

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_open(self, event: evt.Event) -> None:
        with self._lock:
            self.connections += 1
            self.max_connections = max(self.max_connections, self.connections)

    def _on_close(self, event: evt.Event) -> None:
        with self._lock:
            self.connections -= 1

    def _on_store(self, event: evt.Event) -> int:
        # The request's own bytes, written as a Part 10 file without decoding.
        request = event.request
        assert isinstance(request, C_STORE)
        uid = str(request.AffectedSOPInstanceUID)
        if self.delay:
            time.sleep(self.delay)
        status = self.status_for(uid) if self.status_for else 0x0000
        with self._lock:
            self.arrivals.append(uid)
        if status >= 0xA000 and not 0xB000 <= status <= 0xBFFF:
            return status  # a failure: the instance is not stored
        (self.folder / f"{uid}.dcm").write_bytes(event.encoded_dataset(include_meta=True))
        with self._lock:
            self.received[uid] = str(event.context.transfer_syntax)
        return status
