"""Start real third-party DICOM peers (Orthanc and DCMTK storescp) for tests.

Both peers run as child processes on free ports and are stopped by PID.
Clients reach them at 127.0.0.1 only, but Orthanc 1.10 and storescp 3.6.7
have no option to choose a listen address, so their sockets are bound to
all interfaces. Orthanc is configured to accept DICOM only from the calling
AE titles it is given (at 127.0.0.1) and HTTP only from the loopback
interface with a per-run password. storescp accepts any caller.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest
import requests

HOST = "127.0.0.1"
ORTHANC_EXECUTABLE = "/usr/sbin/Orthanc"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
HTTP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 40

# Every peer process and probe runs with this set: DCMTK (storescp, echoscu
# and the DICOM server inside Orthanc) then disables Nagle's algorithm.
PEER_ENVIRONMENT = {"TCP_NODELAY": "1"}

# Any transfer syntax UID under the DICOM root 1.2.840.10008.1, which covers
# every standard transfer syntax including JPEG 2000 (.4.90 and .4.91).
ALL_TRANSFER_SYNTAXES = "1.2.840.10008.1.*"


class PeerStartError(RuntimeError):
    """Error raised when a peer process exits or does not respond in time during startup."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when this function ran.

    The port is released before returning, so another process may take it
    before the peer binds it. The peer then fails to start with an error
    that contains its log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def validate_ae_title(ae_title: str) -> str:
    """Check an AE title and return it unchanged, or raise ValueError.

    A valid AE title has 1 to 16 printable ASCII characters, no backslash,
    and is not only spaces (DICOM PS3.5, value representation AE).
    """
    if not 1 <= len(ae_title) <= 16:
        raise ValueError(f"AE title {ae_title!r} must have 1 to 16 characters")
    if not ae_title.isascii() or not ae_title.isprintable() or "\\" in ae_title:
        raise ValueError(
            f"AE title {ae_title!r} contains a character that is not allowed: "
            "use printable ASCII without backslash"
        )
    if not ae_title.strip():
        raise ValueError("AE title must not consist of spaces only")
    return ae_title


