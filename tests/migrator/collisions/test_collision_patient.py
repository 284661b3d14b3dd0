"""Normalised patient names, their keyed hashes, and the key of a state database."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from sqlalchemy import select

from migrator.collisions.patient import (
    PatientHasher,
    load_patient_hasher,
    normalise_name,
)
from migrator.config import Settings
from migrator.errors import ConfigError
from migrator.state.db import open_state
from migrator.state.models import HashKey

KEY_VARIABLE = "MIGRATOR_TEST_PATIENT_KEY"


def _settings(tmp_path: Path, key_env: str | None = None) -> Settings:
    destination = {"ae_title": "SCP", "host": "127.0.0.1", "port": 11112}
    collisions = {"patient_key_env": key_env} if key_env else {}
    return Settings.model_validate({
        "state": {"url": f"sqlite:///{tmp_path / 'state.sqlite3'}"},
        "legacy": {"url": "sqlite:///legacy.db",
                   "query": "SELECT uid AS SOPInstanceUID FROM image WHERE uid IN :uids"},
        "roots": [{"name": "share01", "path": str(tmp_path)}],
        "destinations": {"main": destination},
        "sinbin": destination,
        "collisions": collisions,
    })


@pytest.mark.parametrize(("first", "second"), [
    ("DOE^JOHN", "doe^john"),
    ("DOE^JOHN", "DOE ^  JOHN ^^^"),
    ("MÜLLER^JÖRG", "MULLER^JORG"),
    ("DOE^JOHN", "DOE, JOHN"),
    ("O'NEIL^J.", "O'NEIL^J"),
    ("DOE^JOHN=ドウ^ジョン", "DOE^JOHN"),
    ("=山田^太郎", "=山田^太郎=やまだ^たろう"),
])
def test_same_name_after_normalising(first: str, second: str) -> None:
    """Case, accents, spaces, periods, empty components and other representations do not count."""
    assert normalise_name(first) == normalise_name(second)


@pytest.mark.parametrize(("first", "second"), [
    ("DOE^JOHN", "DOE^JANE"),
    ("DOE^JOHN", "DOE^JOHN^A"),
    ("DOE^JOHN", "JOHN^DOE"),
    ("DOE^JOHN^^^JR", "DOE^JOHN^^^SR"),
    ("DOE^JOHN", "DOE^^JOHN"),
])
def test_different_names_stay_different(first: str, second: str) -> None:
    """Another component, a middle name or a suffix makes another name."""
    assert normalise_name(first) != normalise_name(second)


def test_hashes_are_keyed_and_hide_the_value() -> None:
    """One key gives equal hashes for equal values; another key gives others; empty values give none."""
    hasher = PatientHasher(b"k" * 32)
    other = PatientHasher(b"j" * 32)
    assert hasher.patient_name("DOE^JOHN") == hasher.patient_name("doe ^ john")
    assert hasher.patient_name("DOE^JOHN") != other.patient_name("DOE^JOHN")
    assert hasher.patient_id(" P001 ") == hasher.patient_id("P001")
    assert hasher.patient_id("P001") != hasher.patient_id("p001")
    assert hasher.patient_id("P001") != hasher.patient_name("P001")
    assert hasher.patient_id("") is None
    assert hasher.patient_name("^^") is None
    assert hasher.patient_name(None) is None
    digest = hasher.patient_name("DOE^JOHN") or ""
    assert len(digest) == 32
    assert "DOE" not in digest.upper()
    assert pickle.loads(pickle.dumps(hasher)) == hasher


def test_key_is_created_once_and_kept(tmp_path: Path) -> None:
    """The first call stores a random key; later calls return the same hasher."""
    settings = _settings(tmp_path)
    sessions = open_state(settings.state.url)
    with sessions() as session:
        first = load_patient_hasher(session, settings)
    with sessions() as session:
        second = load_patient_hasher(session, settings)
        stored = session.execute(select(HashKey.key, HashKey.fingerprint)).one()
    assert first == second
    assert stored.key == first.key
    assert stored.fingerprint == first.fingerprint


def test_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key from the environment is never stored, and a missing, short or other key is rejected."""
    settings = _settings(tmp_path, KEY_VARIABLE)
    sessions = open_state(settings.state.url)
    with sessions() as session, pytest.raises(ConfigError, match=f"{KEY_VARIABLE} is not set"):
        load_patient_hasher(session, settings)
    monkeypatch.setenv(KEY_VARIABLE, "too short")
    with sessions() as session, pytest.raises(ConfigError, match="use at least 32 random characters"):
        load_patient_hasher(session, settings)

    key = "0123456789abcdef0123456789abcdef-key"
    monkeypatch.setenv(KEY_VARIABLE, key)
    with sessions() as session:
        hasher = load_patient_hasher(session, settings)
        stored = session.execute(select(HashKey.key, HashKey.fingerprint)).one()
    assert hasher.key == key.encode()
    assert stored.key is None
    assert key not in stored.fingerprint

    monkeypatch.setenv(KEY_VARIABLE, key + "-other")
    with sessions() as session, pytest.raises(ConfigError, match="is not the key the index was hashed with"):
        load_patient_hasher(session, settings)
    with sessions() as session, pytest.raises(ConfigError, match="collisions.patient_key_env is not set"):
        load_patient_hasher(session, _settings(tmp_path))


def test_environment_key_after_stored_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuring a key after the first plan is rejected: the index was hashed with the stored one."""
    sessions = open_state(_settings(tmp_path).state.url)
    with sessions() as session:
        load_patient_hasher(session, _settings(tmp_path))
    monkeypatch.setenv(KEY_VARIABLE, "0123456789abcdef0123456789abcdef-key")
    with sessions() as session, pytest.raises(ConfigError, match="is not the key the index was hashed with"):
        load_patient_hasher(session, _settings(tmp_path, KEY_VARIABLE))
