"""Bad and odd files that a legacy archive contains, each with the outcome the migrator must record.

``write_bad_files(folder, outside)`` writes one small file of each kind.
The kinds are missing or unusual File Meta Information, a transfer syntax
that disagrees with the body, Deflated and Big Endian transfer syntaxes,
odd lengths, undefined-length private sequences and bad Specific Character
Sets. Truncated, empty and non-DICOM files, a DICOMDIR, unreadable files
and folders, symbolic links and a multi-frame image follow.
``add_legacy_rows`` gives the readable ones rows in a legacy database, so
that they are sent rather than held back as orphans. ``python -m loadtest badfiles --out DIR`` does both
from the command line.
"""

from loadtest.badfiles.legacy import add_legacy_rows
from loadtest.badfiles.spec import (
    MAIN,
    NONPIXEL,
    NOT_INDEXED,
    SENT,
    SINBINNED,
    UNREADABLE,
    BadFileSpec,
    Expected,
)
from loadtest.badfiles.write import FRAME_BYTES, write_bad_files, write_multiframe

__all__ = ["FRAME_BYTES", "MAIN", "NONPIXEL", "NOT_INDEXED", "SENT", "SINBINNED", "UNREADABLE",
           "BadFileSpec", "Expected", "add_legacy_rows", "write_bad_files", "write_multiframe"]
