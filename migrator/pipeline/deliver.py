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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SINBIN, DestinationConfig
from migrator.context import RunContext
from migrator.dicom.engines import open_engine
from migrator.dicom.prepare import (
    Corrections,
    EncodeError,
    PreparedFile,
    ScratchFolder,
    prepare_file,
)
from migrator.dicom.read import UnreadableFile
from migrator.dicom.send import MAX_CONTEXTS, ContextKey, DestinationGuard, StoreResult
from migrator.errors import DestinationError
from migrator.pipeline.decide import Decision
from migrator.pipeline.lease import Lease, LeaseLost
from migrator.state.models import Outcome
from migrator.steps import StepContext, run_steps

LOGGER = logging.getLogger(__name__)


def _context_groups(decisions: Sequence[Decision]) -> list[list[Decision]]:
    """Split decisions so that no association needs more than 128 contexts."""
    groups: list[list[Decision]] = []
    pairs: set[tuple[str, str]] = set()
    for decision in decisions:
        pair = (decision.instance.sop_class_uid or "", decision.instance.transfer_syntax or "")
        if not groups or (pair not in pairs and len(pairs) >= MAX_CONTEXTS):
            groups.append([])
            pairs = set()
        pairs.add(pair)
        groups[-1].append(decision)
    return groups


def deliver(context: RunContext, session: Session, lease: Lease, destination: str,
            decisions: Sequence[Decision]) -> None:
    """Send ``decisions`` to ``destination`` (a name or the sin bin), recording each outcome.

    Raises
    ------
    LeaseLost
        Another worker took the batch over; nothing more is sent.
    ConfigError
        The destination's engine cannot run on this machine.
    """
    for group in _context_groups(decisions):
        _deliver_group(context, session, lease, destination, group)


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
        self._unprepared: deque[_Unprepared] = deque()
        #: Attempts handed to the engine whose result has not come back yet.
        self._in_engine: dict[int, _Attempt] = {}

    def events(self) -> Generator[_Event, None, None]:
        """Yield an event per instance taken from the queue, as each outcome becomes known."""
        engine = open_engine(self._context.settings.run.ae_title, self._destination, self._config,
                             self._pairs, self._guard)
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
                   decisions: Sequence[Decision]) -> None:
    settings = context.settings
    config = settings.sinbin if destination == SINBIN else settings.destinations[destination]
    pairs = {(d.instance.sop_class_uid or "", d.instance.transfer_syntax or "") for d in decisions}
    work = _WorkQueue(decisions)
    recorder = _Recorder(session, lease.batch_id, destination, config.audit_commit_seconds)
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
                 commit_seconds: float) -> None:
        self._session = session
        self._batch_id = batch_id
        self._destination = destination
        self._commit_seconds = commit_seconds
        self._committed = time.monotonic()
        #: The error that ended the last session which failed.
        self.last_error: DestinationError | None = None

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
        outcome, reason = _classify(result, self._destination == SINBIN, decision)
        if outcome is Outcome.FAILED:
            LOGGER.warning("instance %d (%s) to %s failed: %s", decision.instance.id, decision.path,
                           self._destination, reason)
        audit.write(self._session, _record(
            decision, self._batch_id, outcome, destination=self._destination, reason=reason,
            dimse_status=result.status, transient=outcome is Outcome.FAILED and result.transient,
            changes=[change.as_dict() for change in attempt.prepared.changes],
            started_at=attempt.started,
        ), commit=False)

    def _unsent(self, decisions: list[Decision], error: DestinationError) -> None:
        self.last_error = error
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
