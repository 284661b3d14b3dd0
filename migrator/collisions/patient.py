"""Keyed hashes of Patient ID and Patient Name, so the index can compare them without storing them.

The index keeps, for each file, an HMAC-SHA256 of its Patient ID and of its
normalised Patient Name, cut to 128 bits. Equal values give equal hashes, so
the plan can find a Patient ID with two names with GROUP BY. Without the key
the hashes cannot be checked against a list of names or IDs. The key is a
random one kept in the state database, or, with
``collisions.patient_key_env``, one from the environment that the state
database never stores. Only a fingerprint of that key is stored, so that
a changed key is detected before it makes every name look different.
"""

from __future__ import annotations

import hmac
import os
import secrets

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from migrator import audit
from migrator.collisions.hashing import PatientHasher, normalise_name
from migrator.config import Settings
from migrator.errors import ConfigError
from migrator.state.models import HashKey

__all__ = ["KEY_NAME", "MIN_KEY_LENGTH", "PatientHasher", "load_patient_hasher", "normalise_name"]

#: The row of ``hash_keys`` that contains the patient key.
KEY_NAME = "patient"
#: The shortest key accepted from the environment.
MIN_KEY_LENGTH = 32


def _key_from_environment(variable: str) -> bytes:
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"environment variable {variable} is not set; collisions.patient_key_env names "
                          "it as the key of the patient hashes, so set it on every planner and worker")
    if len(value) < MIN_KEY_LENGTH:
        raise ConfigError(f"the key in environment variable {variable} has {len(value)} characters; "
                          f"use at least {MIN_KEY_LENGTH} random characters")
    return value.encode("utf-8")


def load_patient_hasher(session: Session, settings: Settings) -> PatientHasher:
    """Return the hasher of this state database, creating its key on first use.

    Every planner and worker of one migration must hash with one key, so the
    key is fixed by the first plan: a later configuration with another key
    is rejected.

    Raises
    ------
    ConfigError
        The key's environment variable is missing or too short, or the key
        differs from the one the index was hashed with.
    """
    variable = settings.collisions.patient_key_env
    external = _key_from_environment(variable) if variable else None
    row = session.execute(select(HashKey.key, HashKey.fingerprint).where(HashKey.name == KEY_NAME)).one_or_none()
    if row is None:
        key = external or secrets.token_bytes(32)
        hasher = PatientHasher(key)
        try:
            session.execute(insert(HashKey).values(
                name=KEY_NAME, key=None if external else key, fingerprint=hasher.fingerprint,
                created_at=audit.now()))
            session.commit()
            return hasher
        except IntegrityError:
            # Another planner or worker created it at the same moment; use theirs.
            session.rollback()
            row = session.execute(select(HashKey.key, HashKey.fingerprint)
                                  .where(HashKey.name == KEY_NAME)).one()
    stored_key, fingerprint = row
    if external is None:
        if stored_key is None:
            raise ConfigError("the index was hashed with a key from the environment, but "
                              "collisions.patient_key_env is not set; set it to the variable of the first plan")
        return PatientHasher(stored_key)
    if stored_key is not None:
        raise ConfigError(f"the key in environment variable {variable} is not the key the index was hashed "
                          "with, which the state database keeps; remove collisions.patient_key_env, or "
                          "use a new state database for a key from the environment")
    hasher = PatientHasher(external)
    if not hmac.compare_digest(hasher.fingerprint, fingerprint):
        raise ConfigError(f"the key in environment variable {variable} is not the key the index was hashed "
                          "with; every planner and worker must use the key of the first plan")
    return hasher
