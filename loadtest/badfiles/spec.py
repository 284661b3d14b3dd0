"""What the migrator must record for each bad or odd file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Outcomes: the migrator's own, and one for a path that the plan does not index.
SENT = "sent"
SINBINNED = "sinbinned"
UNREADABLE = "unreadable"
#: Not in the index: a symbolic link that the walk does not follow, or a file
#: in a folder it cannot list. The plan lists the path with the reason.
NOT_INDEXED = "not_indexed"

MAIN = "main"
NONPIXEL = "nonpixel"


@dataclass(frozen=True)
class Expected:
    """An outcome, where the file goes when it is sent, and a fragment of the recorded reason."""

    outcome: str
    #: ``main`` or ``nonpixel`` for a file that is sent.
    destination: str | None = None
    #: Text that the reason contains: the parse error of an unreadable file,
    #: the sin bin reason, or the plan's message for a path it did not index.
    reason: str | None = None


@dataclass(frozen=True)
class BadFileSpec:
    """One bad or odd file, and the outcome the migrator must record for it.

    The outcome assumes that the legacy database has a row for each file
    with a ``legacy_rel_path`` (see :func:`loadtest.badfiles.add_legacy_rows`).
    Without the rows, every readable file is an orphan and goes to the sin bin.
    """

    kind: str
    #: The path relative to the folder given to :func:`loadtest.badfiles.write_bad_files`.
    rel_path: str
    description: str
    #: The outcome when the plan runs as a user other than root.
    expected: Expected
    #: The outcome when the plan runs as root, which reads any file; None if the same.
    expected_as_root: Expected | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    #: The transfer syntax in which a sent file reaches the destination.
    transfer_syntax: str | None = None
    #: Keyword -> value that the destination must hold after the legacy database's corrections.
    corrections: dict[str, str] = field(default_factory=dict)
    #: The file that the legacy row of this SOP Instance UID names, relative to
    #: the folder; None for a file without a legacy row.
    legacy_rel_path: str | None = None

    def expected_for(self, as_root: bool) -> Expected:
        """Return the outcome for a plan that runs as root or as another user."""
        if as_root and self.expected_as_root is not None:
            return self.expected_as_root
        return self.expected

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
