"""Association helpers shared by every SCU and SCP the migrator runs.

TCP_NODELAY, a guard against pynetdicom's lost responses, and DICOM TLS.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.events import EventHandlerType

from migrator.config import SINBIN, DestinationConfig, TLSConfig
from migrator.errors import ConfigError

LOGGER = logging.getLogger(__name__)

#: Seconds the TLS probe waits after the handshake for an alert from the
#: destination. With TLS 1.3 a server checks the client certificate after
#: the client has finished the handshake, so a missing or untrusted one is
#: reported by an alert that only the first read receives.
ALERT_WAIT_SECONDS = 1.0

#: OpenSSL alert reasons with which a server rejects the client certificate.
_CLIENT_CERTIFICATE_ALERTS = ("ALERT_UNKNOWN_CA", "ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_UNKNOWN",
                              "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED",
                              "ALERT_UNSUPPORTED_CERTIFICATE", "ALERT_ACCESS_DENIED")


#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)


def _set_tcp_nodelay(event: evt.Event) -> None:
    # Nagle's algorithm delays each small PDU until the peer's delayed
    # ACK arrives (tens of milliseconds on Linux loopback), which limits a
    # C-STORE loop to about 15-20 images/s. pynetdicom 3.0 leaves it on.
    # With TLS the socket is an ssl.SSLSocket, which takes the option too.
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _keep_responses(event: evt.Event) -> None:
    """Give a response that pynetdicom's reactor thread took back to the request that waits for it.

    In pynetdicom 3.0.4, ``send_c_store`` and the other ``send_*`` methods
    pause the association's reactor thread before they send, but the pause
    can miss a reactor that has just passed its checkpoint. That thread then
    takes the response off the DIMSE queue, logs "Received unexpected ...
    service message" and drops it, and the request waits until the DIMSE
    timeout. A fast peer makes this likely: one C-STORE in a few thousand
    into storescp with TCP_NODELAY. Only responses are put back; requests
    are served as before.
    """
    assoc = event.assoc
    serve = assoc._serve_request

    def serve_or_return(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and msg.is_valid_response:
            LOGGER.debug("pynetdicom's reactor took a %s; it goes back to the waiting request",
                         msg.msg_type)
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_return  # type: ignore[method-assign]


#: Pass to ``AE.associate`` or ``AE.start_server`` as ``evt_handlers``:
#: TCP_NODELAY, and no response lost to pynetdicom's reactor thread.
NODELAY_HANDLERS: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, _set_tcp_nodelay),
                                            (evt.EVT_CONN_OPEN, _keep_responses)]


def _section(name: str) -> str:
    return f"{name}.tls" if name == SINBIN else f"destinations.{name}.tls"


def _check_readable(section: str, key: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"{section}.{key}: {path} not found; copy the PEM file there on every "
                          "machine that sends to this destination, or correct the path")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{section}.{key}: cannot read {path} ({exc.strerror or exc}); make it a "
                          "file that the user running the migrator can read") from None


def _reject_key_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, and a worker
    # process has none.
    raise _EncryptedKey


class _EncryptedKey(Exception):
    """Raised from OpenSSL's password callback for an encrypted private key."""


def _context(tls: TLSConfig, section: str) -> ssl.SSLContext:
    """Build the client context: TLS 1.2 or newer, the peer verified against ca_file."""
    _check_readable(section, "ca_file", tls.ca_file)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"{section}.ca_file: {tls.ca_file} contains no usable PEM certificate "
                          f"({exc.reason or exc}); give the PEM file of the CA that signs the "
                          "destination's certificate") from None
    # Python 3.11's default minimum is TLS 1.2 too. Setting it keeps the floor
    # when another Python version has another default.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.check_hostname
    if tls.cert_file is not None:
        _check_readable(section, "cert_file", tls.cert_file)
        if tls.key_file is not None:
            _check_readable(section, "key_file", tls.key_file)
        key_file = tls.key_file or tls.cert_file
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_reject_key_password)
        except _EncryptedKey:
            raise ConfigError(f"{section}.key_file: {key_file} is encrypted, and the migrator cannot "
                              "ask for its password; store the key without encryption, readable only "
                              "by the user running the migrator") from None
        except ssl.SSLError as exc:
            raise ConfigError(f"{section}: cannot load the client certificate {tls.cert_file} with the "
                              f"private key in {key_file} ({exc.reason or exc}); check that both are "
                              "PEM and that the key belongs to the certificate") from None
    return context


def client_tls(name: str, destination: DestinationConfig) -> tuple[ssl.SSLContext, str] | None:
    """Build the ``tls_args`` of ``AE.associate`` for ``destination``, or return None without TLS.

    The files are read on every call, so a renewed certificate takes effect
    with the next association.

    Raises
    ------
    ConfigError
        A file of the destination's ``tls`` table is missing, unreadable or invalid.
    """
    if destination.tls is None:
        return None
    return _context(destination.tls, _section(name)), destination.host


def tls_problem(destination: DestinationConfig) -> str | None:
    """Open a TLS connection to ``destination`` and describe why it fails, or return None.

    Returns None without TLS, when the TCP connection fails (the caller
    reports that), and when the handshake succeeds and no alert follows.
    """
    tls = destination.tls
    if tls is None:
        return None
    context = _context(tls, "tls")
    timeout = min(destination.acse_timeout, 10)
    handshake_done = False
    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=destination.host) as connection:
            handshake_done = True
            connection.settimeout(min(timeout, ALERT_WAIT_SECONDS))
            connection.recv(1)
    except ssl.SSLCertVerificationError as exc:
        return _describe_verification_error(destination, tls, exc)
    except ssl.SSLError as exc:
        return _describe_ssl_error(destination, tls, exc)
    except TimeoutError:
        if handshake_done:
            return None  # no alert arrived: the handshake and our certificate were accepted
        return (f"did not complete a TLS handshake within {timeout:g} s; check that port "
                f"{destination.port} accepts DICOM over TLS")
    except OSError:
        return None
    return None


def _describe_verification_error(destination: DestinationConfig, tls: TLSConfig,
                          exc: ssl.SSLCertVerificationError) -> str:
    message = str(exc.verify_message or exc.reason or exc)
    if exc.verify_code in _NAME_MISMATCH:
        return (f"presented a TLS certificate that is not valid for {destination.host} ({message}); "
                "connect by a name or address that the certificate contains, or set "
                "tls.check_hostname = false")
    return (f"presented a TLS certificate that failed verification ({message}); check that "
            f"tls.ca_file {tls.ca_file} contains the CA that signed the destination's certificate")


def _describe_ssl_error(destination: DestinationConfig, tls: TLSConfig, exc: ssl.SSLError) -> str:
    reason = str(exc.reason or exc)
    if "CERTIFICATE_REQUIRED" in reason or (tls.cert_file is None and any(
            alert in reason for alert in _CLIENT_CERTIFICATE_ALERTS)):
        return (f"requires a TLS client certificate (TLS alert: {reason}); set tls.cert_file and "
                "tls.key_file to a certificate that the destination trusts")
    if any(alert in reason for alert in _CLIENT_CERTIFICATE_ALERTS):
        return (f"rejected our TLS client certificate {tls.cert_file} (TLS alert: {reason}); check "
                "that the destination trusts the CA that signed it")
    return (f"failed the TLS handshake ({reason}); check that port {destination.port} accepts "
            "DICOM over TLS")
