"""Operator controls stored in the state database: pause and resume."""

from __future__ import annotations

import getpass

from sqlalchemy.orm import Session

from migrator import audit
from migrator.state.models import RunControl

PAUSED = "paused"


def set_paused(session: Session, paused: bool) -> None:
    """Pause or resume dispatch for every dispatcher that uses this state database."""
    control = session.get(RunControl, PAUSED) or RunControl(name=PAUSED)
    control.value = "yes" if paused else "no"
    control.updated_at = audit.now()
    control.updated_by = f"{getpass.getuser()}@{audit.HOST}"
    session.merge(control)
    session.commit()


def is_paused(session: Session) -> bool:
    control = session.get(RunControl, PAUSED)
    return control is not None and control.value == "yes"
