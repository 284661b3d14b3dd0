"""Sending one batch's instances to one destination, recording each outcome as it happens.

Each instance's header is read up to Pixel Data, the correction steps run
on it, and the file to send is the stored file itself or a copy with the
new header (see :mod:`migrator.dicom.prepare`). The destination's engine
sends it, and the outcome is written as soon as its C-STORE response is
known. It is committed at once, or with the destination's
``audit_commit_seconds`` above 0, together with the others of that many
seconds. So a worker killed in the middle of a batch leaves without an
outcome only the outcomes not committed yet and the C-STOREs it had in
flight, one per association. dcmsend sends the next file while the worker
records the last response, so with that engine a kill can also catch one
response per association that was not recorded yet: two instances at most.

With ``parallel_associations`` above 1 the instances are shared out over
that many associations, each sending from a thread of its own, while this
thread writes every outcome (a SQLAlchemy session belongs to one thread).

A destination's ``on_transfer_syntax_rejected`` decides what happens to an
instance stored in a compressed transfer syntax whose presentation context
the destination did not accept. "fail" records the failure. "decompress"
proposes Explicit VR Little Endian as well for the SOP classes of compressed
files, sends a decoded copy over the same association and records the
transfer syntax change, with its reason, in the audit row's ``changes``.
"sinbin" writes no outcome for the destination, and sends the instances to
the sin bin once the destination's groups are done, with reason
``transfer_syntax_rejected`` followed by the destination and the presentation
context it did not accept.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import cast

from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SINBIN, DestinationConfig
from migrator.context import RunContext
from migrator.dicom.decompress import Decompressor
from migrator.dicom.engines import open_engine
from migrator.dicom.prepare import (
    Corrections,
    EncodeError,
    Method,
    PreparedFile,
    ScratchFolder,
    prepare_file,
)
from migrator.dicom.read import FILE_GONE, UnreadableFile
from migrator.dicom.send import (
    MAX_CONTEXTS,
    MAX_SILENT_STORES,
    ContextKey,
    ContextsRejected,
    DestinationGuard,
    StoreResult,
    is_compressed,
    not_accepted,
    silent_destination,
    with_decompressed_contexts,
)
from migrator.errors import DestinationError
from migrator.pipeline.decide import Decision
from migrator.pipeline.lease import (
    GIVE_BACK_POLL_SECONDS,
    LEASE,
    RENEW_EVERY,
    Lease,
    LeaseLost,
)
from migrator.route import Route
from migrator.state.models import Outcome
from migrator.steps import StepContext, run_steps

LOGGER = logging.getLogger(__name__)

#: The sin bin reason of an instance held back by on_transfer_syntax_rejected = "sinbin".
TRANSFER_SYNTAX_REJECTED = "transfer_syntax_rejected"
#: How often a batch that waits for the state database to record outcomes logs the wait again.
STILL_WAITING_LOG_SECONDS = 60.0


@dataclass
class BatchDestinations:
    """The destinations' state during one batch, shared by the batch's deliver() calls.

    A batch is delivered study by study, so one destination meets several
    calls. A destination that ended a call with instances left unsent for a
    transient reason (unreachable, refused, aborted) is given up with its
    error, and so is
    one that sent no response to MAX_SILENT_STORES C-STOREs in a row across
    calls. Later calls record its instances as failed with that error
    without trying it again; the batch's automatic retry tries them later.
    """

    given_up: dict[str, DestinationError] = field(default_factory=dict)
    #: C-STOREs in a row without a response, per destination.
    silent: Counter[str] = field(default_factory=Counter)


def _pair(decision: Decision) -> ContextKey:
    return (decision.instance.sop_class_uid or "", decision.instance.transfer_syntax or "")


def _proposed(decisions: Sequence[Decision], decompress: bool) -> set[ContextKey]:
    """Return the presentation contexts that an association for ``decisions`` proposes."""
    pairs = {_pair(decision) for decision in decisions}
    return with_decompressed_contexts(pairs) if decompress else pairs


def _context_groups(decisions: Sequence[Decision], decompress: bool) -> list[list[Decision]]:
    """Split decisions so that no association needs more than 128 contexts."""
    groups: list[list[Decision]] = []
    pairs: set[ContextKey] = set()
    for decision in decisions:
        needed = _proposed([decision], decompress)
        if not groups or len(pairs | needed) > MAX_CONTEXTS:
            groups.append([])
            pairs = set()
        pairs |= needed
        groups[-1].append(decision)
    return groups


def _destination_config(context: RunContext, destination: str) -> DestinationConfig:
    settings = context.settings
    return settings.sinbin if destination == SINBIN else settings.destinations[destination]


def deliver(context: RunContext, session: Session, lease: Lease, destination: str,
            decisions: Sequence[Decision], batch: BatchDestinations | None = None) -> None:
    """Send ``decisions`` to ``destination`` (a name or the sin bin), recording each outcome.

    With ``on_transfer_syntax_rejected = "sinbin"``, the instances whose
    stored transfer syntax the destination did not accept are then sent to
    the sin bin.

    ``batch`` is shared by the calls of one batch (see :class:`BatchDestinations`).

    Raises
    ------
    LeaseLost
        Another worker took the batch over; nothing more is sent.
    ConfigError
        The destination's engine cannot run on this machine.
    """
    batch = BatchDestinations() if batch is None else batch
    decompress = _destination_config(context, destination).on_transfer_syntax_rejected == "decompress"
    held_back: list[Decision] = []
    if destination in batch.given_up:
        held_back = _give_up(context, session, lease, destination, decisions, batch.given_up[destination])
    else:
        for group in _context_groups(decisions, decompress):
            held_back += _deliver_group(context, session, lease, destination, group, batch)
    if held_back:
        LOGGER.info("batch %d: %d instance(s) whose transfer syntax %s did not accept go to the "
                    "sin bin (on_transfer_syntax_rejected = \"sinbin\")", lease.batch_id,
                    len(held_back), destination)
        deliver(context, session, lease, SINBIN, held_back, batch)


def _give_up(context: RunContext, session: Session, lease: Lease, destination: str,
             decisions: Sequence[Decision], error: DestinationError) -> list[Decision]:
    """Record ``decisions`` as failed with the error that ended an earlier call to ``destination``.

    Returns the instances that the transfer syntax policy holds back for the sin bin instead.
    """
    config = _destination_config(context, destination)
    hold_back = destination != SINBIN and config.on_transfer_syntax_rejected == "sinbin"
    recorder = _Recorder(session, lease, destination, config.audit_commit_seconds, _WorkQueue([]),
                         hold_back)
    recorder.record(_Unsent(list(decisions), error))
    recorder.finish()
    return recorder.held_back


def _held_back(decision: Decision, destination: str, detail: str) -> Decision:
    """Return ``decision`` routed to the sin bin because ``destination`` rejected its transfer syntax."""
    # The audit's route_rule column stores at most 200 characters.
    rule = f"{decision.route.rule} (transfer syntax rejected by {destination})"[:200]
    return replace(decision, route=Route(rule, SINBIN, TRANSFER_SYNTAX_REJECTED, detail))


def _record(decision: Decision, batch_id: int, outcome: Outcome, **fields: object) -> audit.Record:
    return audit.Record(
        instance_id=decision.instance.id, batch_id=batch_id, outcome=outcome,
        reconciliation=decision.reconciliation.outcome.value, route_rule=decision.route.rule,
        **fields,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class _Attempt:
    """One instance on its way to the destination."""

    decision: Decision
    prepared: PreparedFile
    started: datetime


@dataclass(frozen=True)
class _Stored:
    attempt: _Attempt
    result: StoreResult


@dataclass(frozen=True)
class _Unprepared:
    decision: Decision
    reason: str
    started: datetime


@dataclass(frozen=True)
class _Unsent:
    decisions: list[Decision]
    error: DestinationError


_Event = _Stored | _Unprepared | _Unsent


class _WorkQueue:
    """The group's instances that no sending session has taken yet, shared by every session."""

    def __init__(self, decisions: Sequence[Decision]) -> None:
        self._decisions = deque(decisions)
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self.stopped = False

    @property
    def size(self) -> int:
        return len(self._decisions)

    def pause(self) -> None:
        """Make every session wait in :meth:`take` until :meth:`resume`."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def take(self) -> Decision | None:
        self._open.wait()
        with self._lock:
            if self.stopped or not self._decisions:
                return None
            return self._decisions.popleft()

    def take_all(self) -> list[Decision]:
        with self._lock:
            remaining = list(self._decisions)
            self._decisions.clear()
            return remaining


class _Sender:
    """One sending session: takes instances from the queue, prepares and sends them."""

    def __init__(self, context: RunContext, destination: str, config: DestinationConfig,
                 pairs: set[ContextKey], guard: DestinationGuard, work: _WorkQueue,
                 scratch: ScratchFolder) -> None:
        self._context = context
        self._destination = destination
        self._config = config
        self._pairs = pairs
        self._guard = guard
        self._work = work
        self._scratch = scratch
        self._decompressor = (Decompressor(destination, scratch)
                              if config.on_transfer_syntax_rejected == "decompress" else None)
        self._unprepared: deque[_Unprepared] = deque()
        #: Attempts handed to the engine whose result has not come back yet.
        self._in_engine: dict[int, _Attempt] = {}

    def events(self) -> Generator[_Event, None, None]:
        """Yield an event per instance taken from the queue, as each outcome becomes known."""
        engine = open_engine(self._context.settings.run.ae_title, self._destination, self._config,
                             self._pairs, self._guard, self._decompressor)
        try:
            with engine:
                for attempt, result in engine.send(self._outgoing()):
                    yield from self._drain_unprepared()
                    del self._in_engine[id(attempt)]
                    attempt.prepared.discard()
                    yield _Stored(attempt, result)
        except DestinationError as exc:
            yield from self._drain_unprepared()
            unsent = [attempt.decision for attempt in self._in_engine.values()]
            for attempt in self._in_engine.values():
                attempt.prepared.discard()
            self._in_engine.clear()
            yield _Unsent(unsent, exc)
            return
        finally:
            self._guard.close()
        yield from self._drain_unprepared()

    def _drain_unprepared(self) -> Iterator[_Unprepared]:
        while self._unprepared:
            yield self._unprepared.popleft()

    def _outgoing(self) -> Iterator[tuple[_Attempt, PreparedFile]]:
        while (decision := self._work.take()) is not None:
            started = audit.now()
            try:
                prepared = prepare_file(decision.path, self._corrections(decision), self._scratch)
                check_identity(decision, prepared)
            except Exception as exc:  # a file that cannot be sent must not end the batch
                reason = _unprepared_reason(decision.path, exc)
                LOGGER.warning("instance %d (%s): %s", decision.instance.id, decision.path, reason)
                self._unprepared.append(_Unprepared(decision, f"{decision.path}: {reason}", started))
                continue
            attempt = _Attempt(decision, prepared, started)
            self._in_engine[id(attempt)] = attempt
            yield attempt, prepared

    def _corrections(self, decision: Decision) -> Corrections | None:
        if self._destination == SINBIN:
            return None  # The sin bin receives the file as stored; corrections apply on release.
        step_context = StepContext(decision.instance.id, decision.reconciliation.values)
        steps = self._context.steps
        return lambda ds: run_steps(steps, ds, step_context)


def check_identity(decision: Decision, prepared: PreparedFile) -> None:
    """Check that the file to send is the instance that was indexed.

    A file replaced after the plan by another instance of the same name,
    even with the same size and time, would otherwise be sent under the
    indexed instance's legacy values and recorded as that instance.

    Raises
    ------
    UnreadableFile
        The file contains another SOP Instance UID; the prepared copy is discarded.
    """
    indexed = decision.instance.sop_instance_uid
    if prepared.sop_instance_uid != indexed:
        prepared.discard()
        raise UnreadableFile(f"the file now contains SOP Instance UID {prepared.sop_instance_uid}, not the "
                             f"indexed {indexed}: it changed after 'migrator plan'; check it, run "
                             "'migrator plan' again, then 'migrator start --retry-failed'")


def _unprepared_reason(path: Path, exc: Exception) -> str:
    """Word why the file to send for the stored file ``path`` could not be prepared."""
    if isinstance(exc, (UnreadableFile, EncodeError)):
        return str(exc)
    if not isinstance(exc, OSError):
        return f"cannot prepare the file to send: {type(exc).__name__}: {exc}"
    # The stored file went away after its header was read, while its Pixel
    # Data was copied, or the corrected copy could not be written.
    if not path.exists():
        return FILE_GONE
    return f"cannot prepare the file to send: {exc.strerror or exc} ({exc.filename})"


def _deliver_group(context: RunContext, session: Session, lease: Lease, destination: str,
                   decisions: Sequence[Decision], batch: BatchDestinations) -> list[Decision]:
    """Send one group's instances and return those that the transfer syntax policy holds back for the sin bin."""
    config = _destination_config(context, destination)
    pairs = _proposed(decisions, config.on_transfer_syntax_rejected == "decompress")
    work = _WorkQueue(decisions)
    hold_back = destination != SINBIN and config.on_transfer_syntax_rejected == "sinbin"
    recorder = _Recorder(session, lease, destination, config.audit_commit_seconds, work, hold_back, batch)
    try:
        refused = _send_group(context, session, lease, destination, config, pairs, work, recorder)
        # Only an unreachable or failing destination is given up; one that rejected
        # these instances' presentation contexts may take the next study's.
        if refused is not None and refused.transient:
            batch.given_up[destination] = refused
        if unsent := work.take_all():
            # Every session ended with a DestinationError before the queue was empty.
            assert recorder.last_error is not None
            recorder.record(_Unsent(unsent, recorder.last_error))
            if recorder.last_error.transient:
                batch.given_up[destination] = recorder.last_error
    except BaseException:
        # The outcomes already written are facts, whatever ended the group.
        try:
            recorder.commit()
        except Exception:
            LOGGER.exception("batch %d: the outcomes recorded for %s could not be committed",
                             lease.batch_id, destination)
        raise
    recorder.finish()
    if recorder.decompressed:
        LOGGER.info("batch %d: %d instance(s) sent to %s as decoded copies in Explicit VR Little "
                    "Endian, %d of them from a lossy transfer syntax", lease.batch_id,
                    recorder.decompressed, destination, recorder.decompressed_lossy)
    return recorder.held_back


