"""Association failures name their cause: nothing listening, or a rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrator.config import DestinationConfig
from migrator.demo.scp import StorageSCP
from migrator.dicom.send import echo
from migrator.errors import DestinationError
from tests.peers import free_port


def _destination(port: int, ae_title: str = "PACS") -> DestinationConfig:
    return DestinationConfig(ae_title=ae_title, host="127.0.0.1", port=port, acse_timeout=5)


def test_echo_succeeds(tmp_path: Path) -> None:
    """A C-ECHO to a running SCP that accepts our AE title succeeds."""
    scp = StorageSCP("PACS", tmp_path, ["MIGRATOR"]).start()
    try:
        echo("MIGRATOR", "main", _destination(scp.port))
    finally:
        scp.stop()


def test_closed_port_is_refused() -> None:
    """With nothing listening, the error reports a refused connection."""
    with pytest.raises(DestinationError, match="refused the connection: nothing is listening"):
        echo("MIGRATOR", "main", _destination(free_port()))


def test_unknown_calling_ae_is_rejected(tmp_path: Path) -> None:
    """An SCP that does not accept our AE title rejects the association, and the error names it."""
    scp = StorageSCP("PACS", tmp_path, ["SOMEONE"]).start()
    try:
        with pytest.raises(DestinationError, match="rejected the association.*calling AE title MIGRATOR"):
            echo("MIGRATOR", "main", _destination(scp.port))
    finally:
        scp.stop()
