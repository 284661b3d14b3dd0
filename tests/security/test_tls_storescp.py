"""Migrations over DICOM TLS into DCMTK's storescp ``+tls``, with SQLite state."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from migrator.config import DestinationConfig, TLSConfig, load_settings
from migrator.demo.scp import StorageSCP
from migrator.dicom.send import StoreSession
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.security.tls_support import (
    Certificate,
    CertificateAuthority,
    TLSStoreSCP,
    add_tls,
)
from tests.support import CALLING_AE, Migration, prepare_migration

#: Recorded outcome of each expected destination of the demo archive when every peer accepts.
OUTCOME_OF = {"main": "sent", "nonpixel": "sent", "sinbin": "sinbinned", "unreadable": "unreadable"}


@dataclass(frozen=True)
class Authorities:
    """The CA that the migrator trusts, a CA that it does not, and their certificates."""

    trusted: CertificateAuthority
    server: Certificate
    client: Certificate
    rogue_server: Certificate


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> Authorities:
    folder = tmp_path_factory.mktemp("tls")
    trusted = CertificateAuthority(folder, "trusted")
    rogue = CertificateAuthority(folder, "rogue")
    return Authorities(trusted, trusted.issue("storescp"),
                       trusted.issue("migrator", usage="clientAuth", names="DNS:migrator"),
                       rogue.issue("storescp"))


@pytest.fixture
def plain_scps(tmp_path: Path) -> Iterator[dict[str, StorageSCP]]:
    """Non-pixel and sin bin SCPs without TLS."""
    scps = {name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE]).start()
            for name in ("nonpixel", "sinbin")}
    yield scps
    for scp in scps.values():
        scp.stop()


def _migrate(tmp_path: Path, sqlite_url: str, endpoints: dict[str, tuple[str, int]], ca_file: Path,
             tls: dict[str, Certificate | None]) -> Migration:
    """Plan and run the demo archive with TLS to each destination in ``tls``, with its client certificate."""
    migration = prepare_migration(tmp_path, sqlite_url, endpoints, processes=1)
    config = tmp_path / "migrator.toml"
    for destination, client in tls.items():
        add_tls(config, destination, ca_file, client)
    migration.settings = load_settings(config)
    plan(migration.settings, migration.sessions)
    run_embedded(migration.settings, migration.sessions)
    return migration


def _received(scp: TLSStoreSCP) -> dict[str, str]:
    """SOP Instance UID -> transfer syntax of every file that storescp wrote."""
    received = {}
    for path in scp.received():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        received[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
    return received


def _expected_outcomes(migration: Migration, outcome_of: dict[str, str]) -> dict[tuple[str, str], str]:
    return {(e.root, e.rel_path): outcome_of[e.destination] for e in migration.archive.expected}


def test_migration_over_tls(tmp_path: Path, sqlite_url: str, authorities: Authorities,
                            plain_scps: dict[str, StorageSCP]) -> None:
    """Main and non-pixel objects reach storescp over TLS in their stored transfer syntax."""
    with TLSStoreSCP(tmp_path / "storescp", authorities.server, authorities.client) as dcmtk:
        migration = _migrate(
            tmp_path, sqlite_url,
            {"main": ("STORESCP", dcmtk.port), "nonpixel": ("STORESCP", dcmtk.port),
             "sinbin": ("SINBIN", plain_scps["sinbin"].port)},
            authorities.trusted.cert, {"main": None, "nonpixel": None})
        received = _received(dcmtk)
    sent = migration.expected("main") + migration.expected("nonpixel")
    assert set(received) == {e.sop_instance_uid for e in sent}
    for expected in sent:
        assert received[expected.sop_instance_uid] == expected.transfer_syntax, expected.rel_path
    assert migration.outcomes() == _expected_outcomes(migration, OUTCOME_OF)
    assert set(plain_scps["sinbin"].received) == {e.sop_instance_uid for e in migration.expected("sinbin")}


def test_untrusted_server_certificate(tmp_path: Path, sqlite_url: str, authorities: Authorities,
                                      plain_scps: dict[str, StorageSCP]) -> None:
    """A server certificate from another CA fails main's instances with the reason; nothing reaches storescp."""
    with TLSStoreSCP(tmp_path / "storescp", authorities.rogue_server, authorities.client) as dcmtk:
        migration = _migrate(
            tmp_path, sqlite_url,
            {"main": ("STORESCP", dcmtk.port), "nonpixel": ("NONPIXEL", plain_scps["nonpixel"].port),
             "sinbin": ("SINBIN", plain_scps["sinbin"].port)},
            authorities.trusted.cert, {"main": None})
        assert dcmtk.received() == []
    assert migration.outcomes() == _expected_outcomes(migration, {**OUTCOME_OF, "main": "failed"})
    for expected in migration.expected("main"):
        entries = migration.audit_of(expected)
        assert [entry.outcome for entry in entries] == ["failed"]
        assert entries[0].reason == (
            f"destination main (STORESCP@127.0.0.1:{dcmtk.port}) presented a TLS certificate that failed "
            "verification (unable to get local issuer certificate); check that tls.ca_file "
            f"{authorities.trusted.cert} contains the CA that signed the destination's certificate")
        assert entries[0].transient is True
        assert entries[0].dimse_status is None
    assert set(plain_scps["nonpixel"].received) == {e.sop_instance_uid for e in migration.expected("nonpixel")}


