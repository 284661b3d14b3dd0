"""The dcmsend engine: DCMTK's dcmsend as a child process, its log read line by line.

dcmsend sends the files named on its command line over one association,
each in its stored transfer syntax (``--decompress-never``), and goes on
after a failed store (``--no-halt``). At log level debug, DCMTK 3.6.7 logs
for each file::

    D: sending SOP instance from file: PATH
    ...
    D: DIMSE Status                  : 0xA700: Refused: Out of resources
    ...
    D: (0000,0902) LO [the Error Comment, if the response has one]

and at most one C-STORE is in flight at a time. Each response becomes a
:class:`StoreResult` as soon as the next log line shows that it is complete,
so the caller records it while dcmsend sends the next file. dcmsend gets
SIGKILL when the worker process dies, so a killed worker leaves no sender
behind. The next run then sends again at most two of this engine's files:
the one in flight and the one whose response was not recorded yet.

dcmsend reads each file and encodes its data set again. Element values
arrive as stored, encapsulated Pixel Data fragment by fragment, but dcmsend
writes encapsulated Pixel Data with VR OB and leaves out Data Set Trailing
Padding (FFFC,FFFC). For a file in an uncompressed transfer syntax it
proposes every uncompressed one and converts the data set to the one that
the destination accepts. So the engine sends files in Implicit or Explicit
VR Little Endian, Explicit VR Big Endian or Deflated with a pynetdicom
session instead, which proposes the stored transfer syntax alone.

When a response does not arrive within dimse_timeout, dcmsend 3.6.7 goes on
with the next file on the same association and attributes a late response
to a later request. So the engine stops dcmsend at the first
missing response, fails that file as transient, and sends the rest over a
new association, as the pynetdicom engine does.

A file whose presentation context the destination did not accept is logged
by dcmsend 3.6.7 as ``E: Failed sending C-STORE request: 0006:0101 ASC Bad
presentation context ID``, or, when the destination accepted none of the
run's contexts, as ``E: No Acceptable Presentation Contexts`` (its report
then gives ``<no acceptable presentation context>`` for each file). DCMTK
has no JPEG 2000 codec. So with a :class:`~migrator.dicom.decompress.Decompressor`
the engine decodes such files itself and sends the copies in Explicit VR
Little Endian with a pynetdicom session, together with the chunk's
uncompressed files. That session proposes Explicit VR Little Endian alone,
whereas dcmsend would let the destination choose another uncompressed
transfer syntax, as it does for those files.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from pydicom.uid import UID

from migrator.config import DestinationConfig
from migrator.dicom.decompress import Decompressor
from migrator.dicom.prepare import PreparedFile, remove_stale_folders
from migrator.dicom.send import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MAX_SILENT_STORES,
    ContextKey,
    ContextsRejected,
    DestinationGuard,
    StoreResult,
    StoreSession,
    classify_status,
    connection_problem,
    no_context_accepted,
    no_response,
    not_accepted,
    rejection,
    silent_destination,
)
from migrator.errors import ConfigError, DestinationError

LOGGER = logging.getLogger(__name__)

Key = TypeVar("Key")

#: Files per dcmsend run. Each run starts a process and an association, and
#: dcmsend reads every file's File Meta Information before it associates.
#: Loading DCMTK's data dictionary alone took about 30 ms on a 2-core VM.
CHUNK_FILES = 250
#: dcmsend accepts --max-pdu from 4096 to 131072 bytes.
MIN_PDU, MAX_PDU = 4096, 131072
#: Runs in a row that send nothing before the files left are failed.
MAX_IDLE_RUNS = 2
#: Each engine's folder for dcmsend's log configuration and report.
_FOLDER_PREFIX = "migrator-dcmsend-"

#: A log4cplus configuration for dcmsend's logger (DCMTK's oflog): messages
#: at INFO and above, and of the debug messages only those that the parser
#: reads. It cuts the lines per file from about 33 (``--log-level debug``) to 13.
_LOG_CONFIG = """\
log4cplus.rootLogger = DEBUG, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %P: %m%n
{filters}
log4cplus.appender.console.filters.{last} = log4cplus::spi::LogLevelRangeFilter
log4cplus.appender.console.filters.{last}.LogLevelMin = INFO
log4cplus.appender.console.filters.{last}.LogLevelMax = FATAL
log4cplus.appender.console.filters.{last}.AcceptOnMatch = true
"""
_DEBUG_MESSAGES = ["sending SOP instance from file", "DIMSE Status", "status detail",
                   "Association Rejected"]
_SENDING = "D: sending SOP instance from file: "
_STATUS = re.compile(r"^D: DIMSE Status\s*: 0x([0-9A-Fa-f]{4})")
_COMMENT = re.compile(r"^D: \(0000,0902\) LO \[(.*)\]")
_AFFECTED_INSTANCE = re.compile(r"^D: Affected SOP Instance UID\s*: (\S+)")
_BAD_FILE = "W: bad DICOM file: "
_REPORT_FILE = re.compile(r"^Filename\s*: (.*)$")
_REPORT_STATUS = re.compile(r"^DIMSE Status\s*: 0x([0-9A-Fa-f]{4})")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PRCTL: Callable[[int, int], int] | None
try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec: a dcmsend left running by a
    # killed worker would go on sending files whose outcomes no process records.
    # Only a C function is called here, so no lock held by another thread at
    # fork time can block it.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)  # the worker died before prctl took effect


@dataclass
class _Run:
    """State of one dcmsend run, read once its log has ended."""

    #: Paths whose response (or its absence) is known.
    finished: set[str] = field(default_factory=set)
    #: The association ended before the run did, so unsent files may go on a new one.
    association_lost: bool = False
    #: The destination accepted none of this run's presentation contexts, but
    #: the session has other pairs: files in uncompressed transfer syntaxes,
    #: or Explicit VR Little Endian for decoded copies.
    contexts_rejected: bool = False
    #: dcmsend skipped these files as unreadable: path -> its reason.
    bad_files: dict[str, str] = field(default_factory=dict)
    #: The last error lines, for a reason when nothing else explains a file.
    errors: list[str] = field(default_factory=list)
    exit_code: int | None = None


class DcmsendEngine:
    """Sends files with DCMTK's dcmsend, in runs of up to :data:`CHUNK_FILES` files."""

    def __init__(self, calling_ae: str, name: str, destination: DestinationConfig,
                 pairs: Iterable[ContextKey], guard: DestinationGuard,
                 decompressor: Decompressor | None = None) -> None:
        self.calling_ae = calling_ae
        self.name = name
        self.destination = destination
        self.pairs = sorted(set(pairs))
        self.guard = guard
        self._decompressor = decompressor
        self._executable: str | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._silent = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> DcmsendEngine:
        self._executable = shutil.which("dcmsend")
        if self._executable is None:
            raise ConfigError(
                f"destination {self.name} has engine = \"dcmsend\", but dcmsend was not found on "
                "PATH; install DCMTK ('apt-get install dcmtk' on Debian and Ubuntu) on every "
                "worker machine, or set engine = \"pynetdicom\"")
        remove_stale_folders(Path(tempfile.gettempdir()), _FOLDER_PREFIX)
        self._folder = tempfile.TemporaryDirectory(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-")
        (Path(self._folder.name) / "log.cfg").write_text(_log_config())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()
        self.guard.close()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def send(self, files: Iterable[tuple[Key, PreparedFile]]) -> Iterator[tuple[Key, StoreResult]]:
        pending = iter(files)
        while chunk := list(islice(pending, CHUNK_FILES)):
            encapsulated = [item for item in chunk if _is_encapsulated(item[1].transfer_syntax)]
            rejected: list[tuple[Key, PreparedFile]] = []
            for item, result in self._send_chunk(encapsulated):
                if result.context_rejected and self._decompressor is not None:
                    rejected.append(item)
                else:
                    yield item[0], result
            uncompressed = [item for item in chunk if not _is_encapsulated(item[1].transfer_syntax)]
            if uncompressed or rejected:
                yield from self._send_with_pynetdicom(uncompressed, rejected)

    def _send_with_pynetdicom(self, files: list[tuple[Key, PreparedFile]],
                              rejected: list[tuple[Key, PreparedFile]]
                              ) -> Iterator[tuple[Key, StoreResult]]:
        """Send ``files`` as stored and decoded copies of ``rejected``, over one pynetdicom association."""
        # One association at a time: this one closes before dcmsend opens the next.
        pairs = {(prepared.sop_class_uid, prepared.transfer_syntax) for _, prepared in files}
        pairs |= {(prepared.sop_class_uid, EXPLICIT_VR_LITTLE_ENDIAN) for _, prepared in rejected}
        with StoreSession(self.calling_ae, self.name, self.destination, pairs, guard=self.guard) as session:
            for key, prepared in files:
                yield key, session.store(prepared.path, prepared.sop_class_uid, prepared.transfer_syntax)
            for key, prepared in rejected:
                assert self._decompressor is not None  # only then are files rejected here
                yield key, self._decompressor.store(prepared, session)

    def _send_chunk(self, chunk: list[tuple[Key, PreparedFile]]
                    ) -> Iterator[tuple[tuple[Key, PreparedFile], StoreResult]]:
        """Send ``chunk`` with dcmsend runs, yielding each (key, file) with its result."""
        remaining = chunk
        idle_runs = 0
        while remaining:
            if self._silent >= MAX_SILENT_STORES:
                raise silent_destination(self.name, self._silent)
            by_path = {str(prepared.path): (key, prepared) for key, prepared in remaining}
            run = _Run()
            for path, result in self._run(list(by_path.values()), run):
                yield by_path[path], result
            remaining = [(key, prepared) for key, prepared in remaining
                         if str(prepared.path) not in run.finished]
            if not remaining:
                return
            if run.contexts_rejected:
                for key, prepared in remaining:
                    yield (key, prepared), not_accepted(self.name, prepared.sop_class_uid,
                                                        prepared.transfer_syntax)
                return
            if not run.association_lost:
                # dcmsend skipped these files itself: a new association would not help.
                for key, prepared in remaining:
                    yield (key, prepared), self._not_sent(str(prepared.path), run)
                return
            idle_runs = 0 if run.finished else idle_runs + 1
            if idle_runs >= MAX_IDLE_RUNS:
                raise DestinationError(
                    f"{self.label()} aborted {idle_runs} associations in a row before any "
                    f"C-STORE response ({'; '.join(run.errors[-2:]) or 'no reason logged'}); the "
                    "rest of its instances in this batch were not sent")
            LOGGER.warning("association with %s was lost; sending %d file(s) over a new one",
                           self.name, len(remaining))

    def label(self) -> str:
        dest = self.destination
        return f"destination {self.name} ({dest.ae_title}@{dest.host}:{dest.port})"

    def _not_sent(self, path: str, run: _Run) -> StoreResult:
        reason = run.bad_files.get(path)
        if reason is None:
            last = run.errors[-1] if run.errors else f"exit code {run.exit_code}"
            reason = f"dcmsend did not send it ({last})"
        return StoreResult("failure", None, f"dcmsend skipped the file: {reason}")

    def _command(self, paths: Sequence[str], report: Path) -> list[str]:
        dest = self.destination
        assert self._executable is not None, "the engine was not entered"
        assert self._folder is not None, "the engine was not entered"
        command = [
            self._executable, "--log-config", str(Path(self._folder.name) / "log.cfg"),
            "--aetitle", self.calling_ae, "--call", dest.ae_title,
            "--decompress-never", "--no-halt",
            # The pynetdicom engine does not check UID values either.
            "--no-uid-checks",
            "--timeout", str(math.ceil(dest.acse_timeout)),
            "--acse-timeout", str(math.ceil(dest.acse_timeout)),
            "--dimse-timeout", str(math.ceil(dest.dimse_timeout)),
            "--create-report-file", str(report),
        ]
        if dest.max_pdu:
            command += ["--max-pdu", str(min(max(dest.max_pdu, MIN_PDU), MAX_PDU))]
        return [*command, dest.host, str(dest.port), *paths]

    def _run(self, files: list[tuple[Key, PreparedFile]], run: _Run) -> Iterator[tuple[str, StoreResult]]:
        """Run dcmsend once over ``files``, yielding (path, result) as responses arrive.

        Raises
        ------
        DestinationError
            The association could not be established.
        """
        self.guard.before_associate()
        prepared = {str(file.path): file for _, file in files}
        assert self._folder is not None, "the engine was not entered"
        report = Path(self._folder.name) / "report.txt"
        parser = _LogParser(self, prepared, run)
        parent = os.getpid()
        try:
            process = self._process = subprocess.Popen(
                self._command(list(prepared), report), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                env={**os.environ, "TCP_NODELAY": "1"},
                preexec_fn=lambda: _die_with_parent(parent))
            assert process.stdout is not None
            for line in process.stdout:
                parser.feed(line.rstrip("\n"))
                if parser.results:
                    yield from parser.take()
                if parser.stop_requested and process.poll() is None:
                    process.kill()
            parser.close()
            yield from parser.take()
            run.exit_code = process.wait()
        finally:
            self._stop()
            self._check_report(report, parser)
            report.unlink(missing_ok=True)
        parser.raise_association_failure()

    def _stop(self) -> None:
        """End the running dcmsend, if any, by its PID."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        _close(process.stdout)

    def _check_report(self, report: Path, parser: _LogParser) -> None:
        # The report is written when dcmsend ends normally: it must agree with
        # the statuses read from the log, which were already recorded.
        try:
            text = report.read_text(errors="replace")
        except OSError:
            return
        path: str | None = None
        for line in text.splitlines():
            if match := _REPORT_FILE.match(line):
                path = match.group(1).strip()
            elif (match := _REPORT_STATUS.match(line)) and path is not None:
                logged = parser.statuses.get(path)
                if logged is not None and logged != int(match.group(1), 16):
                    LOGGER.error("dcmsend's report gives status 0x%s for %s, but its log gave "
                                 "0x%04X, which was recorded", match.group(1), path, logged)

    def count_response(self, responded: bool) -> None:
        self._silent = 0 if responded else self._silent + 1


def _log_config() -> str:
    filters = []
    for number, message in enumerate(_DEBUG_MESSAGES, start=1):
        key = f"log4cplus.appender.console.filters.{number}"
        filters += [f"{key} = log4cplus::spi::StringMatchFilter", f"{key}.StringToMatch = {message}",
                    f"{key}.AcceptOnMatch = true"]
    return _LOG_CONFIG.format(filters="\n".join(filters), last=len(_DEBUG_MESSAGES) + 1)


def _is_encapsulated(syntax: str) -> bool:
    uid = UID(syntax)
    return uid.is_transfer_syntax and uid.is_compressed


def _close(stream: IO[str] | None) -> None:
    if stream is not None:
        stream.close()


class _LogParser:
    """Turns dcmsend's debug log into results, one line at a time."""

    def __init__(self, engine: DcmsendEngine, files: dict[str, PreparedFile], run: _Run) -> None:
        self._engine = engine
        self._files = files
        self._run = run
        self.statuses: dict[str, int] = {}
        #: (path, result) pairs found and not taken yet.
        self.results: list[tuple[str, StoreResult]] = []
        self.stop_requested = False
        self._current: str | None = None
        self._incoming = False
        self._status: int | None = None
        self._comment: str | None = None
        self._accepted = False
        self._rejected: list[str] = []
        self._no_contexts = False
        self._failure: str | None = None

    def feed(self, line: str) -> None:
        """Parse one log line. Its results, if any, are then in :attr:`results`."""
        level = line[:2]
        if level in ("E:", "F:"):
            self._run.errors = [*self._run.errors[-4:], line[3:].strip()]
        if self.stop_requested:
            # dcmsend is being stopped: what it logs now belongs to an association
            # that can no longer be trusted, and those files go on a new one.
            return
        if self._status is not None and (level != "D:" or line.startswith(_SENDING)):
            self._complete()
        if level == "D:":
            self._feed_debug(line)
        elif line.startswith("I: Association Accepted"):
            self._accepted = True
            self._engine.guard.associated()
        elif "No Acceptable Presentation Contexts" in line or "No acceptable Presentation Contexts" in line:
            self._no_contexts = True
        elif line.startswith("F: cannot negotiate network association:"):
            self._failure = line.split(":", 2)[2].strip()
        elif line.startswith("E: Failed receiving DIMSE response:"):
            self._no_response(line)
        elif line.startswith("E: Failed sending C-STORE request:"):
            self._send_failed(line)
        elif line.startswith(_BAD_FILE):
            self._note_bad_file(line[len(_BAD_FILE):])

    def _feed_debug(self, line: str) -> None:
        # Most debug lines are message dumps that need no action.
        if line.startswith(_SENDING):
            self._current = line[len(_SENDING):]
        elif line.startswith("D: ==="):
            if "INCOMING DIMSE MESSAGE" in line:
                self._incoming = True
            elif "END DIMSE MESSAGE" in line:
                self._incoming = False
        elif self._incoming and (match := _AFFECTED_INSTANCE.match(line)):
            self._check_instance(match.group(1))
        elif match := _STATUS.match(line):
            self._status = int(match.group(1), 16)
        elif self._status is not None and (match := _COMMENT.match(line)):
            self._comment = match.group(1).rstrip()
        elif line.startswith("D: Association Rejected") or (
                self._rejected and line.startswith(("D: Result:", "D: Reason:"))):
            self._rejected.append(line[3:].strip())

    def _note_bad_file(self, text: str) -> None:
        for path in self._files:
            if text.startswith(f"{path}: "):
                self._run.bad_files[path] = text[len(path) + 2:].removesuffix(", ignoring file")
                return

    def close(self) -> None:
        if self._status is not None:
            self._complete()

    def take(self) -> list[tuple[str, StoreResult]]:
        """Return the results found since the last call."""
        results, self.results = self.results, []
        return results

    def _finish(self, result: StoreResult) -> None:
        path, self._current = self._current, None
        if path is None or path not in self._files:
            LOGGER.error("dcmsend logged a C-STORE for %s, which it was not given; ignored", path)
            return
        self._run.finished.add(path)
        self.results.append((path, result))

    def _complete(self) -> None:
        status, comment = self._status, self._comment
        self._status = self._comment = None
        assert status is not None
        if self._current is not None:
            self.statuses[self._current] = status
        self._engine.count_response(True)
        self._finish(classify_status(status, comment))

    def _check_instance(self, uid: str) -> None:
        expected = self._files.get(self._current or "")
        if expected is None or uid == expected.sop_instance_uid:
            return
        # A late response to an earlier request: this association can no longer be trusted.
        self._engine.count_response(False)
        self._lose_association()
        self._finish(no_response(self._engine.name, f"the response was for another "
                                            f"instance ({uid})"))

    def _no_response(self, line: str) -> None:
        self._engine.count_response(False)
        self._lose_association()
        if "0006:0207" in line or "timeout" in line.lower():
            why = f"timed out after {self._engine.destination.dimse_timeout:g} s (dimse_timeout)"
        elif "abort" in line.lower():
            why = "the association was aborted"
        else:
            why = line.split(":", 2)[2].strip()
        self._finish(no_response(self._engine.name, why))

    def _send_failed(self, line: str) -> None:
        prepared = self._files.get(self._current or "")
        if "0006:0101" in line and prepared is not None:
            # "ASC Bad presentation context ID": the destination rejected this pair.
            self._finish(not_accepted(self._engine.name, prepared.sop_class_uid,
                                                 prepared.transfer_syntax))
            return
        # Nothing of this file reached the destination: it goes on a new association.
        self._current = None
        self._lose_association()

    def _lose_association(self) -> None:
        self._run.association_lost = True
        self.stop_requested = True

    def raise_association_failure(self) -> None:
        """Raise DestinationError if the run never got an association."""
        if self._accepted or not (self._rejected or self._no_contexts or self._failure):
            return
        engine = self._engine
        pairs = {(file.sop_class_uid, file.transfer_syntax) for file in self._files.values()}
        if self._no_contexts and pairs < set(engine.pairs):
            # Other pairs may still go through: fail this run's files one by one, as not accepted.
            self._run.contexts_rejected = True
            return
        engine.guard.association_failed()
        if self._no_contexts:
            raise ContextsRejected(
                f"{engine.label()} {no_context_accepted(syntax for _, syntax in engine.pairs)}",
                engine.pairs)
        if self._rejected:
            raise DestinationError(f"{engine.label()} {rejection(engine.calling_ae, engine.destination)} "
                                   f"(dcmsend: {'; '.join(self._rejected[1:]) or 'rejected'})")
        cause = connection_problem(engine.destination) or (
            f"aborted the association request (dcmsend: {self._failure}); check its log for the reason")
        raise DestinationError(f"{engine.label()} {cause}")