def _send_group(context: RunContext, session: Session, lease: Lease, destination: str,
                config: DestinationConfig, pairs: set[ContextKey], work: _WorkQueue,
                recorder: _Recorder) -> DestinationError | None:
    """Send the work queue's instances; return the error if no association slot could be had."""
    first = DestinationGuard(destination, config, context.limiter, context.breaker)
    try:
        first.keep()  # the first slot before any extra one, so parallel sessions never starve it
    except DestinationError as exc:
        recorder.record(_Unsent(work.take_all(), exc))
        return exc
    extra = _extra_guards(context, destination, config, work.size)
    with ScratchFolder() as scratch:
        senders = [_Sender(context, destination, config, pairs, guard, work, scratch)
                   for guard in (first, *extra)]
        if len(senders) == 1:
            with closing(senders[0].events()) as events:
                for event in events:
                    recorder.record(event)
        else:
            _run_in_threads(recorder, work, senders)
    return None


def _extra_guards(context: RunContext, destination: str, config: DestinationConfig,
                  instances: int) -> list[DestinationGuard]:
    """Take association slots for the sessions beyond the first, as many as are free now."""
    extra = min(config.parallel_associations, instances) - 1
    guards: list[DestinationGuard] = []
    for _ in range(extra):
        guard = DestinationGuard(destination, config, context.limiter, context.breaker)
        if not guard.try_hold():
            break
        guards.append(guard)
    return guards