def read_log_tail(log_path: Path, line_count: int = LOG_TAIL_LINES) -> str:
    """Return the last line_count lines of a log file, or a note if it is missing."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(log file {log_path} does not exist)"
    return "\n".join(lines[-line_count:])


class PeerProcess:
    """Child process of a peer, with its log file and PID-based stop."""

    name = "peer"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.log_path = self.work_dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _launch(self, command: list[str]) -> None:
        if self.process is not None:
            raise RuntimeError(f"{self.name} is already started with PID {self.pid}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=self.work_dir,
            env={**os.environ, **PEER_ENVIRONMENT},
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def _raise_if_exited(self) -> None:
        assert self.process is not None
        exit_code = self.process.poll()
        if exit_code is not None:
            raise PeerStartError(
                f"{self.name} (PID {self.process.pid}) exited with code {exit_code} "
                f"during startup. Last lines of {self.log_path}:\n"
                f"{read_log_tail(self.log_path)}"
            )

    def _raise_start_timeout(self, awaited_event: str) -> None:
        raise PeerStartError(
            f"{self.name} (PID {self.pid}) timed out after {START_TIMEOUT_SECONDS} s "
            f"waiting for {awaited_event}. Last lines of {self.log_path}:\n"
            f"{read_log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Terminate the process by PID and wait for it to exit.

        The process gets SIGTERM first and SIGKILL if it is still running
        after STOP_TIMEOUT_SECONDS. Calling stop() again does nothing.
        """
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class OrthancPeer(PeerProcess):
    """Orthanc 1.10 DICOM server with its own storage in work_dir.

    Orthanc accepts C-ECHO, C-STORE and the other DIMSE services only from
    calling_ae_titles at 127.0.0.1 (compared case-sensitively) and only
    when they call ae_title. It stores each received instance unchanged:
    no transcoding on ingest and no storage compression. A second C-STORE
    of a SOP Instance UID that Orthanc already stores gets a success
    response, but Orthanc keeps the first copy ("OverwriteInstances": false).
    """

    name = "orthanc"

    def __init__(
        self,
        work_dir: Path,
        ae_title: str = "ORTHANC",
        calling_ae_titles: Iterable[str] = ("MIGRATOR",),
    ) -> None:
        super().__init__(work_dir)
        self.ae_title = validate_ae_title(ae_title)
        self.calling_ae_titles = [validate_ae_title(t) for t in calling_ae_titles]
        self.host = HOST
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://{self.host}:{self.http_port}"
        self.config_path = self.work_dir / "orthanc.json"
        self.http_auth = ("test", secrets.token_urlsafe(16))
        self.session = requests.Session()
        # Ignore proxy settings from the environment, so that REST calls
        # always go straight to 127.0.0.1.
        self.session.trust_env = False
        self.session.auth = self.http_auth

    def build_config(self) -> dict[str, Any]:
        """Build the Orthanc configuration, with every key this peer relies on."""
        storage_dir = self.work_dir / "storage"
        temporary_dir = self.work_dir / "tmp"
        # Orthanc needs one entry per remote modality. The port is used
        # only when Orthanc opens an association itself (C-MOVE, or a
        # C-STORE started through REST), which no test here does.
        modalities = {
            title: {"AET": title, "Host": HOST, "Port": 104}
            for title in self.calling_ae_titles
        }
        return {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": str(storage_dir),
            "IndexDirectory": str(storage_dir),
            "TemporaryDirectory": str(temporary_dir),
            "StorageCompression": False,
            "OverwriteInstances": False,
            # No plugins and no Lua: Debian's /etc/orthanc/orthanc.json loads
            # /usr/share/orthanc/plugins/, which this file never reads.
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.http_auth[0]: self.http_auth[1]},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "StrictAetComparison": True,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": modalities,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "UnknownSopClassAccepted": True,
            "AcceptedTransferSyntaxes": [ALL_TRANSFER_SYNTAXES],
            "DeflatedTransferSyntaxAccepted": True,
            "JpegTransferSyntaxAccepted": True,
            "Jpeg2000TransferSyntaxAccepted": True,
            "JpegLosslessTransferSyntaxAccepted": True,
            "JpipTransferSyntaxAccepted": True,
            "Mpeg2TransferSyntaxAccepted": True,
            "RleTransferSyntaxAccepted": True,
            "Mpeg4TransferSyntaxAccepted": True,
            "H265TransferSyntaxAccepted": True,
        }

    def start(self) -> OrthancPeer:
        """Write the configuration, start Orthanc and wait for its REST API.

        Raises PeerStartError with the tail of Orthanc's log if the process
        exits or GET /system does not return HTTP 200 within
        START_TIMEOUT_SECONDS.
        """
        if not Path(ORTHANC_EXECUTABLE).is_file():
            raise PeerStartError(
                f"Orthanc executable not found at {ORTHANC_EXECUTABLE}: "
                "install the Debian package 'orthanc'"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "storage").mkdir(exist_ok=True)
        (self.work_dir / "tmp").mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(self.build_config(), indent=2))

        # Orthanc logs to stderr unless given --logfile, and _launch sends
        # stderr to self.log_path.
        self._launch([ORTHANC_EXECUTABLE, "--verbose", "--no-jobs", str(self.config_path)])
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        # Orthanc 1.10.1 starts its DICOM server before its HTTP server (its
        # log shows "DICOM server listening" first), so a response from
        # /system means that the DICOM port accepts associations too.
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                response = self.session.get(f"{self.url}/system", timeout=1.0)
            except (requests.ConnectionError, requests.Timeout):
                pass
            else:
                if response.status_code == 200:
                    return
            time.sleep(0.1)
        self._raise_start_timeout(f"GET {self.url}/system to return HTTP 200")

    def __enter__(self) -> OrthancPeer:
        return self.start()

    def stop(self) -> None:
        # NOTE: Orthanc 1.10.1 takes about 2.5 to 3.5 s to exit after SIGTERM,
        # mostly to stop its HTTP server (pytest teardown times of
        # tests/test_peers.py on a 2-core machine).
        self.session.close()
        super().stop()

    def _get(self, path: str) -> requests.Response:
        response = self.session.get(f"{self.url}{path}", timeout=HTTP_TIMEOUT_SECONDS)
        response.raise_for_status()
        return response

    def instances(self) -> list[str]:
        """Return the Orthanc identifiers of all stored instances."""
        identifiers: list[str] = self._get("/instances").json()
        return identifiers

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """Return the simplified tags of an instance, keyed by DICOM keyword."""
        tags: dict[str, Any] = self._get(f"/instances/{orthanc_id}/simplified-tags").json()
        return tags

    def instance_file(self, orthanc_id: str) -> bytes:
        """Return the stored DICOM file (Part 10 format) of an instance."""
        return self._get(f"/instances/{orthanc_id}/file").content

    def find_sop_instance(self, sop_instance_uid: str) -> str | None:
        """Return the Orthanc identifier of the instance with this UID, or None."""
        response = self.session.post(
            f"{self.url}/tools/lookup",
            data=sop_instance_uid,
            timeout=HTTP_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        # /tools/lookup also matches patient, study and series identifiers.
        for match in response.json():
            if match["Type"] == "Instance":
                orthanc_id: str = match["ID"]
                return orthanc_id
        return None

    def transfer_syntax(self, orthanc_id: str) -> str:
        """Return the transfer syntax UID in which Orthanc stored an instance."""
        return self._get(f"/instances/{orthanc_id}/metadata/TransferSyntax").text.strip()


class StoreSCP(PeerProcess):
    """DCMTK storescp that writes each received instance to output_dir.

    storescp runs in single-process mode, so it serves one association at a
    time and further associations wait in the listen queue. It accepts any
    calling AE title, unknown storage SOP classes (-pm) and every transfer
    syntax that DCMTK 3.6.7 supports (+xa), including JPEG 2000. It writes
    the data set bit for bit as received (+B), so compressed pixel data is
    never decoded. Files are named "<prefix>.<SOP Instance UID>.dcm", where
    DCMTK derives the prefix from the SOP class ("MR" for MR Image Storage,
    "UNKNOWN" for a class it does not know). A file for a UID that was
    already received is overwritten.
    """

    name = "storescp"

    def __init__(self, work_dir: Path, ae_title: str = "STORESCP") -> None:
        super().__init__(work_dir)
        self.ae_title = validate_ae_title(ae_title)
        self.host = HOST
        self.port = free_port()
        self.output_dir = self.work_dir / "received"

    def start(self) -> StoreSCP:
        """Start storescp and wait until it accepts a C-ECHO.

        Raises PeerStartError with the tail of the storescp log if the
        process exits or no C-ECHO succeeds within START_TIMEOUT_SECONDS.
        """
        for executable in ("storescp", "echoscu"):
            if shutil.which(executable) is None:
                raise PeerStartError(
                    f"{executable} not found on PATH: install the Debian package 'dcmtk'"
                )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._launch(
            [
                "storescp",
                "--verbose",
                "--aetitle", self.ae_title,
                "--accept-all",
                "--promiscuous",
                "--bit-preserving",
                "--output-directory", str(self.output_dir),
                "--default-filenames",
                "--filename-extension", ".dcm",
                str(self.port),
            ]
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        # A C-ECHO proves that storescp negotiates associations. A bare TCP
        # connect would also work but makes storescp log a failed association.
        echo_command = [
            "echoscu",
            "--aetitle", "READINESS-PROBE",
            "--call", self.ae_title,
            "--timeout", "2",
            "--acse-timeout", "2",
            self.host,
            str(self.port),
        ]
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._raise_if_exited()
            probe = subprocess.run(
                echo_command,
                env={**os.environ, **PEER_ENVIRONMENT},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        self._raise_start_timeout(f"a C-ECHO to {self.ae_title} at {self.host}:{self.port}")

    def __enter__(self) -> StoreSCP:
        return self.start()

    def received(self) -> list[Path]:
        """Return the files that storescp wrote, sorted by name.

        A file is complete once its C-STORE response has been sent, and may
        be partly written while the request is still being received.
        """
        return sorted(path for path in self.output_dir.iterdir() if path.is_file())


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPeer]:
    """Yield a started Orthanc with AE title ORTHANC that accepts calling AE MIGRATOR."""
    with OrthancPeer(tmp_path / "orthanc", "ORTHANC", ["MIGRATOR"]) as peer:
        yield peer


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """Yield a started DCMTK storescp with AE title STORESCP."""
    with StoreSCP(tmp_path / "storescp", "STORESCP") as peer:
        yield peer
