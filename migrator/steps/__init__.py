"""Per-instance steps: each takes a dataset and its context and returns what it changed.

The file-based migration and the later network service run the same steps,
so a step never reads files or talks to the network itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Change:
    """One header change: the keyword, the value before and after."""

    keyword: str
    old: str | None
    new: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"keyword": self.keyword, "old": self.old, "new": self.new}


@dataclass
class StepContext:
    """Inputs a step may use besides the dataset."""

    instance_id: int
    #: Keyword -> value from the legacy database, for the correction step.
    legacy_values: dict[str, str] = field(default_factory=dict)


Step = Callable[[Dataset, StepContext], list[Change]]


def run_steps(steps: list[Step], ds: Dataset, context: StepContext) -> list[Change]:
    """Run ``steps`` in order on ``ds`` and return every change they made."""
    changes: list[Change] = []
    for step in steps:
        changes.extend(step(ds, context))
    return changes
