"""Fictitious patients, and the stale demographics a legacy header can carry.

Names are drawn from short lists of common European names, and IDs count up
from LT0000001, so no generated patient is a real person's record. A few family
names need ISO 8859-1 (ISO_IR 100), the character set the generated files declare.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

_FAMILY_NAMES = (
    "ANDERSEN", "BAKER", "BERGER", "BRUNNER", "CARLSSON", "COSTA", "DUBOIS", "EDWARDS",
    "FISCHER", "FOURNIER", "GARCIA", "HANSEN", "HOFFMANN", "JANSSEN", "KELLER", "KOWALSKI",
    "LAMBERT", "LARSEN", "MARTIN", "MEYER", "MORENO", "MÜLLER", "NIELSEN", "NOVAK",
    "OLSEN", "PETERS", "RICHTER", "ROSSI", "SANTOS", "SCHÄFER", "SCHMIDT", "SCHULZ",
    "SØRENSEN", "THOMAS", "VOGEL", "WAGNER", "WALKER", "WEBER", "WOLF", "ZIMMERMANN",
)
_GIVEN_NAMES = (
    ("ANNA", "F"), ("BEATE", "F"), ("CLARA", "F"), ("DORA", "F"), ("ELIN", "F"), ("FRIDA", "F"),
    ("GRETA", "F"), ("HELENE", "F"), ("INES", "F"), ("JULIA", "F"), ("KAREN", "F"), ("LINA", "F"),
    ("ANTON", "M"), ("BENNO", "M"), ("CARL", "M"), ("DAVID", "M"), ("EMIL", "M"), ("FELIX", "M"),
    ("GUSTAV", "M"), ("HANS", "M"), ("IVAR", "M"), ("JONAS", "M"), ("KLAUS", "M"), ("LUKAS", "M"),
)
# ASCII replacements that a modality without ISO 8859-1 support writes for the letters above.
_TRANSLITERATIONS = {"Ä": "AE", "Ö": "OE", "Ü": "UE", "Ø": "OE"}

#: Ways a file header can disagree with the legacy database about its patient.
MISMATCH_KINDS = ("name", "id", "birth_date")


@dataclass(frozen=True, slots=True)
class Patient:
    """Patient demographics as DICOM strings: PN, LO, DA (YYYYMMDD) and CS."""

    patient_id: str
    name: str
    birth_date: str
    sex: str


def make_patient(number: int, rng: random.Random) -> Patient:
    """Return fictitious patient ``number`` (IDs count up from LT0000001)."""
    given_name, sex = rng.choice(_GIVEN_NAMES)
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 80 * 365))
    return Patient(
        patient_id=f"LT{number:07d}",
        name=f"{rng.choice(_FAMILY_NAMES)}^{given_name}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
    )


def _misspell(name: str, rng: random.Random) -> str:
    """Swap two neighbouring letters of the family name, or drop one if they are equal."""
    family, _, given = name.partition("^")
    position = rng.randrange(1, len(family) - 1)
    letters = list(family)
    if letters[position] == letters[position + 1]:
        del letters[position]
    else:
        letters[position], letters[position + 1] = letters[position + 1], letters[position]
    return "".join(letters) + "^" + given


def _stale_name(name: str, rng: random.Random) -> str:
    """Return the name as an older registration wrote it, transliterated to ASCII or misspelt."""
    if not name.isascii():
        return "".join(_TRANSLITERATIONS.get(letter, letter) for letter in name)
    return _misspell(name, rng)


def _stale_birth_date(birth_date: str) -> str:
    """Swap day and month (a common typing error); or shift the year by ten if that is invalid."""
    year, month, day = birth_date[:4], birth_date[4:6], birth_date[6:]
    swapped = year + day + month
    if day != month and int(day) <= 12:
        return swapped
    return f"{int(year) + 10:04d}{month}{day}" if int(year) < 1990 else f"{int(year) - 10:04d}{month}{day}"


def stale_patient(patient: Patient, kind: str, rng: random.Random, temporary_id: int) -> Patient:
    """Return the demographics an outdated header holds, differing from ``patient`` in ``kind``.

    ``kind`` is one of MISMATCH_KINDS. ``temporary_id`` numbers the emergency
    registration ID ("TMP...") that a stale "id" header carries.
    """
    if kind == "name":
        return Patient(patient.patient_id, _stale_name(patient.name, rng), patient.birth_date,
                       patient.sex)
    if kind == "id":
        return Patient(f"TMP{temporary_id:06d}", patient.name, patient.birth_date, patient.sex)
    if kind == "birth_date":
        return Patient(patient.patient_id, patient.name, _stale_birth_date(patient.birth_date),
                       patient.sex)
    raise ValueError(f"unknown mismatch kind {kind!r}; expected one of {MISMATCH_KINDS}")
