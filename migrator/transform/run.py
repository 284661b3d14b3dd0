"""``migrator transform run``: retrieve, transform, send and record each listed instance.

Items are taken in chunks of ``transform.move_batch_size``. Each item's
instance is read from its indexed file when the index has a readable one,
and otherwise moved from the legacy PACS into our storage SCP. A received
instance that the index lacks is registered under the storage root
:data:`RECEIVED_ROOT`, whose path is ``transform.scp_folder``, so that its
audit rows, ``migrator trace`` and ``migrator verify`` find it like any
indexed file.

Each instance then passes the same correction step as in the migration,
the checks of :mod:`migrator.transform.geometry`, the pixel transformation
and the grid attribute updates, and is sent to ``transform.destination``.
An instance that the checks refuse is sent untransformed to the sin bin
with the reason ``transform_refused: ...``. Each ends with one outcome in
the audit, whose rule names the transformation and whose changes list
every attribute changed, and the item records its status. A sin bin item
of an earlier refusal is marked released to the destination once the
instance arrives there transformed.

NOTE: items are not leased, so two runs at the same time would both send
them; run one ``migrator transform run`` at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from migrator import audit
from migrator.config import SINBIN, DestinationConfig, Settings
from migrator.context import RunContext
from migrator.dicom.read import (
    UnreadableFile,
    read_header,
    read_instance,
    transfer_syntax_of,
)
from migrator.dicom.send import StoreResult, StoreSession
from migrator.errors import ConfigError, DestinationError
from migrator.reconcile.legacy import LegacyRow, legacy_values
from migrator.state.models import (
    Instance,
    Outcome,
    SinBinItem,
    StorageRoot,
    TransformItem,
    TransformStatus,
)
from migrator.steps import Change, StepContext, run_steps
from migrator.transform import geometry
from migrator.transform.hold import HoldImport, import_held_back
from migrator.transform.pixels import PixelError, transform_pixel_data
from migrator.transform.retrieve import LegacyPacs, ReceivingSCP
from migrator.transform.transformation import Transformation

LOGGER = logging.getLogger(__name__)

#: The storage root of instances received by C-MOVE that the index lacks.
#: The colon keeps it apart from configured root names, which cannot contain one.
RECEIVED_ROOT = "transform:c-move"
FROM_INDEX = "index"
FROM_C_MOVE = "c-move"
#: The start of the sin bin reason of a refused instance.
REFUSED = "transform_refused"
#: The audit's route_rule column stores at most 200 characters.
_RULE_LENGTH = 200
_STATUS_OF = {Outcome.SENT: TransformStatus.SENT, Outcome.SENT_WITH_WARNING: TransformStatus.SENT_WITH_WARNING,
              Outcome.SINBINNED: TransformStatus.SINBINNED, Outcome.FAILED: TransformStatus.FAILED}


@dataclass
class RunSummary:
    """The result of one ``migrator transform run``."""

    #: Item status after this run -> count, for the items it took.
    statuses: Counter[str] = field(default_factory=Counter)
    held: HoldImport = field(default_factory=HoldImport)


@dataclass
class _Source:
    """The file that an item's instance was read from, and how it came there."""

    instance_id: int
    path: Path
    retrieved_from: str


@dataclass
class _Work:
    """One item on its way through a chunk."""

    item: TransformItem
    transformation: Transformation
    started: datetime = field(default_factory=audit.now)
    source: _Source | None = None
    dataset: Dataset | None = None
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Why the checks refused the transformation; the instance goes to the sin bin.
    refusal: str | None = None
    #: True once this run recorded the item's outcome.
    recorded: bool = False

    @property
    def rule(self) -> str:
        return f"transform: {self.transformation.value} ({self.item.source_detail})"[:_RULE_LENGTH]


def destination_config(settings: Settings) -> DestinationConfig:
    """Return the configuration of ``transform.destination``.

    Raises
    ------
    ConfigError
        It names no configured destination.
    """
    name = settings.transform.destination
    if name not in settings.destinations:
        raise ConfigError(f"transform.destination '{name}' is not a configured destination; expected one "
                          f"of {', '.join(settings.destinations)}")
    return settings.destinations[name]