_DONE = object()


def _run_in_threads(recorder: _Recorder, work: _WorkQueue,
                    senders: list[_Sender]) -> None:
    """Run each sender in a thread of its own and record their events in this thread."""
    events: queue.Queue[object] = queue.Queue()

    def run(sender: _Sender) -> None:
        try:
            for event in sender.events():
                events.put(event)
        except BaseException as exc:  # raised again in the recording thread
            events.put(exc)
        finally:
            events.put(_DONE)

    threads = [threading.Thread(target=run, args=(sender,), name=f"send-{index}", daemon=True)
               for index, sender in enumerate(senders)]
    for thread in threads:
        thread.start()
    running = len(threads)
    failure: BaseException | None = None
    try:
        while running:
            item = events.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                work.stopped = True
                failure = failure or item
            else:
                try:
                    recorder.record(cast(_Event, item))
                except LeaseLost as exc:
                    # Take no more instances; those in flight still end and are recorded.
                    work.stopped = True
                    failure = failure or exc
    except BaseException:
        # Recording failed (or Ctrl-C): stop the senders before leaving.
        work.stopped = True
        raise
    finally:
        for thread in threads:
            thread.join()
    if failure is not None:
        raise failure


class _Recorder:
    """Writes the audit row and outcome of each event, committing per audit_commit_seconds.

    Recording also renews the batch's lease. When the state database
    rejects a write (it is full, restarting or unreachable), the recorder
    pauses the work queue, so no session takes another instance, and writes
    the uncommitted outcomes again until the database takes them. An
    instance that was sent is then recorded once instead of being sent
    again by a later attempt at the batch.
    """

    def __init__(self, session: Session, lease: Lease, destination: str, commit_seconds: float,
                 work: _WorkQueue, hold_back: bool = False, batch: BatchDestinations | None = None) -> None:
        self._session = session
        self._batch = BatchDestinations() if batch is None else batch
        self._lease = lease
        self._batch_id = lease.batch_id
        self._destination = destination
        self._commit_seconds = commit_seconds
        self._committed = time.monotonic()
        self._work = work
        #: Outcomes written since the last commit, written again if the transaction is lost.
        self._uncommitted: list[audit.Record] = []
        #: Send compressed instances whose presentation context was rejected to the sin bin.
        self._hold_back = hold_back
        #: The error that ended the last session which failed.
        self.last_error: DestinationError | None = None
        #: Instances routed to the sin bin instead, without an outcome yet.
        self.held_back: list[Decision] = []
        #: Instances sent as decoded copies, and how many of them from a lossy transfer syntax.
        self.decompressed = 0
        self.decompressed_lossy = 0

    def commit(self) -> None:
        self._session.commit()
        self._uncommitted.clear()
        self._committed = time.monotonic()

    def finish(self) -> None:
        """Commit the outcomes not committed yet, waiting for the state database if it fails."""
        self._store([], commit=True)

    def record(self, event: _Event) -> None:
        """Write the outcomes of ``event`` and renew the lease when it is due.

        Raises
        ------
        LeaseLost
            Another worker took the batch over.
        OperationalError
            The state database did not take the outcomes before the lease expired.
        """
        if isinstance(event, _Stored):
            records = self._stored(event.attempt, event.result)
        elif isinstance(event, _Unprepared):
            records = [_record(event.decision, self._batch_id, Outcome.FAILED,
                               destination=self._destination, reason=event.reason,
                               started_at=event.started)]
        else:
            records = self._unsent(event.decisions, event.error)
        self._store(records)

    def _store(self, records: list[audit.Record], commit: bool = False) -> None:
        self._uncommitted += records
        try:
            self._write(records, commit)
        except OperationalError as exc:
            self._wait_for_database(exc)

    def _write(self, records: list[audit.Record], commit: bool) -> None:
        for record in records:
            audit.write(self._session, record, commit=False)
        renew = audit.now() - self._lease.renewed_at >= RENEW_EVERY
        # The lease's renewal commits the session, so the outcomes are committed first.
        if commit or renew or time.monotonic() - self._committed >= self._commit_seconds:
            self.commit()
        if renew:
            self._lease.renew(self._session)

    def _wait_for_database(self, error: OperationalError) -> None:
        """Write the uncommitted outcomes again until the state database takes them.

        Gives up, raising the last error, when the lease is about to expire,
        because another worker may then take the batch over. While the
        database accepts the lease's renewal the wait goes on.
        """
        started = logged = time.monotonic()
        LOGGER.warning("batch %d: the state database cannot record outcomes (%s); no instance is "
                       "sent until it can, and then the batch goes on by itself%s", self._batch_id,
                       _database_error(error), _database_hint(error))
        self._work.pause()
        try:
            while True:
                self._rollback()
                self._keep_lease()
                expires_in = (self._lease.renewed_at + LEASE - audit.now()).total_seconds()
                if expires_in < 2 * GIVE_BACK_POLL_SECONDS:
                    LOGGER.error("batch %d: the state database still cannot record outcomes (%s); "
                                 "the batch stops before its lease expires", self._batch_id,
                                 _database_error(error))
                    raise error
                time.sleep(GIVE_BACK_POLL_SECONDS)
                try:
                    self._write(list(self._uncommitted), commit=True)
                    break
                except OperationalError as exc:
                    error = exc
                if time.monotonic() - logged >= STILL_WAITING_LOG_SECONDS:
                    logged = time.monotonic()
                    LOGGER.warning("batch %d: still waiting for the state database to record "
                                   "outcomes after %d s (%s)%s", self._batch_id, logged - started,
                                   _database_error(error), _database_hint(error))
        except BaseException:
            self._work.stopped = True  # nothing more is sent by this attempt at the batch
            raise
        finally:
            self._work.resume()
        LOGGER.warning("batch %d: the state database records outcomes again after %d s; the batch "
                       "goes on", self._batch_id, time.monotonic() - started)

    def _rollback(self) -> None:
        try:
            self._session.rollback()
        except SQLAlchemyError as exc:
            LOGGER.debug("batch %d: rollback failed: %s", self._batch_id, exc)

    def _keep_lease(self) -> None:
        """Renew the lease if it is due and the state database takes that write."""
        try:
            self._lease.renew(self._session)
        except OperationalError:
            self._rollback()

    def _count_silence(self, result: StoreResult) -> None:
        """Give the destination up once the batch's C-STOREs meet MAX_SILENT_STORES silences in a row."""
        if result.status is not None:
            self._batch.silent[self._destination] = 0
            return
        if not result.transient or result.context_rejected:
            return  # nothing was sent: a file that cannot be read or encoded, or no context
        self._batch.silent[self._destination] += 1
        count = self._batch.silent[self._destination]
        if count >= MAX_SILENT_STORES and self._destination not in self._batch.given_up:
            error = silent_destination(self._destination, count)
            self.last_error = error
            self._batch.given_up[self._destination] = error
            self._work.stopped = True

    def _stored(self, attempt: _Attempt, result: StoreResult) -> list[audit.Record]:
        decision = attempt.decision
        if self._hold_back and result.context_rejected and is_compressed(attempt.prepared.transfer_syntax):
            self.held_back.append(_held_back(decision, self._destination, result.detail or ""))
            return []
        self._count_silence(result)
        outcome, reason = _classify(result, self._destination == SINBIN, decision)
        if (outcome is Outcome.FAILED and result.status is None and not result.transient
                and attempt.prepared.method is Method.AS_STORED and not decision.path.exists()):
            # The stored file vanished between its preparation and its C-STORE.
            reason = f"{decision.path}: {FILE_GONE}"
        if outcome is Outcome.FAILED:
            LOGGER.warning("instance %d (%s) to %s failed: %s", decision.instance.id, decision.path,
                           self._destination, reason)
        changes = [change.as_dict() for change in attempt.prepared.changes]
        if result.conversion is not None:
            changes += result.conversion.as_dicts()
            self.decompressed += 1
            self.decompressed_lossy += result.conversion.lossy_source
        return [_record(
            decision, self._batch_id, outcome, destination=self._destination, reason=reason,
            dimse_status=result.status, transient=outcome is Outcome.FAILED and result.transient,
            changes=changes, started_at=attempt.started,
        )]

    def _unsent(self, decisions: list[Decision], error: DestinationError) -> list[audit.Record]:
        self.last_error = error
        if self._hold_back and isinstance(error, ContextsRejected):
            # The destination accepted no context at all: hold back the compressed ones.
            remaining = []
            for decision in decisions:
                pair = _pair(decision)
                if pair not in error.pairs or not is_compressed(pair[1]):
                    remaining.append(decision)
                    continue
                detail = not_accepted(self._destination, *pair).detail or ""
                self.held_back.append(_held_back(decision, self._destination, detail))
            decisions = remaining
        if not decisions:
            return []
        LOGGER.warning("batch %d: %s; %d instance(s) failed", self._batch_id, error, len(decisions))
        return [_record(decision, self._batch_id, Outcome.FAILED, destination=self._destination,
                        reason=str(error), transient=error.transient)
                for decision in decisions]


