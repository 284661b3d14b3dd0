"""The correction step: set every header value that differs from the legacy database.

Values are compared as decoded text, so a name stored in ISO 8859-1 equals
the same name returned by the database. When a new value cannot be encoded
in the dataset's Specific Character Set, every text value is decoded and the
dataset is switched to UTF-8 (ISO_IR 192), recorded as a change of its own.
"""

from __future__ import annotations

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset

from migrator.steps import Change, StepContext


def _normalize(keyword: str, value: str) -> str:
    value = value.strip().rstrip("\x00").strip()
    if keyword in keyword_dict and dictionary_VR(keyword) == "PN":
        # "DOE^JOHN^^^" and "DOE^JOHN" are the same person name (PS3.5 6.2.1).
        value = "=".join(group.rstrip("^") for group in value.split("=")).rstrip("=")
    return value


def _current(ds: Dataset, keyword: str) -> str | None:
    element = ds.data_element(keyword) if keyword in ds else None
    if element is None or element.value in (None, ""):
        return None
    value = element.value
    if element.VM > 1:
        return "\\".join(str(item) for item in value)
    return str(value)


def _encodable(ds: Dataset, values: list[str]) -> bool:
    charset = ds.get("SpecificCharacterSet", "ISO_IR 6")
    encodings = convert_encodings(charset)
    if len(encodings) > 1 or encodings[0] == default_encoding:
        # Keep ISO 2022 code extensions and the default repertoire only for
        # ASCII values. pydicom maps the default repertoire (ASCII) to Python's
        # "iso8859" codec, which is Latin-1 and so would accept "Ü".
        return all(value.isascii() for value in values)
    try:
        for value in values:
            value.encode(encodings[0])
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def correct_from_legacy(ds: Dataset, context: StepContext) -> list[Change]:
    """Set each keyword whose legacy value differs from the header's."""
    changes: list[Change] = []
    for keyword, new in context.legacy_values.items():
        old = _current(ds, keyword)
        if old is not None and _normalize(keyword, old) == _normalize(keyword, new):
            continue
        changes.append(Change(keyword, old, new))
    if not changes:
        return changes
    new_values = [change.new for change in changes if change.new]
    if not _encodable(ds, new_values):
        old_charset = ds.get("SpecificCharacterSet")
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
        changes.append(Change("SpecificCharacterSet",
                              None if old_charset is None else str(old_charset), "ISO_IR 192"))
    for change in changes:
        if change.keyword != "SpecificCharacterSet":
            setattr(ds, change.keyword, change.new)
    return changes