def run_transforms(context: RunContext, include_sinbinned: bool = False) -> RunSummary:
    """Transform and send every pending or failed item, and with ``include_sinbinned`` the sinbinned ones.

    Raises
    ------
    ConfigError
        ``transform.destination`` is not a configured destination.
    LegacyDatabaseError
        The reconciliation query failed.
    RetrieveError
        Our storage SCP cannot listen on its port.
    """
    settings = context.settings
    destination_config(settings)
    summary = RunSummary()
    statuses = [TransformStatus.PENDING.value, TransformStatus.FAILED.value]
    if include_sinbinned:
        statuses.append(TransformStatus.SINBINNED.value)
    with context.sessions() as session, contextlib.ExitStack() as stack:
        column = settings.legacy.transformation_column
        if column:
            summary.held = import_held_back(session, context.legacy, column)
        items = list(session.scalars(select(TransformItem).where(TransformItem.status.in_(statuses))
                                     .order_by(TransformItem.id)))
        LOGGER.info("%d transformation(s) to do", len(items))
        pacs: list[LegacyPacs] = []
        size = settings.transform.move_batch_size
        for start in range(0, len(items), size):
            chunk = [_Work(item, Transformation(item.transformation)) for item in items[start:start + size]]
            _run_chunk(context, session, stack, pacs, chunk)
            summary.statuses.update(work.item.status for work in chunk)
            LOGGER.info("transformations %d-%d of %d done", start + 1, start + len(chunk), len(items))
    return summary


def _run_chunk(context: RunContext, session: Session, stack: contextlib.ExitStack, pacs: list[LegacyPacs],
               chunk: list[_Work]) -> None:
    settings = context.settings
    to_move = []
    for work in chunk:
        work.source = _indexed_source(session, settings, work.item)
        if work.source is None:
            to_move.append(work)
    if to_move:
        _move(context, session, stack, pacs, to_move)
    located = [work for work in chunk if work.source is not None]
    rows = context.legacy.fetch([work.item.sop_instance_uid for work in located]) if located else {}
    ready = []
    for work in located:
        if _prepare(context, session, work, rows.get(work.item.sop_instance_uid)):
            ready.append(work)
    _send(context, session, settings.transform.destination, [w for w in ready if w.refusal is None])
    _send(context, session, SINBIN, [w for w in ready if w.refusal is not None])
    session.commit()


def _configured_roots(session: Session, settings: Settings) -> dict[int, str]:
    names = {root.name for root in settings.roots}
    return {id_: name for id_, name in session.execute(select(StorageRoot.id, StorageRoot.name))
            if name in names}


_RANK = {Outcome.SKIPPED.value: 0, None: 1, Outcome.FAILED.value: 2}


def _indexed_source(session: Session, settings: Settings, item: TransformItem) -> _Source | None:
    """Return the item's readable file in a configured root, or a file received earlier, or None."""
    roots = _configured_roots(session, settings)
    candidates = list(session.scalars(select(Instance).where(
        Instance.sop_instance_uid == item.sop_instance_uid, Instance.root_id.in_(roots),
        Instance.parse_error.is_(None)).order_by(Instance.id)))
    # A file held back for its transformation first, then one without an outcome.
    candidates.sort(key=lambda instance: _RANK.get(instance.outcome, 3))
    for instance in candidates:
        path = settings.resolve(settings.root(roots[instance.root_id]).path) / instance.rel_path
        if path.is_file():
            return _Source(instance.id, path, FROM_INDEX)
        LOGGER.warning("instance %d: indexed file %s is gone; retrieving it by C-MOVE", instance.id, path)
    if candidates:
        # The audit stays with the indexed instance whose file is gone.
        item.instance_id = candidates[0].id
        return None
    received = session.get(Instance, item.instance_id) if item.instance_id is not None else None
    root = session.get(StorageRoot, received.root_id) if received is not None else None
    if received is not None and root is not None and root.name == RECEIVED_ROOT:
        path = Path(root.path) / received.rel_path
        if path.is_file():
            return _Source(received.id, path, FROM_C_MOVE)
    return None


