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
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime
from typing import cast

from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SINBIN, DestinationConfig
from migrator.context import RunContext
from migrator.dicom.decompress import Decompressor
from migrator.dicom.engines import open_engine
from migrator.dicom.prepare import (
    Corrections,
    EncodeError,
    PreparedFile,
    ScratchFolder,
    prepare_file,
)
from migrator.dicom.read import UnreadableFile
from migrator.dicom.send import (
    MAX_CONTEXTS,
    ContextKey,
    ContextsRejected,
    DestinationGuard,
    StoreResult,
    is_compressed,
    not_accepted,
    with_decompressed_contexts,
)
from migrator.errors import DestinationError
from migrator.pipeline.decide import Decision
from migrator.pipeline.lease import Lease, LeaseLost
from migrator.route import Route
from migrator.state.models import Outcome
from migrator.steps import StepContext, run_steps

LOGGER = logging.getLogger(__name__)

#: The sin bin reason of an instance held back by on_transfer_syntax_rejected = "sinbin".
TRANSFER_SYNTAX_REJECTED = "transfer_syntax_rejected"


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
            decisions: Sequence[Decision]) -> None:
    """Send ``decisions`` to ``destination`` (a name or the sin bin), recording each outcome.

    With ``on_transfer_syntax_rejected = "sinbin"``, the instances whose
    stored transfer syntax the destination did not accept are then sent to
    the sin bin.

    Raises
    ------
    LeaseLost
        Another worker took the batch over; nothing more is sent.
    ConfigError
        The destination's engine cannot run on this machine.
    """
    decompress = _destination_config(context, destination).on_transfer_syntax_rejected == "decompress"
    held_back: list[Decision] = []
    for group in _context_groups(decisions, decompress):
        held_back += _deliver_group(context, session, lease, destination, group)
    if held_back:
        LOGGER.info("batch %d: %d instance(s) whose transfer syntax %s did not accept go to the "
                    "sin bin (on_transfer_syntax_rejected = \"sinbin\")", lease.batch_id,
                    len(held_back), destination)
        deliver(context, session, lease, SINBIN, held_back)


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
        self.stopped = False

    @property
    def size(self) -> int:
        return len(self._decisions)

    def take(self) -> Decision | None:
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
            except (UnreadableFile, EncodeError) as exc:
                LOGGER.warning("instance %d (%s): %s", decision.instance.id, decision.path, exc)
                self._unprepared.append(_Unprepared(decision, f"{decision.path}: {exc}", started))
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


def _deliver_group(context: RunContext, session: Session, lease: Lease, destination: str,
                   decisions: Sequence[Decision]) -> list[Decision]:
    """Send one group's instances and return those that the transfer syntax policy holds back for the sin bin."""
    config = _destination_config(context, destination)
    pairs = _proposed(decisions, config.on_transfer_syntax_rejected == "decompress")
    work = _WorkQueue(decisions)
    hold_back = destination != SINBIN and config.on_transfer_syntax_rejected == "sinbin"
    recorder = _Recorder(session, lease.batch_id, destination, config.audit_commit_seconds, hold_back)
    try:
        _send_group(context, session, lease, destination, config, pairs, work, recorder)
        if unsent := work.take_all():
            # Every session ended with a DestinationError before the queue was empty.
            assert recorder.last_error is not None
            recorder.record(_Unsent(unsent, recorder.last_error))
    except BaseException:
        # The outcomes already written are facts, whatever ended the group.
        try:
            recorder.commit()
        except Exception:
            LOGGER.exception("batch %d: the outcomes recorded for %s could not be committed",
                             lease.batch_id, destination)
        raise
    recorder.commit()
    if recorder.decompressed:
        LOGGER.info("batch %d: %d instance(s) sent to %s as decoded copies in Explicit VR Little "
                    "Endian, %d of them from a lossy transfer syntax", lease.batch_id,
                    recorder.decompressed, destination, recorder.decompressed_lossy)
    return recorder.held_back


def _send_group(context: RunContext, session: Session, lease: Lease, destination: str,
                config: DestinationConfig, pairs: set[ContextKey], work: _WorkQueue,
                recorder: _Recorder) -> None:
    first = DestinationGuard(destination, config, context.limiter, context.breaker)
    try:
        first.keep()  # the first slot before any extra one, so parallel sessions never starve it
    except DestinationError as exc:
        recorder.record(_Unsent(work.take_all(), exc))
        return
    extra = _extra_guards(context, destination, config, work.size)
    with ScratchFolder() as scratch:
        senders = [_Sender(context, destination, config, pairs, guard, work, scratch)
                   for guard in (first, *extra)]
        if len(senders) == 1:
            with closing(senders[0].events()) as events:
                for event in events:
                    recorder.record(event)
                    lease.renew(session)
        else:
            _run_in_threads(session, lease, recorder, work, senders)


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


def _run_in_threads(session: Session, lease: Lease, recorder: _Recorder, work: _WorkQueue,
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
                recorder.record(cast(_Event, item))
                try:
                    lease.renew(session)
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
    """Writes the audit row and outcome of each event, committing per audit_commit_seconds."""

    def __init__(self, session: Session, batch_id: int, destination: str,
                 commit_seconds: float, hold_back: bool = False) -> None:
        self._session = session
        self._batch_id = batch_id
        self._destination = destination
        self._commit_seconds = commit_seconds
        self._committed = time.monotonic()
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
        self._committed = time.monotonic()

    def _written(self) -> None:
        if time.monotonic() - self._committed >= self._commit_seconds:
            self.commit()

    def record(self, event: _Event) -> None:
        if isinstance(event, _Stored):
            self._stored(event.attempt, event.result)
        elif isinstance(event, _Unprepared):
            audit.write(self._session, _record(
                event.decision, self._batch_id, Outcome.FAILED, destination=self._destination,
                reason=event.reason, started_at=event.started), commit=False)
        else:
            self._unsent(event.decisions, event.error)
        self._written()

    def _stored(self, attempt: _Attempt, result: StoreResult) -> None:
        decision = attempt.decision
        if self._hold_back and result.context_rejected and is_compressed(attempt.prepared.transfer_syntax):
            self.held_back.append(_held_back(decision, self._destination, result.detail or ""))
            return
        outcome, reason = _classify(result, self._destination == SINBIN, decision)
        if outcome is Outcome.FAILED:
            LOGGER.warning("instance %d (%s) to %s failed: %s", decision.instance.id, decision.path,
                           self._destination, reason)
        changes = [change.as_dict() for change in attempt.prepared.changes]
        if result.conversion is not None:
            changes += result.conversion.as_dicts()
            self.decompressed += 1
            self.decompressed_lossy += result.conversion.lossy_source
        audit.write(self._session, _record(
            decision, self._batch_id, outcome, destination=self._destination, reason=reason,
            dimse_status=result.status, transient=outcome is Outcome.FAILED and result.transient,
            changes=changes, started_at=attempt.started,
        ), commit=False)

    def _unsent(self, decisions: list[Decision], error: DestinationError) -> None:
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
            return
        LOGGER.warning("batch %d: %s; %d instance(s) failed", self._batch_id, error, len(decisions))
        for decision in decisions:
            audit.write(self._session, _record(
                decision, self._batch_id, Outcome.FAILED, destination=self._destination,
                reason=str(error), transient=error.transient), commit=False)


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