def _database_error(error: OperationalError) -> str:
    """Return the first line of the database's message, without the statement SQLAlchemy appends."""
    return str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)


def _database_hint(error: OperationalError) -> str:
    # SQLSTATE 53100 is PostgreSQL's disk_full, SQLITE_FULL (13) SQLite's.
    full = (getattr(error.orig, "sqlstate", None) == "53100"
            or getattr(error.orig, "sqlite_errorcode", None) == 13)
    return "; free space on the state database's disk" if full else ""


def _classify(result: StoreResult, to_sinbin: bool, decision: Decision) -> tuple[Outcome, str | None]:
    held_back = decision.route.reason
    details = [d for d in (decision.route.detail, decision.reconciliation.detail) if d]
    if details and to_sinbin:
        held_back = f"{held_back}: {'; '.join(details)}"
    if result.category == "failure":
        if to_sinbin:
            return Outcome.FAILED, f"sin bin store failed ({result.detail}); held back as {held_back}"
        return Outcome.FAILED, result.detail
    if to_sinbin:
        warning = f" ({result.detail})" if result.detail else ""
        return Outcome.SINBINNED, f"{held_back}{warning}"
    if result.category == "warning":
        return Outcome.SENT_WITH_WARNING, result.detail
    return Outcome.SENT, None
