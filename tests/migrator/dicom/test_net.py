"""A C-STORE response taken by pynetdicom's reactor thread goes back to the request waiting for it.

pynetdicom 3.0.4 can let its reactor thread take a response off the DIMSE
queue, which it then drops; the request waits for the DIMSE timeout. The
race needs thousands of C-STOREs to show, so these tests hand a response
to the reactor's own ``_serve_request`` on a real association to storescp,
which is what the reactor does when it wins the race.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from migrator.dicom.net import NODELAY_HANDLERS
from tests.peers import HOST, StoreSCP

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path_factory.mktemp("storescp")) as peer:
        yield peer


def _associate(peer: StoreSCP, handlers: list | None) -> Association:  # type: ignore[type-arg]
    ae = AE(ae_title="NETTEST")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, peer.port, ae_title=peer.ae_title, evt_handlers=handlers or [])
    assert assoc.is_established
    return assoc


def _response() -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = CT_IMAGE_STORAGE
    response.AffectedSOPInstanceUID = "1.2.3.4"
    response.Status = 0x0000
    return response


def test_reactor_response_returns_to_queue(storescp: StoreSCP) -> None:
    assoc = _associate(storescp, NODELAY_HANDLERS)
    try:
        context_id = int(assoc.accepted_contexts[0].context_id or 0)
        assoc._serve_request(_response(), context_id)
        taken_id, message = assoc.dimse.get_msg(block=False)
    finally:
        assoc.release()
    assert taken_id == context_id
    assert isinstance(message, C_STORE)
    assert message.MessageIDBeingRespondedTo == 7


def test_plain_pynetdicom_drops_reactor_response(storescp: StoreSCP) -> None:
    """Without the handler the response is gone: what made C-STOREs wait for the timeout."""
    assoc = _associate(storescp, None)
    try:
        assoc._serve_request(_response(), int(assoc.accepted_contexts[0].context_id or 0))
        taken = assoc.dimse.get_msg(block=False)
    finally:
        assoc.release()
    assert taken == (None, None)