def _move(context: RunContext, session: Session, stack: contextlib.ExitStack, pacs: list[LegacyPacs],
          works: list[_Work]) -> None:
    """Move the instances of ``works`` from the legacy PACS; record a failure for those that do not arrive."""
    settings = context.settings
    config = settings.transform
    if config.legacy_ae_title is None:
        for work in works:
            _fail_without_instance(session, work, "not in the index, and no legacy PACS is configured to "
                                                  "retrieve it from; set transform.legacy_ae_title, "
                                                  "legacy_host and legacy_port")
        return
    if not pacs:
        # The SCP and the association live until the run ends; the first chunk that needs them opens them.
        assert config.scp_port is not None  # TransformConfig requires it with a legacy PACS
        scp = stack.enter_context(ReceivingSCP(config.scp_ae_title, config.scp_host, config.scp_port,
                                               [config.legacy_ae_title], settings.resolve(config.scp_folder)))
        pacs.append(stack.enter_context(LegacyPacs(settings.run.ae_title, config, scp)))
    result = pacs[0].move([work.item.sop_instance_uid for work in works])
    LOGGER.info("C-MOVE: %d of %d instance(s) received", len(result.received), len(works))
    for work in works:
        uid = work.item.sop_instance_uid
        if uid in result.missing:
            _fail_without_instance(session, work, result.missing[uid])
            continue
        path = result.received[uid]
        try:
            instance_id = _register(session, settings, path, work.item.instance_id)
        except UnreadableFile as exc:
            _fail_without_instance(session, work, f"received from the legacy PACS, but {path}: {exc}")
            continue
        work.source = _Source(instance_id, path, FROM_C_MOVE)


def _received_root(session: Session, settings: Settings) -> StorageRoot:
    folder = str(settings.resolve(settings.transform.scp_folder).resolve())
    root = session.scalar(select(StorageRoot).where(StorageRoot.name == RECEIVED_ROOT))
    if root is None:
        root = StorageRoot(name=RECEIVED_ROOT, path=folder)
        session.add(root)
        session.flush()
    elif root.path != folder:
        root.path = folder
    return root


def _register(session: Session, settings: Settings, path: Path, indexed_id: int | None) -> int:
    """Return the instance id for a received file: the item's indexed instance, or a row under RECEIVED_ROOT.

    Raises
    ------
    UnreadableFile
        The received file cannot be parsed.
    """
    header = read_header(path)
    if indexed_id is not None:
        indexed = session.get(Instance, indexed_id)
        if indexed is not None and indexed.root_id in _configured_roots(session, settings):
            return indexed.id
    root = _received_root(session, settings)
    instance = session.scalar(select(Instance).where(Instance.root_id == root.id,
                                                     Instance.rel_path == path.name))
    stat = path.stat()
    if instance is None:
        instance = Instance(root_id=root.id, rel_path=path.name, folder="", indexed_at=audit.now())
        session.add(instance)
    instance.size, instance.mtime_ns = stat.st_size, stat.st_mtime_ns
    instance.transfer_syntax, instance.sop_class_uid = header.transfer_syntax, header.sop_class_uid
    instance.sop_instance_uid, instance.study_uid = header.sop_instance_uid, header.study_uid
    instance.series_uid, instance.modality = header.series_uid, header.modality
    instance.has_pixel_data = header.has_pixel_data
    session.flush()
    return instance.id


def _fail_without_instance(session: Session, work: _Work, reason: str) -> None:
    """Record a failure on the item, and in the audit when the instance is known, leaving its outcome unchanged."""
    LOGGER.warning("transform item %d: %s", work.item.id, reason)
    if work.item.instance_id is not None:
        audit.write(session, audit.Record(instance_id=work.item.instance_id, outcome=Outcome.FAILED,
                                          route_rule=work.rule, reason=reason, started_at=work.started),
                    commit=False, final=False)
    _finish(work, TransformStatus.FAILED, reason)


