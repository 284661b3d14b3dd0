"""The ``tls`` table of a destination: validation on load and the checks of ``migrator config check``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.errors import ConfigError
from tests.security.tls_support import CertificateAuthority, TLSStoreSCP
from tests.support import CALLING_AE

BASE_CONFIG = """\
[state]
url = "sqlite:///{folder}/state.sqlite3"

[legacy]
url = "sqlite:///{folder}/legacy.sqlite3"
query = "SELECT sop AS SOPInstanceUID FROM instances WHERE sop IN :uids"

[[roots]]
name = "root1"
path = "{folder}"

[run]
ae_title = "{calling_ae}"
"""


def _write_config(folder: Path, destinations: str) -> Path:
    config = folder / "migrator.toml"
    config.write_text(BASE_CONFIG.format(folder=folder, calling_ae=CALLING_AE) + destinations, encoding="utf-8")
    return config


def _destination(name: str, port: int, tls: str = "", extra: str = "") -> str:
    section = "sinbin" if name == "sinbin" else f"destinations.{name}"
    text = f'\n[{section}]\nae_title = "{name.upper()}"\nhost = "127.0.0.1"\nport = {port}\n{extra}'
    if tls:
        text += f"\n[{section}.tls]\n{tls}"
    return text


@pytest.mark.parametrize(("tls", "extra", "message"), [
    ('ca_file = "/etc/migrator/ca.pem"', 'engine = "dcmsend"\n',
     "destinations.main.tls: engine = \"dcmsend\" cannot use TLS, because DCMTK 3.6.7's dcmsend has no TLS "
     "options; set engine = \"pynetdicom\" for this destination or remove its tls table"),
    ('ca_file = "ca.pem"', "",
     "destinations.main.tls.ca_file: must be an absolute path, such as /etc/migrator/tls/ca.pem (got 'ca.pem')"),
    ('ca_file = "/etc/migrator/ca.pem"\nkey_file = "/etc/migrator/client.key"', "",
     "destinations.main.tls: key_file is set without cert_file; set cert_file to the client certificate "
     "that belongs to the key"),
])
def test_invalid_tls_table_rejected(tmp_path: Path, tls: str, extra: str, message: str) -> None:
    """Loading the configuration fails with the key, the reason and the fix."""
    config = _write_config(tmp_path, _destination("main", 104, tls, extra) + _destination("sinbin", 105))
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert message in str(raised.value)


def test_dcmsend_without_tls_loads(tmp_path: Path) -> None:
    """engine = "dcmsend" stays valid on a destination without a tls table."""
    config = _write_config(tmp_path, _destination("main", 104, extra='engine = "dcmsend"\n')
                           + _destination("sinbin", 105, 'ca_file = "/etc/migrator/ca.pem"'))
    settings = load_settings(config)
    assert settings.destinations["main"].tls is None
    assert settings.sinbin.tls is not None
    assert settings.sinbin.tls.check_hostname is True


@pytest.fixture
def sinbin_scp(tmp_path: Path) -> Iterator[StorageSCP]:
    with StorageSCP("SINBIN", tmp_path / "sinbin", [CALLING_AE]) as scp:
        yield scp


def test_config_check_reports_tls_files(tmp_path: Path, sinbin_scp: StorageSCP) -> None:
    """config check sends C-ECHO over TLS and names each missing or invalid file with the fix."""
    ca = CertificateAuthority(tmp_path / "ca", "check")
    server = ca.issue("storescp")
    elsewhere = ca.issue("elsewhere", names="DNS:pacs.example.org")
    client = ca.issue("migrator", usage="clientAuth", names="DNS:migrator")
    other = ca.issue("other", usage="clientAuth", names="DNS:other")
    rogue = CertificateAuthority(tmp_path / "ca", "rogue").issue("migrator", usage="clientAuth",
                                                                   names="DNS:migrator")
    encrypted = tmp_path / "ca" / "encrypted.key"
    subprocess.run(["openssl", "ec", "-in", str(client.key), "-aes256", "-passout", "pass:unknown",
                    "-out", str(encrypted)], check=True, capture_output=True)
    missing = tmp_path / "ca" / "missing.pem"
    plain_port = sinbin_scp.port

    # "named" has a certificate for another host name and requires a client certificate.
    with TLSStoreSCP(tmp_path / "storescp", server, client) as dcmtk, \
            TLSStoreSCP(tmp_path / "elsewhere", elsewhere, client, client_ca=ca.cert) as named:
        nameless = f'ca_file = "{ca.cert}"\ncheck_hostname = false\n'
        destinations = {
            "good": (dcmtk.port, f'ca_file = "{ca.cert}"'),
            "wrongname": (named.port, f'ca_file = "{ca.cert}"'),
            "nameless": (named.port, nameless + f'cert_file = "{client.cert}"\nkey_file = "{client.key}"'),
            "noclient": (named.port, nameless),
            "rogueclient": (named.port, nameless + f'cert_file = "{rogue.cert}"\nkey_file = "{rogue.key}"'),
            "missingca": (dcmtk.port, f'ca_file = "{missing}"'),
            "notpem": (dcmtk.port, f'ca_file = "{client.key}"'),
            "mismatch": (dcmtk.port, f'ca_file = "{ca.cert}"\ncert_file = "{client.cert}"\n'
                                     f'key_file = "{other.key}"'),
            "encrypted": (dcmtk.port, f'ca_file = "{ca.cert}"\ncert_file = "{client.cert}"\n'
                                      f'key_file = "{encrypted}"'),
            "plainport": (plain_port, f'ca_file = "{ca.cert}"'),
        }
        text = "".join(_destination(name, port, tls) for name, (port, tls) in destinations.items())
        config = _write_config(tmp_path, text + _destination("sinbin", plain_port))
        result = subprocess.run([sys.executable, "-m", "migrator", "config", "check", "--config", str(config)],
                                capture_output=True, text=True, timeout=120)

    # Each line reads "ok     C-ECHO NAME (AE@host:port)" or "failed C-ECHO NAME (AE@host:port): reason".
    lines = {line.split(": ", 1)[0].split(" (")[0].strip(): line for line in result.stdout.splitlines()}
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines["ok     C-ECHO good"]
    assert lines["ok     C-ECHO nameless"]
    assert lines["ok     C-ECHO sinbin"]
    assert lines["failed C-ECHO wrongname"].endswith(
        "presented a TLS certificate that is not valid for 127.0.0.1 (IP address mismatch, certificate is not "
        "valid for '127.0.0.1'.); connect by a name or address that the certificate contains, or set "
        "tls.check_hostname = false")
    assert lines["failed C-ECHO noclient"].endswith(
        "requires a TLS client certificate (TLS alert: TLSV13_ALERT_CERTIFICATE_REQUIRED); set "
        "tls.cert_file and tls.key_file to a certificate that the destination trusts")
    assert lines["failed C-ECHO rogueclient"].endswith(
        f"rejected our TLS client certificate {rogue.cert} (TLS alert: TLSV1_ALERT_UNKNOWN_CA); check that "
        "the destination trusts the CA that signed it")
    assert lines["failed C-ECHO missingca"].endswith(
        f"destinations.missingca.tls.ca_file: {missing} not found; copy the PEM file there on every machine "
        "that sends to this destination, or correct the path")
    assert lines["failed C-ECHO notpem"].endswith(
        f"destinations.notpem.tls.ca_file: {client.key} contains no usable PEM certificate "
        "(NO_CERTIFICATE_OR_CRL_FOUND); give the PEM file of the CA that signs the destination's certificate")
    assert lines["failed C-ECHO mismatch"].endswith(
        f"destinations.mismatch.tls: cannot load the client certificate {client.cert} with the private key in "
        f"{other.key} (KEY_VALUES_MISMATCH); check that both are PEM and that the key belongs to the certificate")
    assert lines["failed C-ECHO encrypted"].endswith(
        f"destinations.encrypted.tls.key_file: {encrypted} is encrypted, and the migrator cannot ask for its "
        "password; store the key without encryption, readable only by the user running the migrator")
    assert "failed the TLS handshake" in lines["failed C-ECHO plainport"]
    assert f"check that port {plain_port} accepts DICOM over TLS" in lines["failed C-ECHO plainport"]


def test_deploy_example_tls_table_loads(tmp_path: Path) -> None:
    """The commented tls table of deploy/migrator.toml.example is valid once uncommented."""
    example = Path(__file__).resolve().parents[2] / "deploy" / "migrator.toml.example"
    lines = example.read_text(encoding="utf-8").splitlines()
    start = lines.index("#[destinations.main.tls]")
    uncommented = lines[:start] + [line.removeprefix("#") for line in lines[start:start + 4]] + lines[start + 4:]
    config = tmp_path / "migrator.toml"
    config.write_text("\n".join(uncommented) + "\n", encoding="utf-8")
    tls = load_settings(config).destinations["main"].tls
    assert tls is not None
    assert tls.ca_file == Path("/etc/migrator/tls/newpacs-ca.pem")
    assert tls.cert_file == Path("/etc/migrator/tls/migrator.pem")
    assert tls.key_file == Path("/etc/migrator/tls/migrator.key")
    assert tls.check_hostname is True
