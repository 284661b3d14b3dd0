"""Checking that the storage roots a run reads from are mounted.

A storage root that is not mounted is missing or, when its mount point
stays behind, an empty folder. Either way every file of it would fail
with "file not found". So the embedded ``migrator start`` checks each root
that has planned batches before it starts and again while it runs, and
stops with one message naming the root instead. The distributed mode
does not check, because the machine that runs ``migrator start`` there
need not mount the roots.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from migrator.config import Settings
from migrator.errors import StorageRootError
from migrator.state.models import Batch, BatchStatus, StorageRoot

#: How often a running dispatcher checks the roots again, in seconds.
RECHECK_SECONDS = 5.0


def root_problem(path: Path) -> tuple[str, str] | None:
    """Return what is wrong with the storage root folder ``path`` and what to do, or None.

    Only the first entry of the folder is listed, so the check costs the
    same for any size of root.
    """
    try:
        with os.scandir(path) as entries:
            first = next(entries, None)
    except FileNotFoundError:
        return "was not found", "check that it is mounted at that path"
    except NotADirectoryError:
        return "is not a folder", "correct its path in the configuration"
    except OSError as exc:
        hint = ("make it readable to the user that runs the migrator"
                if exc.errno in (errno.EACCES, errno.EPERM) else "check that it is mounted")
        return f"cannot be read ({exc.strerror or exc})", hint
    if first is None:
        return "is empty", "check that it is mounted at that path"
    return None


def planned_batches_per_root(session: Session) -> dict[str, int]:
    """Return the number of planned batches of each root that has any, by root name."""
    rows = session.execute(
        select(StorageRoot.name, func.count(Batch.id))
        .join(Batch, Batch.root_id == StorageRoot.id)
        .where(Batch.status == BatchStatus.PLANNED.value)
        .group_by(StorageRoot.name))
    return {name: count for name, count in rows}


def check_roots(settings: Settings, session: Session, next_step: str) -> None:
    """Raise StorageRootError naming every root with planned batches that cannot be read.

    ``next_step`` ends the message, with the command to run once the roots
    are back.

    Raises
    ------
    StorageRootError
        A root with planned batches is missing, not a folder, unreadable or empty.
    ConfigError
        A root with planned batches is no longer in the configuration.
    """
    problems = []
    for name, batches in sorted(planned_batches_per_root(session).items()):
        path = settings.resolve(settings.root(name).path)
        problem = root_problem(path)
        if problem is not None:
            state, hint = problem
            problems.append(f"storage root {name} ({path}) {state}, and {batches} planned "
                            f"batch(es) read from it: {hint}")
    if problems:
        raise StorageRootError(f"{'; '.join(problems)}. {next_step}")