def _finish(work: _Work, status: TransformStatus, reason: str | None, destination: str | None = None) -> None:
    work.recorded = True
    item = work.item
    item.status = status.value
    item.reason = reason
    item.attempts += 1
    item.finished_at = audit.now()
    item.destination = destination
    if work.source is not None:
        item.instance_id = work.source.instance_id
        item.retrieved_from = work.source.retrieved_from


def _held_by_migration(context: RunContext, instance: Instance, work: _Work, row: LegacyRow | None) -> str | None:
    """Return why the migration keeps this instance back for review, which a transform must not bypass."""
    if instance.outcome == Outcome.SINBINNED.value and work.item.status != TransformStatus.SINBINNED.value:
        return ("held in the sin bin by the migration; review it there and release it with 'migrator "
                "sinbin release' before transforming it")
    if row is None:
        return ("no row in the legacy database (an orphan, which the migration holds in the sin bin for "
                "review); resolve it in the legacy database first")
    study = str(row.get("StudyInstanceUID") or instance.study_uid or "")
    if study in context.excluded_studies or instance.study_uid in context.excluded_studies:
        return f"study {study} is on the exclusion list, so the migration does not send it"
    return None


def _prepare(context: RunContext, session: Session, work: _Work, row: LegacyRow | None) -> bool:
    """Read, check, correct and transform one instance; return False when it failed and is recorded."""
    settings = context.settings
    assert work.source is not None
    instance = session.get_one(Instance, work.source.instance_id)
    delivered = [Outcome.SENT.value, Outcome.SENT_WITH_WARNING.value]
    # Any file of this UID counts: a duplicate's copy may have been sent while this one was held.
    sent = session.scalar(select(Instance.outcome).where(
        Instance.sop_instance_uid == work.item.sop_instance_uid, Instance.outcome.in_(delivered)).limit(1))
    if sent is not None and not settings.transform.new_uid:
        _record(session, work, Outcome.FAILED, final=False, reason=(
            f"already {sent} untransformed by the migration; a destination may keep the first "
            "instance it receives with a SOP Instance UID, so set transform.new_uid = true to send the "
            "transformed image under a new one"))
        return False
    if refusal := _held_by_migration(context, instance, work, row):
        _record(session, work, Outcome.FAILED, final=False, reason=refusal)
        return False
    try:
        ds = read_instance(work.source.path)
    except UnreadableFile as exc:
        _record(session, work, Outcome.FAILED, reason=f"{work.source.path}: {exc}")
        return False
    if str(ds.get("SOPInstanceUID", "")) != work.item.sop_instance_uid:
        _record(session, work, Outcome.FAILED, reason=f"{work.source.path} carries another SOP Instance UID "
                                                      "than the one listed")
        return False
    work.dataset = ds

    try:
        geometry.check(ds, work.transformation, settings.transform.allow_patient_geometry)
    except geometry.Refused as exc:
        work.refusal = f"{REFUSED}: {exc}"
        return True
    values = legacy_values(row, settings.legacy.path_column) if row else {}
    work.changes += run_steps(context.steps, ds, StepContext(work.source.instance_id, values))

    rows, columns = int(ds.Rows), int(ds.Columns)
    try:
        pixels = transform_pixel_data(ds, work.transformation)
    except PixelError as exc:
        _record(session, work, Outcome.FAILED, reason=f"{work.source.path}: {exc}")
        return False
    work.changes += pixels.changes
    work.notes += pixels.notes
    work.changes += geometry.update(ds, work.transformation, rows, columns)
    if settings.transform.new_uid:
        work.changes += _give_new_uid(ds, work.transformation)
    return True


def _give_new_uid(ds: Dataset, transformation: Transformation) -> list[Change]:
    old = str(ds.SOPInstanceUID)
    new = generate_uid()
    ds.SOPInstanceUID = new
    ds.file_meta.MediaStorageSOPInstanceUID = new
    description = (f"Pixel data {transformation.description} from SOP Instance UID {old}, applying the "
                   "display transformation that the legacy PACS recorded")
    old_description = ds.get("DerivationDescription")
    ds.DerivationDescription = f"{old_description}; {description}" if old_description else description
    return [Change("SOPInstanceUID", old, new),
            Change("DerivationDescription", None if old_description is None else str(old_description),
                   str(ds.DerivationDescription))]


