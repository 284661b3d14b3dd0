"""Checks before a run sends anything."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator.context import RunContext
from migrator.errors import LegacyDatabaseError
from migrator.state.models import Instance

#: Pending instances whose UIDs are looked up before a run starts.
SAMPLE_SIZE = 200
#: Below this many pending instances, finding none of them is plausible.
MIN_SAMPLE = 20


def check_legacy_matches(context: RunContext, session: Session) -> None:
    """Stop the run when the legacy query finds none of a sample of pending UIDs.

    A wrong legacy URL or a broken query would otherwise make every
    instance an orphan and fill the sin bin with the whole archive.

    Raises
    ------
    LegacyDatabaseError
        None of at least ``MIN_SAMPLE`` sampled UIDs has a legacy row, and
        ``legacy.allow_no_matches`` is not set.
    """
    if context.settings.legacy.allow_no_matches:
        return
    uids = list(session.scalars(
        select(Instance.sop_instance_uid)
        .where(Instance.outcome.is_(None), Instance.sop_instance_uid.is_not(None),
               Instance.batch_id.is_not(None))
        .order_by(Instance.id).limit(SAMPLE_SIZE)))
    if len(uids) < MIN_SAMPLE:
        return
    if not context.legacy.fetch([uid for uid in uids if uid]):
        raise LegacyDatabaseError(
            f"the reconciliation query found none of {len(uids)} indexed SOP Instance UIDs, so "
            "every instance would go to the sin bin as an orphan; check legacy.url and legacy.query, "
            "or set legacy.allow_no_matches = true if the legacy database really lacks them")
