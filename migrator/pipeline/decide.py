"""Reconcile and route the instances of a batch from the index alone.

Files are not read here: the index contains every UID that reconciliation and
routing need, so a batch's decisions cost one legacy query per chunk and no
disk reads. Header values are compared later, when each file is read to be
sent. An instance in a collision that the plan found is held back or let
through by the collision policies before the routing rules apply.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from migrator.collisions.policy import Verdict, collision_verdict, load_chunk_collisions
from migrator.config import SINBIN, ReconcileOutcome
from migrator.context import RunContext
from migrator.reconcile.legacy import chunked
from migrator.reconcile.outcome import IndexedFile, Reconciliation, reconcile
from migrator.route import Route, RouteFacts, Router
from migrator.state.models import Instance, StorageRoot
from migrator.transform.hold import hold_for_transformation, listed_uids


@dataclass(frozen=True)
class Decision:
    """The routing decision for one instance, with its reconciliation."""

    instance: Instance
    root: str
    path: Path
    reconciliation: Reconciliation
    route: Route


def _same_uid_files(session: Session, uids: Sequence[str], chunk: int) -> dict[str, list[IndexedFile]]:
    found: dict[str, list[IndexedFile]] = defaultdict(list)
    for part in chunked(list(uids), chunk):
        rows = session.execute(
            select(Instance.id, StorageRoot.name, Instance.rel_path, Instance.sop_instance_uid)
            .join(StorageRoot, StorageRoot.id == Instance.root_id)
            .where(Instance.sop_instance_uid.in_(part))
        )
        for id_, root, rel_path, uid in rows:
            found[uid or ""].append(IndexedFile(id_, root, rel_path, uid or ""))
    return found


def decide(context: RunContext, session: Session, rows: Sequence[tuple[Instance, str]]) -> list[Decision]:
    """Reconcile and route ``rows`` (instance, root name), one legacy query per chunk."""
    settings = context.settings
    decisions: list[Decision] = []
    chunk_size = settings.legacy.chunk_size
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start:start + chunk_size]
        uids = sorted({instance.sop_instance_uid or "" for instance, _ in chunk})
        legacy_rows = context.legacy.fetch(uids)
        same_uid = _same_uid_files(session, uids, chunk_size)
        collisions = load_chunk_collisions(session, [instance.id for instance, _ in chunk])
        listed = listed_uids(session, uids)
        for instance, root in chunk:
            uid = instance.sop_instance_uid or ""
            indexed = IndexedFile(instance.id, root, instance.rel_path, uid)
            result = reconcile(indexed, legacy_rows.get(uid), same_uid.get(uid, [indexed]),
                               settings.legacy.path_column, context.mapper)
            verdict = collision_verdict(settings.collisions, collisions, instance.id, uid, legacy_rows.get(uid),
                                        settings.legacy.path_column, context.mapper)
            if verdict.chosen and result.outcome is ReconcileOutcome.DUPLICATE:
                # The policy chose this file over the one the legacy database references.
                result = Reconciliation(ReconcileOutcome.MATCHED, result.values)
            new_study = result.values.get("StudyInstanceUID")
            excluded = [uid for uid in (instance.study_uid, new_study) if uid in context.excluded_studies]
            facts = RouteFacts(
                sop_class_uid=instance.sop_class_uid or "",
                transfer_syntax=instance.transfer_syntax or "",
                has_pixel_data=bool(instance.has_pixel_data),
                modality=instance.modality,
                reconciliation=result.outcome,
                excluded_study=bool(excluded),
                excluded_study_uid=excluded[0] if excluded else None,
            )
            decisions.append(Decision(
                instance=instance,
                root=root,
                path=settings.resolve(settings.root(root).path) / instance.rel_path,
                reconciliation=result,
                route=hold_for_transformation(_route(context.router, facts, verdict), legacy_rows.get(uid),
                                              uid in listed),
            ))
    return decisions


def _route(router: Router, facts: RouteFacts, verdict: Verdict) -> Route:
    """Hold the instance back for a collision, or route it by the rules, naming the policy that let it through."""
    if verdict.hold:
        return Route(f"collision: {verdict.hold}", SINBIN, verdict.hold, verdict.detail)
    route = router.route(facts)
    if verdict.note:
        # The audit's route_rule column stores at most 200 characters.
        route = replace(route, rule=f"{route.rule} ({verdict.note})"[:200])
    return route
