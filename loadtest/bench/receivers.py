"""The receivers that every contender sends to: DCMTK storescp and Orthanc.

Each receiver runs as a child process in a process group of its own and is
started afresh, with an empty output folder, before each contender. Both
run with ``TCP_NODELAY=1`` in their environment, which makes DCMTK 3.6.7
(storescp, and the DICOM server inside Orthanc) disable Nagle's algorithm.
storescp 3.6.7 and Orthanc 1.10 cannot choose a listen address, so they
listen on all interfaces of a free high port. Orthanc accepts DICOM only
from known AE titles at 127.0.0.1 and HTTP only from the loopback interface
with a per-run password. storescp accepts any caller.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loadtest.archive.manifest import ManifestFile
from loadtest.bench.measure import group_cpu_seconds, stop_group

HOST = "127.0.0.1"
#: The environment of every DCMTK program and of Orthanc.
PEER_ENVIRONMENT = {"TCP_NODELAY": "1"}
START_TIMEOUT_SECONDS = 60.0
ORTHANC_EXECUTABLE = "/usr/sbin/Orthanc"
#: Calling AE titles of the contenders: the migrator (both engines) and storescu.
CALLING_AE_TITLES = ("MIGRATOR", "STORESCU")


class ReceiverError(RuntimeError):
    """Error raised when a receiver cannot be started or queried."""


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 when this function ran."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def peer_environment() -> dict[str, str]:
    return {**os.environ, **PEER_ENVIRONMENT}


class Receiver:
    """A storage SCP child process with an output folder that :meth:`restart` empties."""

    #: The name that ``--receivers`` takes.
    name = "receiver"
    #: The software whose version :attr:`version` returns.
    software = "receiver"
    ae_title = "RECEIVER"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def version(self) -> str:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create an empty output folder and whatever the receiver reads at start."""
        raise NotImplementedError

    def _wait_until_ready(self) -> None:
        raise NotImplementedError

    def received(self) -> int:
        """Return how many instances the receiver stored."""
        raise NotImplementedError

    def expected(self, sent: Iterable[ManifestFile], corrected: bool) -> int:
        """Return how many instances the receiver should store after a C-STORE of each file.

        With ``corrected`` each file was sent with its manifest corrections
        applied, as the migrator sends it; without, as it is on disk.
        """
        raise NotImplementedError

    def restart(self) -> None:
        """Stop the receiver if it runs, empty its output and start it again."""
        self.stop()
        self._prepare()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self._command(), cwd=self.folder, env=peer_environment(),
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def cpu_seconds(self) -> float:
        """Return the CPU seconds that the receiver's processes used since its last start."""
        if self.process is None:
            return 0.0
        return group_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None

    def _raise_if_exited(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise ReceiverError(f"{self.name} exited with code {code} during startup; see {self.log_path}")


class StoreSCPReceiver(Receiver):
    """DCMTK storescp writing every received instance to a file of its own.

    ``+xv`` prefers JPEG 2000 lossless and accepts the uncompressed transfer
    syntaxes, ``-pm`` accepts unknown storage SOP classes, and ``+B`` writes
    the data set as received. ``+uf`` gives every file a new name, so a
    second C-STORE of one SOP Instance UID (a duplicate file) adds a file. ``--fork`` serves each association in a child process, so the
    associations of two migrator processes run at once.
    """

    name = "storescp"
    software = "DCMTK"
    ae_title = "STORESCP"
    OPTIONS = ("--fork", "+xv", "-pm", "+B", "+uf")

    @property
    def output(self) -> Path:
        return self.folder / "received"

    @property
    def version(self) -> str:
        return dcmtk_version()

    def _command(self) -> list[str]:
        return ["storescp", *self.OPTIONS, "--filename-extension", ".dcm",
                "--output-directory", str(self.output), "--aetitle", self.ae_title, str(self.port)]

    def _prepare(self) -> None:
        if shutil.which("storescp") is None or shutil.which("echoscu") is None:
            raise ReceiverError("storescp or echoscu not found on PATH: install DCMTK (Debian package dcmtk)")
        shutil.rmtree(self.output, ignore_errors=True)
        self.output.mkdir(parents=True)

    def _wait_until_ready(self) -> None:
        echo = ["echoscu", "--aetitle", "BENCH-PROBE", "--call", self.ae_title, "--timeout", "2",
                "--acse-timeout", "2", HOST, str(self.port)]
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._raise_if_exited()
            if subprocess.run(echo, env=peer_environment(), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise ReceiverError(f"storescp did not respond to a C-ECHO on port {self.port} within "
                            f"{START_TIMEOUT_SECONDS:.0f} s; see {self.log_path}")

    def received(self) -> int:
        return sum(1 for path in self.output.iterdir() if path.is_file())

    def expected(self, sent: Iterable[ManifestFile], corrected: bool) -> int:
        return sum(1 for _ in sent)


class OrthancReceiver(Receiver):
    """Orthanc storing every instance unchanged in its own storage folder.

    Orthanc identifies an instance by its Patient ID, Study, Series and SOP
    Instance UIDs (the Orthanc Book, "Orthanc identifiers"). It keeps the
    first copy of an instance and returns success for a second C-STORE of
    it ("OverwriteInstances": false). So the two files of a duplicate count
    once, unless the migrator corrected the patient or study of one of them.
    """

    name = "orthanc"
    software = "Orthanc"
    ae_title = "ORTHANC"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.http_port = free_port()
        self._password = secrets.token_urlsafe(16)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def version(self) -> str:
        # The first line of "/usr/sbin/Orthanc --version" is "/usr/sbin/Orthanc 1.10.1".
        line = _first_line([ORTHANC_EXECUTABLE, "--version"])
        return line.split()[-1] if line.startswith(ORTHANC_EXECUTABLE) else line

    def _config(self) -> dict[str, Any]:
        storage = self.folder / "storage"
        return {
            "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "TemporaryDirectory": str(self.folder / "tmp"), "StorageCompression": False,
            "OverwriteInstances": False, "Plugins": [], "LuaScripts": [],
            "HttpServerEnabled": True, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {"bench": self._password},
            "OrthancExplorerEnabled": False, "WebDavEnabled": False,
            "DicomServerEnabled": True, "DicomAet": self.ae_title, "DicomPort": self.port,
            "DicomCheckCalledAet": True, "StrictAetComparison": True,
            "DicomModalitiesInDatabase": False,
            # Port 104 is never called: Orthanc opens no association of its own here.
            "DicomModalities": {title: {"AET": title, "Host": HOST, "Port": 104}
                                for title in CALLING_AE_TITLES},
            "DicomCheckModalityHost": True, "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False, "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False, "UnknownSopClassAccepted": True,
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
        }

    def _command(self) -> list[str]:
        return [ORTHANC_EXECUTABLE, "--no-jobs", str(self.folder / "orthanc.json")]

    def _prepare(self) -> None:
        if not Path(ORTHANC_EXECUTABLE).is_file():
            raise ReceiverError(f"Orthanc not found at {ORTHANC_EXECUTABLE}: install the Debian package orthanc")
        for name in ("storage", "tmp"):
            shutil.rmtree(self.folder / name, ignore_errors=True)
            (self.folder / name).mkdir(parents=True)
        (self.folder / "orthanc.json").write_text(json.dumps(self._config(), indent=2))

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}")
        token = base64.b64encode(f"bench:{self._password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with self._opener.open(request, timeout=30) as response:
            return json.load(response)

    def _wait_until_ready(self) -> None:
        # Orthanc 1.10.1 starts its DICOM server before its HTTP server.
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                self._get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise ReceiverError(f"Orthanc did not respond to GET /system on port {self.http_port} within "
                            f"{START_TIMEOUT_SECONDS:.0f} s; see {self.log_path}")

    def received(self) -> int:
        return int(self._get("/statistics")["CountInstances"])

    def expected(self, sent: Iterable[ManifestFile], corrected: bool) -> int:
        return len({_orthanc_key(entry, corrected) for entry in sent})


def _orthanc_key(entry: ManifestFile, corrected: bool) -> tuple[str | None, str, str, str]:
    """Return the identifiers from which Orthanc derives the instance's ID, as the file was sent.

    None stands for the Patient ID of the file's header, which the manifest
    does not record. Both files of a duplicate have the same header.
    """
    corrections = entry.corrections if corrected else {}
    return (corrections.get("PatientID"), corrections.get("StudyInstanceUID", entry.study_instance_uid),
            entry.series_instance_uid, entry.sop_instance_uid)


def dcmtk_version() -> str:
    """Return the DCMTK version that storescu reports, such as "3.6.7"."""
    # The first line of "storescu --version" is "$dcmtk: storescu v3.6.7 2022-04-22 $".
    match = re.search(r" v(\d+(?:\.\d+)+)", _first_line(["storescu", "--version"]))
    return match.group(1) if match else "unknown"


RECEIVERS: dict[str, type[Receiver]] = {"storescp": StoreSCPReceiver, "orthanc": OrthancReceiver}


def _first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"unknown ({command[0]}: {exc.strerror})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"
