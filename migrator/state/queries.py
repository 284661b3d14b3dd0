"""Queries over the audit that several commands share."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Subquery, func, select

from migrator.state.models import AuditEntry, Instance


def last_attempts(*conditions: ColumnElement[bool]) -> Subquery:
    """Return a subquery with the id of the last audit entry of each instance matching ``conditions``.

    It is grouped, not correlated: PostgreSQL would run a correlated
    subquery once per audit row instead of once per matching instance.
    """
    return (select(func.max(AuditEntry.id).label("id"))
            .join(Instance, Instance.id == AuditEntry.instance_id)
            .where(*conditions)
            .group_by(AuditEntry.instance_id)
            .subquery("last_attempt"))
