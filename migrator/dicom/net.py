"""Association helpers shared by every SCU and SCP the migrator runs."""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt
from pynetdicom.events import EventHandlerType

LOGGER = logging.getLogger(__name__)


def _set_tcp_nodelay(event: evt.Event) -> None:
    # Nagle's algorithm delays each small PDU until the peer's delayed
    # ACK arrives (tens of milliseconds on Linux loopback), which limits a
    # C-STORE loop to about 15-20 images/s. pynetdicom 3.0 leaves it on.
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Pass to ``AE.associate`` or ``AE.start_server`` as ``evt_handlers``.
NODELAY_HANDLERS: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, _set_tcp_nodelay)]
