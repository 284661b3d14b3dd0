"""The collision check of ``migrator plan`` on real files: what it finds, what it hashes, what it keeps."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

import migrator.collisions.detect as detect
from migrator.collisions.detect import CollisionCheck, check_collisions
from migrator.state.models import Collision, CollisionMember, Instance, StorageRoot
from scheduler.plan.run import plan
from tests.scheduler.collision_archive import (
    CT_A,
    CT_B,
    DEMO_DUPLICATE,
    MR_C,
    CollisionArchive,
    File,
    build_collision_archive,
)

#: kind -> key -> {(root, path): variant}
Recorded = dict[str, dict[str, dict[File, int]]]


def _recorded(archive: CollisionArchive) -> Recorded:
    found: Recorded = defaultdict(dict)
    with archive.migration.sessions() as session:
        for kind, key, root, rel_path, variant in session.execute(
                select(Collision.kind, Collision.key, StorageRoot.name, Instance.rel_path, CollisionMember.variant)
                .join(CollisionMember, CollisionMember.collision_id == Collision.id)
                .join(Instance, Instance.id == CollisionMember.instance_id)
                .join(StorageRoot, StorageRoot.id == Instance.root_id)):
            found[kind].setdefault(key, {})[(root, rel_path)] = variant
    return found


def _files(collisions: dict[str, dict[File, int]]) -> dict[str, set[File]]:
    return {key: set(members) for key, members in collisions.items()}


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths that the check hashes, in order."""
    calls: list[Path] = []
    real = detect.sha256_of_file

    def counting(path: Path, size: int, mtime_ns: int) -> str:
        calls.append(path)
        return real(path, size, mtime_ns)

    monkeypatch.setattr(detect, "sha256_of_file", counting)
    return calls


def test_check_finds_each_kind(tmp_path: Path, state_url: str, hashed: list[Path]) -> None:
    """Each kind is found with its files; identical copies and equivalent names are not collisions."""
    archive = build_collision_archive(tmp_path, state_url)
    checks: list[CollisionCheck] = []
    summaries = plan(archive.migration.settings, archive.migration.sessions, on_check=checks.append)
    recorded = _recorded(archive)

    # The variants are numbered in the order of the index, which the planning pool decides.
    assert _files(recorded["different_content"]) == {
        archive.uid(CT_A): set(archive.same_size), archive.uid(CT_B): set(archive.other_size)}
    assert _files(recorded["uid_in_two_studies"]) == {archive.uid(archive.two_studies[0]): set(archive.two_studies)}
    for kind in ("different_content", "uid_in_two_studies"):
        for members in recorded[kind].values():
            assert sorted(members.values()) == [1, 2]
    patients = recorded["patient_id_two_names"]
    assert len(patients) == 1
    members = next(iter(patients.values()))
    assert set(members) == set(archive.eve_files())
    assert members[archive.stranger] != members[archive.eve_files()[0]]
    assert len(set(members.values())) == 2

    # Only files that share UID, study and size with another file were read:
    # the copy of another size differs without being hashed.
    read = (*archive.same_size, *archive.identical, *DEMO_DUPLICATE)
    assert sorted(hashed) == sorted(archive.path(file) for file in read)
    check = checks[0]
    assert check.hashed == 6
    assert check.identical_copies == 2  # the demo's own duplicate and the identical copy
    assert check.resolved_by_legacy == 1  # the misspelled name
    assert check.collisions == {"different_content": 2, "uid_in_two_studies": 1, "patient_id_two_names": 1}
    assert check.not_compared == []
    assert sum(summary.in_collisions for summary in summaries) == 4 + 2 + len(archive.eve_files())

    with archive.migration.sessions() as session:
        hashed_paths = set(session.scalars(select(Instance.rel_path).where(Instance.content_sha256.is_not(None))))
    assert hashed_paths == {file[1] for file in read}


