"""Everything one report shows, read from the state database in a few GROUP BY queries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from migrator.audit import now
from migrator.report.spread import ArrivalSpread, arrival_spread
from migrator.report.sql import Window
from migrator.report.summary import Summary, read_summary
from migrator.report.throughput import Throughput, read_throughput


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    window: Window
    summary: Summary
    #: None when no delivery falls within the window.
    throughput: Throughput | None
    spread: ArrivalSpread


def read_report(session: Session, window: Window = Window(), top: int = 20) -> Report:
    """Read the summary, the throughput and the arrival spread; ``top`` sizes the lists."""
    return Report(
        generated_at=now(),
        window=window,
        summary=read_summary(session, top),
        throughput=read_throughput(session, window),
        spread=arrival_spread(session, window.since, window.until, top=top),
    )
