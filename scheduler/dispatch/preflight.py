"""Checks before a run sends anything."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator.context import RunContext
from migrator.errors import LegacyDatabaseError
from migrator.state.models import Instance, StorageRoot

#: Pending instances per root whose UIDs are looked up before a run starts.
SAMPLE_SIZE = 200
#: Below this many pending instances, finding none of them is plausible.
MIN_SAMPLE = 10
#: Legacy paths needed before a root's prefix is judged.
MIN_PATHS = 5


def check_legacy_matches(context: RunContext, session: Session) -> None:
    """Stop the run when a sample of each root shows a wrong legacy database or prefix.

    A wrong legacy URL or a broken query would make every instance an
    orphan, and a wrong ``legacy_path_prefix`` would make every file of its
    root superseded: either fills the sin bin with a whole archive.

    Raises
    ------
    LegacyDatabaseError
        None of at least ``MIN_SAMPLE`` sampled UIDs of a root has a legacy
        row, or none of a root's legacy paths maps into that root. Setting
        ``legacy.allow_no_matches`` skips both checks.
    """
    settings = context.settings
    if settings.legacy.allow_no_matches:
        return
    path_column = settings.legacy.path_column
    for root_id, name in session.execute(select(StorageRoot.id, StorageRoot.name)):
        uids = [uid for uid in session.scalars(
            select(Instance.sop_instance_uid)
            .where(Instance.root_id == root_id, Instance.outcome.is_(None),
                   Instance.sop_instance_uid.is_not(None), Instance.batch_id.is_not(None))
            .order_by(Instance.id).limit(SAMPLE_SIZE)) if uid]
        if not uids:
            continue
        rows = context.legacy.fetch(uids)
        if len(uids) >= MIN_SAMPLE and not rows:
            raise LegacyDatabaseError(
                f"the reconciliation query found none of {len(uids)} indexed SOP Instance UIDs of "
                f"root {name}, so every instance would go to the sin bin as an orphan; check "
                "legacy.url and legacy.query, or set legacy.allow_no_matches = true if the legacy "
                "database really lacks them")
        paths = [str(row[path_column]) for row in rows.values() if path_column and row.get(path_column)]
        mapped = [context.mapper.map(path) for path in paths]
        if len(paths) >= MIN_PATHS and not any(target and target[0] == name for target in mapped):
            raise LegacyDatabaseError(
                f"none of {len(paths)} legacy paths of root {name}'s instances maps into root {name} "
                f"(for example {paths[0]!r}), so its files would count as superseded or duplicate; "
                f"correct legacy_path_prefix of root {name}, or set legacy.allow_no_matches = true "
                "if the legacy database really references other copies")
