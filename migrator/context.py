"""Everything a batch needs that outlives one batch: settings, databases, rules."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from migrator.audit import HOST
from migrator.config import Settings
from migrator.dicom.breaker import CircuitBreaker
from migrator.dicom.limit import AssociationLimiter
from migrator.reconcile.legacy import LegacyDatabase
from migrator.reconcile.outcome import PathMapper
from migrator.route import Router, load_exclusion_list
from migrator.state.db import open_state
from migrator.steps import Step
from migrator.steps.correct import correct_from_legacy


@dataclass
class RunContext:
    settings: Settings
    sessions: sessionmaker[Session]
    legacy: LegacyDatabase
    router: Router
    excluded_studies: frozenset[str]
    mapper: PathMapper
    #: Identifies this process in batch leases.
    owner: str = field(default_factory=lambda: f"{HOST}:{os.getpid()}")
    steps: list[Step] = field(default_factory=lambda: [correct_from_legacy])
    #: Shares max_associations across workers; None without a broker.
    limiter: AssociationLimiter | None = None
    #: Stops trying a failing destination for a while; None without a broker.
    breaker: CircuitBreaker | None = None
    #: Prepare every instance but send none (``migrator start --dry-run``).
    dry_run: bool = False

    @classmethod
    def open(cls, settings: Settings, dry_run: bool = False) -> RunContext:
        """Open the state and legacy databases and load the routing inputs.

        A dry run contacts no destination and needs no broker.
        """
        broker = None if dry_run else settings.broker
        return cls(
            settings=settings,
            sessions=open_state(settings.state.sqlalchemy_url(settings.base_dir)),
            legacy=LegacyDatabase(settings.legacy, settings.base_dir),
            router=Router(settings),
            excluded_studies=load_exclusion_list(settings),
            mapper=PathMapper(settings.roots, settings.legacy.paths_case_insensitive),
            limiter=(AssociationLimiter(broker.broker_url(), broker.queue_prefix)
                     if broker is not None else None),
            breaker=(CircuitBreaker(broker.broker_url(), broker.queue_prefix)
                     if broker is not None else None),
            dry_run=dry_run,
        )