def test_replan_reports_once(tmp_path: Path, state_url: str, hashed: list[Path]) -> None:
    """A second plan keeps the same collisions and hashes nothing; a copy made identical stops colliding."""
    archive = build_collision_archive(tmp_path, state_url)
    settings, sessions = archive.migration.settings, archive.migration.sessions
    plan(settings, sessions)
    with sessions() as session:
        first = session.execute(select(Collision.id, Collision.kind, Collision.key, Collision.files,
                                       Collision.first_found_at).order_by(Collision.id)).all()
    hashed.clear()

    checks: list[CollisionCheck] = []
    plan(settings, sessions, on_check=checks.append)
    with sessions() as session:
        again = session.execute(select(Collision.id, Collision.kind, Collision.key, Collision.files,
                                       Collision.first_found_at).order_by(Collision.id)).all()
        member_rows = session.scalar(select(func.count()).select_from(CollisionMember))
    assert again == first
    assert member_rows == sum(row.files for row in again)
    assert hashed == []
    assert checks[0].collisions == {"different_content": 2, "uid_in_two_studies": 1, "patient_id_two_names": 1}

    # The changed copy is indexed again, hashed again, and found identical.
    shutil.copy(archive.path(CT_A), archive.path(archive.same_size[1]))
    plan(settings, sessions)
    assert archive.path(archive.same_size[1]) in hashed
    assert archive.uid(CT_A) not in _recorded(archive)["different_content"]
    assert archive.uid(CT_B) in _recorded(archive)["different_content"]


def test_check_skips_files_of_own_size(tmp_path: Path, sqlite_url: str, hashed: list[Path]) -> None:
    """Files of their own size are never read: the check finds the same after they are gone."""
    archive = build_collision_archive(tmp_path, sqlite_url)
    settings, sessions = archive.migration.settings, archive.migration.sessions
    plan(settings, sessions)
    before = _recorded(archive)
    for file in archive.other_size:
        archive.path(file).unlink()
    hashed.clear()

    check = check_collisions(settings, sessions)

    assert hashed == []
    assert check.not_compared == []
    assert _recorded(archive) == before


def test_unreadable_copy_counts_as_different(tmp_path: Path, sqlite_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy whose content cannot be read is a different_content collision with the reason noted."""
    archive = build_collision_archive(tmp_path, sqlite_url)
    settings, sessions = archive.migration.settings, archive.migration.sessions
    copy = archive.path(archive.identical[1])
    real = detect.sha256_of_file

    def failing(path: Path, size: int, mtime_ns: int) -> str:
        if path == copy:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, size, mtime_ns)

    monkeypatch.setattr(detect, "sha256_of_file", failing)
    checks: list[CollisionCheck] = []
    plan(settings, sessions, on_check=checks.append)
    assert checks[0].not_compared == [f"root3/{archive.identical[1][1]}: content not compared: Permission denied"]
    recorded = _recorded(archive)["different_content"]
    assert set(recorded[archive.uid(MR_C)]) == set(archive.identical)
    assert sorted(recorded[archive.uid(MR_C)].values()) == [1, 2]
    with sessions() as session:
        notes = set(session.scalars(select(CollisionMember.note).where(CollisionMember.note.is_not(None))))
    assert notes == {"content not compared: Permission denied"}

    # The next plan tries the copy again and finds it identical.
    monkeypatch.setattr(detect, "sha256_of_file", real)
    again = check_collisions(settings, sessions)
    assert again.not_compared == []
    assert archive.uid(MR_C) not in _recorded(archive)["different_content"]


def test_changed_file_is_not_hashed(tmp_path: Path, sqlite_url: str) -> None:
    """A file changed after indexing is noted, not hashed, so its hash never describes other bytes."""
    archive = build_collision_archive(tmp_path, sqlite_url)
    path = archive.path(archive.same_size[1])
    with pytest.raises(detect.ChangedFile):
        stat = path.stat()
        detect.sha256_of_file(path, stat.st_size + 1, stat.st_mtime_ns)
