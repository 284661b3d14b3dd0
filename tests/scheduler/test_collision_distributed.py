"""The collision check after ``plan --distributed``: workers hash patients with the key from the environment."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from migrator.config import load_settings
from migrator.errors import ConfigError
from migrator.state.db import open_state
from migrator.state.models import (
    Collision,
    CollisionMember,
    HashKey,
    Instance,
    StorageRoot,
)
from scheduler.plan.run import plan
from tests.conftest import postgres_database
from tests.scheduler.collision_archive import build_collision_archive
from tests.workers.celery_support import add_broker, start_worker, stop_process_groups

KEY_VARIABLE = "MIGRATOR_TEST_PATIENT_KEY"
KEY = "a test key of forty characters, 1234567"

#: (kind, key) -> ((root, path), ...) in name order
Found = dict[tuple[str, str], tuple[tuple[str, str], ...]]


@pytest.fixture
def worker_processes() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    yield started
    stop_process_groups(started)


def _found(sessions: sessionmaker[Session]) -> Found:
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    with sessions() as session:
        for kind, key, root, rel_path in session.execute(
                select(Collision.kind, Collision.key, StorageRoot.name, Instance.rel_path)
                .join(CollisionMember, CollisionMember.collision_id == Collision.id)
                .join(Instance, Instance.id == CollisionMember.instance_id)
                .join(StorageRoot, StorageRoot.id == Instance.root_id)):
            found.setdefault((kind, key), []).append((root, rel_path))
    return {group: tuple(sorted(files)) for group, files in found.items()}


def test_distributed_plan_finds_the_same_collisions(worker_processes, tmp_path: Path, postgres_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers index with the environment's key, and the planner's check equals a local plan's."""
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    archive = build_collision_archive(tmp_path, postgres_url)
    config = tmp_path / "migrator.toml"
    with config.open("a", encoding="utf-8") as file:
        file.write(f'\n[collisions]\npatient_key_env = "{KEY_VARIABLE}"\n')
    add_broker(config)
    settings = load_settings(config)
    start_worker(config, "root1,root2,root3", worker_processes, tmp_path / "worker.log", concurrency=2)

    summaries = plan(settings, archive.migration.sessions, distributed=True)
    found = _found(archive.migration.sessions)
    kinds = sorted(kind for kind, _ in found)
    assert kinds == ["different_content", "different_content", "patient_id_two_names", "uid_in_two_studies"]
    with archive.migration.sessions() as session:
        stored = session.execute(select(HashKey.key, HashKey.fingerprint)).one()
    assert stored.key is None  # only the fingerprint of a key from the environment is stored
    assert KEY.encode() not in stored.fingerprint.encode()

    with postgres_database() as local_url:
        local_config = tmp_path / "local.toml"
        local_config.write_text(config.read_text(encoding="utf-8").replace(postgres_url, local_url),
                                encoding="utf-8")
        local_settings = load_settings(local_config)
        local_sessions = open_state(local_settings.state.sqlalchemy_url(local_settings.base_dir))
        local_summaries = plan(local_settings, local_sessions)
        assert _found(local_sessions) == found
        local_sessions.kw["bind"].dispose()
    assert [s.in_collisions for s in summaries] == [s.in_collisions for s in local_summaries]

    # Another key on the planner is rejected before it makes every name look different.
    monkeypatch.setenv(KEY_VARIABLE, KEY.upper())
    with pytest.raises(ConfigError, match="is not the key the index was hashed with"):
        plan(settings, archive.migration.sessions, distributed=True)
