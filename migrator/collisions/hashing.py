"""Keyed hashes of Patient ID and Patient Name, computed from the values alone.

This module needs only the standard library, so the processes that parse
headers for the index start without the state database's libraries.
:mod:`migrator.collisions.patient` keeps the key.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import dataclass

_HASH_CHARS = 32
_FINGERPRINT_TEXT = b"pacs-migrator patient key fingerprint"


def normalise_name(value: str) -> str:
    """Return the form of a DICOM Person Name that the collision check compares.

    Uses the first non-empty component group (alphabetic, else ideographic,
    else phonetic). Case, accents, periods and runs of spaces are ignored, as
    are spaces around each ``^`` component and empty trailing components. A
    name without ``^`` but with a comma is read as "Family, Given". So
    ``Müller^Jörg``, ``MULLER ^ JORG^^`` and ``MULLER, JORG`` are one name,
    and ``DOE^JOHN`` and ``DOE^JOHN^A`` are two.
    """
    groups = [group for group in value.split("=") if group.strip(" ^")]
    text = groups[0] if groups else ""
    if "^" not in text and "," in text:
        text = text.replace(",", "^", 1)
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(char for char in decomposed if not unicodedata.combining(char))
    components = [" ".join(part.replace(".", " ").split()).casefold() for part in text.split("^")]
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


@dataclass(frozen=True)
class PatientHasher:
    """The keyed hashing of Patient ID and Patient Name. It pickles, so each planning process gets a copy."""

    key: bytes

    def _digest(self, label: bytes, value: str) -> str:
        mac = hmac.new(self.key, label + b"\0" + value.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:_HASH_CHARS]

    def patient_id(self, value: object) -> str | None:
        """Return the hash of a Patient ID, or None for an empty one. Only surrounding spaces are ignored."""
        text = "" if value is None else str(value).strip()
        return self._digest(b"PatientID", text) if text else None

    def patient_name(self, value: object) -> str | None:
        """Return the hash of a normalised Patient Name, or None for an empty one."""
        text = "" if value is None else normalise_name(str(value))
        return self._digest(b"PatientName", text) if text else None

    @property
    def fingerprint(self) -> str:
        return hmac.new(self.key, _FINGERPRINT_TEXT, hashlib.sha256).hexdigest()
