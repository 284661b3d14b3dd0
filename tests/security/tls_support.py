"""Throw-away certificate authorities and DICOM TLS peers for the tests.

Certificates are made with the ``openssl`` command line tool (OpenSSL 3),
with P-256 keys, valid for two days. A server certificate names
``localhost`` and 127.0.0.1, where every peer listens.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers import (
    HOST,
    PEER_ENVIRONMENT,
    START_TIMEOUT_SECONDS,
    OrthancPeer,
    StoreSCP,
)

_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {names}
"""


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr}")


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate and its unencrypted PEM private key."""

    cert: Path
    key: Path


class CertificateAuthority:
    """A self-signed CA in ``folder`` that issues server and client certificates."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        self.cert = folder / f"{name}-ca.pem"
        self.key = folder / f"{name}-ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                 "-subj", f"/CN=pacs-migrator test CA {name}")

    def issue(self, common_name: str, usage: str = "serverAuth",
              names: str = f"DNS:localhost, IP:{HOST}") -> Certificate:
        """Issue a certificate for ``usage`` ("serverAuth" or "clientAuth") with subjectAltName ``names``."""
        stem = self.folder / f"{self.name}-{common_name}"
        key, request, cert = stem.with_suffix(".key"), stem.with_suffix(".csr"), stem.with_suffix(".pem")
        extensions = stem.with_suffix(".ext")
        extensions.write_text(_LEAF_EXTENSIONS.format(usage=usage, names=names))
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(request), "-subj", f"/CN={common_name}")
        _openssl("x509", "-req", "-in", str(request), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions))
        return Certificate(cert, key)


class TLSStoreSCP(StoreSCP):
    """DCMTK storescp that accepts DICOM over TLS only.

    ``client_ca`` set: storescp requires a client certificate signed by that
    CA (``--require-peer-cert``). Unset: it requests none (``--ignore-peer-cert``).
    """

    name = "storescp-tls"

    def __init__(self, work_dir: Path, server: Certificate, probe: Certificate,
                 client_ca: Path | None = None, ae_title: str = "STORESCP") -> None:
        super().__init__(work_dir, ae_title)
        self.server = server
        #: The certificate of the readiness probe, signed by ``client_ca`` when that is set.
        self.probe = probe
        self.client_ca = client_ca

    def start(self) -> TLSStoreSCP:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        peer = ["--require-peer-cert", "--add-cert-file", str(self.client_ca)] if self.client_ca \
            else ["--ignore-peer-cert"]
        self._launch(["storescp", "--verbose", "--aetitle", self.ae_title, "--accept-all", "--promiscuous",
                      "--bit-preserving", "--output-directory", str(self.output_dir), "--default-filenames",
                      "--filename-extension", ".dcm",
                      "--enable-tls", str(self.server.key), str(self.server.cert), *peer, str(self.port)])
        try:
            self._wait_for_echo()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_echo(self) -> None:
        # echoscu ignores the server certificate here: the tests check it.
        command = ["echoscu", "--aetitle", "READINESS-PROBE", "--call", self.ae_title, "--timeout", "2",
                   "--acse-timeout", "2", "--enable-tls", str(self.probe.key), str(self.probe.cert),
                   "--ignore-peer-cert", HOST, str(self.port)]
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._raise_if_exited()
            probe = subprocess.run(command, env={**os.environ, **PEER_ENVIRONMENT}, stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=10)
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        self._raise_start_timeout(f"a C-ECHO over TLS to {self.ae_title} at {HOST}:{self.port}")

    def __enter__(self) -> TLSStoreSCP:
        return self.start()


class TLSOrthanc(OrthancPeer):
    """Orthanc 1.10 that accepts DICOM over TLS only, without requiring a client certificate.

    It sends Storage Commitment reports without TLS, on an association of
    its own, to ``report_port`` on 127.0.0.1.
    """

    def __init__(self, work_dir: Path, server: Certificate, ca: Path, *args: Any, report_port: int,
                 **kwargs: Any) -> None:
        super().__init__(work_dir, *args, **kwargs)
        self.server = server
        self.ca = ca
        self.report_port = report_port

    def build_config(self) -> dict[str, Any]:
        config = super().build_config()
        for modality in config["DicomModalities"].values():
            modality["Port"] = self.report_port
        config.update({
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.server.cert),
            "DicomTlsPrivateKey": str(self.server.key),
            "DicomTlsTrustedCertificates": str(self.ca),
            "DicomTlsRemoteCertificateRequired": False,
        })
        return config

    def __enter__(self) -> TLSOrthanc:
        self.start()
        return self


def add_tls(config: Path, destination: str, ca_file: Path, client: Certificate | None = None) -> None:
    """Append a ``tls`` table for ``destination`` ("main", "nonpixel" or "sinbin") to ``config``."""
    section = "sinbin.tls" if destination == "sinbin" else f"destinations.{destination}.tls"
    lines = ["", f"[{section}]", f'ca_file = "{ca_file}"']
    if client is not None:
        lines += [f'cert_file = "{client.cert}"', f'key_file = "{client.key}"']
    with config.open("a", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