def _send(context: RunContext, session: Session, name: str, works: Sequence[_Work]) -> None:
    """Send the prepared data sets of ``works`` to destination ``name`` or the sin bin, recording each outcome."""
    if not works:
        return
    settings = context.settings
    config = settings.sinbin if name == SINBIN else settings.destinations[name]
    pairs = {_pair(work) for work in works}
    try:
        with StoreSession(settings.run.ae_title, name, config, pairs, context.limiter, context.breaker) as store:
            for work in works:
                assert work.dataset is not None
                sop_class, syntax = _pair(work)
                _record_store(session, work, name, store.store(work.dataset, sop_class, syntax))
    except DestinationError as exc:
        for work in works:
            if not work.recorded:
                _record(session, work, Outcome.FAILED, destination=name, reason=str(exc),
                        transient=exc.transient)


def _pair(work: _Work) -> tuple[str, str]:
    assert work.dataset is not None
    return str(work.dataset.SOPClassUID), str(transfer_syntax_of(work.dataset))


def _record_store(session: Session, work: _Work, name: str, result: StoreResult) -> None:
    if result.category == "failure":
        _record(session, work, Outcome.FAILED, destination=name, dimse_status=result.status,
                reason=result.detail, transient=result.transient)
    elif work.refusal is not None:
        _record(session, work, Outcome.SINBINNED, destination=name, dimse_status=result.status,
                reason=work.refusal)
    else:
        outcome = Outcome.SENT if result.category == "success" else Outcome.SENT_WITH_WARNING
        _record(session, work, outcome, destination=name, dimse_status=result.status, reason=result.detail)


def _record(session: Session, work: _Work, outcome: Outcome, *, destination: str | None = None,
            dimse_status: int | None = None, reason: str | None = None, transient: bool = False,
            final: bool = True) -> None:
    """Write the audit row of the attempt and the item's status.

    An instance that the migration already sent keeps that outcome: it is
    at the destination whatever happens to its transformed copy.
    """
    assert work.source is not None
    current = session.scalar(select(Instance.outcome).where(Instance.id == work.source.instance_id))
    final = final and current not in (Outcome.SENT.value, Outcome.SENT_WITH_WARNING.value)
    description = _description(work, outcome)
    full_reason = "; ".join(part for part in (reason, description) if part)
    audit.write(session, audit.Record(
        instance_id=work.source.instance_id, outcome=outcome, destination=destination,
        dimse_status=dimse_status, route_rule=work.rule, reason=full_reason, transient=transient,
        changes=[change.as_dict() for change in work.changes] if outcome is not Outcome.FAILED else None,
        started_at=work.started), commit=False, final=final)
    if outcome is Outcome.SINBINNED or outcome is Outcome.FAILED:
        status_reason = reason
    else:
        status_reason = "; ".join(work.notes) or None
    _finish(work, _STATUS_OF[outcome], status_reason, destination)
    if outcome in (Outcome.SENT, Outcome.SENT_WITH_WARNING) and work.dataset is not None:
        new_uid = str(work.dataset.SOPInstanceUID)
        work.item.new_sop_instance_uid = new_uid if new_uid != work.item.sop_instance_uid else None
        # An earlier refusal's sin bin item is settled: release would send the untransformed copy.
        session.execute(update(SinBinItem).where(
            SinBinItem.instance_id == work.source.instance_id, SinBinItem.released_at.is_(None),
            SinBinItem.reason.startswith(REFUSED)).values(released_to=destination, released_at=audit.now()))


def _description(work: _Work, outcome: Outcome) -> str:
    """Say what was sent and where it was read from."""
    assert work.source is not None
    where = ("read from the indexed file" if work.source.retrieved_from == FROM_INDEX
             else "retrieved by C-MOVE from the legacy PACS")
    if outcome in (Outcome.SENT, Outcome.SENT_WITH_WARNING):
        return "; ".join([f"{work.transformation.description}, {where}", *work.notes])
    if outcome is Outcome.SINBINNED:
        return f"sent untransformed, {where}"
    return where