def test_client_certificate_required(tmp_path: Path, sqlite_url: str, authorities: Authorities,
                                     plain_scps: dict[str, StorageSCP]) -> None:
    """storescp --require-peer-cert accepts the migrator's cert_file and key_file."""
    with TLSStoreSCP(tmp_path / "storescp", authorities.server, authorities.client,
                     client_ca=authorities.trusted.cert) as dcmtk:
        migration = _migrate(
            tmp_path, sqlite_url,
            {"main": ("STORESCP", dcmtk.port), "nonpixel": ("NONPIXEL", plain_scps["nonpixel"].port),
             "sinbin": ("SINBIN", plain_scps["sinbin"].port)},
            authorities.trusted.cert, {"main": authorities.client})
        received = _received(dcmtk)
    assert set(received) == {e.sop_instance_uid for e in migration.expected("main")}
    assert migration.outcomes() == _expected_outcomes(migration, OUTCOME_OF)


def test_client_certificate_missing(tmp_path: Path, sqlite_url: str, authorities: Authorities,
                                    plain_scps: dict[str, StorageSCP]) -> None:
    """Without cert_file, storescp --require-peer-cert ends the association, and the reason names the keys to set."""
    with TLSStoreSCP(tmp_path / "storescp", authorities.server, authorities.client,
                     client_ca=authorities.trusted.cert) as dcmtk:
        migration = _migrate(
            tmp_path, sqlite_url,
            {"main": ("STORESCP", dcmtk.port), "nonpixel": ("NONPIXEL", plain_scps["nonpixel"].port),
             "sinbin": ("SINBIN", plain_scps["sinbin"].port)},
            authorities.trusted.cert, {"main": None})
        assert dcmtk.received() == []
    assert migration.outcomes() == _expected_outcomes(migration, {**OUTCOME_OF, "main": "failed"})
    reasons = {entry.reason for expected in migration.expected("main") for entry in migration.audit_of(expected)}
    assert reasons == {
        f"destination main (STORESCP@127.0.0.1:{dcmtk.port}) requires a TLS client certificate (TLS alert: "
        "TLSV13_ALERT_CERTIFICATE_REQUIRED); set tls.cert_file and tls.key_file to a certificate that "
        "the destination trusts"}


def test_tls_association_keeps_tcp_nodelay(tmp_path: Path, authorities: Authorities) -> None:
    """The socket under the TLS layer has Nagle's algorithm off."""
    with TLSStoreSCP(tmp_path / "storescp", authorities.server, authorities.client) as dcmtk:
        destination = DestinationConfig(ae_title="STORESCP", host="127.0.0.1", port=dcmtk.port,
                                        tls=TLSConfig(ca_file=authorities.trusted.cert))
        pair = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        with StoreSession(CALLING_AE, "main", destination, [pair]) as session:
            assert session.accepts(*pair)
            # The session keeps its association private; the socket is only read here.
            assoc = session._assoc
            assert assoc is not None
            assert assoc.dul.socket is not None
            sock = assoc.dul.socket.socket
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
