"""Planning: the index, resumability, and stripe and folder batches."""

from __future__ import annotations

import os
import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
from sqlalchemy import select

from migrator.state.models import Batch, Instance
from scheduler.plan.run import plan
from tests.support import Migration, prepare_migration

ENDPOINTS = {"main": ("MAIN", 11112), "nonpixel": ("NP", 11113), "sinbin": ("SB", 11114)}


def _instances(migration: Migration) -> list[Instance]:
    with migration.sessions() as session:
        return list(session.scalars(select(Instance).order_by(Instance.id)))


def _batches(migration: Migration) -> list[Batch]:
    with migration.sessions() as session:
        return list(session.scalars(select(Batch).order_by(Batch.root_id, Batch.seq)))


def test_plan_indexes_every_file(tmp_path: Path, state_url: str) -> None:
    """Each file gets one row with its header fields, unreadable ones with the error."""
    migration = prepare_migration(tmp_path, state_url, ENDPOINTS)
    summaries = plan(migration.settings, migration.sessions)
    rows = {(i.root_id, i.rel_path): i for i in _instances(migration)}
    assert len(rows) == len(migration.archive.expected)
    assert sum(s.files for s in summaries) == len(migration.archive.expected)
    assert sum(s.unreadable for s in summaries) == len(migration.expected("unreadable"))
    by_path = {i.rel_path: i for i in _instances(migration)}
    for expected in migration.archive.expected:
        row = by_path[expected.rel_path]
        if expected.destination == "unreadable":
            assert row.parse_error
            assert row.outcome == "unreadable"
        else:
            assert row.transfer_syntax == expected.transfer_syntax
            assert row.parse_error is None


def test_plan_again_adds_only_new_or_changed(tmp_path: Path, state_url: str) -> None:
    """A second run inserts nothing twice; a new file and a changed file are picked up."""
    migration = prepare_migration(tmp_path, state_url, ENDPOINTS)
    plan(migration.settings, migration.sessions)
    first = {i.id: i.rel_path for i in _instances(migration)}

    again = plan(migration.settings, migration.sessions)
    assert sum(s.new for s in again) == 0
    assert sum(s.changed for s in again) == 0
    assert {i.id: i.rel_path for i in _instances(migration)} == first

    sample = migration.expected("main")[0]
    root = migration.archive.roots[sample.root]
    shutil.copy(root / sample.rel_path, root / "late-arrival.dcm")
    changed = migration.expected("main")[1]
    changed_path = migration.archive.roots[changed.root] / changed.rel_path
    os.utime(changed_path, ns=(1_000_000_000, 1_000_000_000))
    third = plan(migration.settings, migration.sessions)
    assert sum(s.new for s in third) == 1
    assert sum(s.changed for s in third) == 1
    assert len(_instances(migration)) == len(first) + 1


def test_stripe_batches_keep_studies_together(tmp_path: Path, sqlite_url: str) -> None:
    """A study striped over folders lands in one batch, or consecutive ones if too large."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    settings = migration.settings.model_copy(
        update={"batches": migration.settings.batches.model_copy(update={"max_instances": 4})})
    plan(settings, migration.sessions, "stripe")
    batches = {b.id: b for b in _batches(migration)}
    seqs_by_study: dict[tuple[int, str], set[int]] = defaultdict(set)
    folders_by_study: dict[tuple[int, str], set[str]] = defaultdict(set)
    for row in _instances(migration):
        if row.batch_id is None:
            continue
        key = (row.root_id, row.study_uid or "")
        seqs_by_study[key].add(batches[row.batch_id].seq)
        folders_by_study[key].add(row.folder)
    assert all(b.instance_count <= 4 for b in batches.values())
    assert any(len(folders) >= 3 for folders in folders_by_study.values())
    for key, seqs in seqs_by_study.items():
        assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), key
    # A batch with room left contains whole studies only.
    studies_per_batch: dict[int, set[str]] = defaultdict(set)
    for row in _instances(migration):
        if row.batch_id is not None:
            studies_per_batch[row.batch_id].add(row.study_uid or "")
    split = {key[1] for key, seqs in seqs_by_study.items() if len(seqs) > 1}
    for batch_id, studies in studies_per_batch.items():
        assert len(studies) == 1 or not studies & split or batches[batch_id].instance_count == 4


def test_folder_batches_follow_folders(tmp_path: Path, sqlite_url: str) -> None:
    """In folder mode no folder is split unless it exceeds a batch, and order follows folders."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    plan(migration.settings, migration.sessions, "folder")
    batches = {b.id: b for b in _batches(migration)}
    assert all(b.mode == "folder" for b in batches.values())
    batches_of_folder: dict[tuple[int, str], set[int]] = defaultdict(set)
    for row in _instances(migration):
        if row.batch_id is not None:
            batches_of_folder[(row.root_id, row.folder)].add(row.batch_id)
    assert all(len(ids) == 1 for ids in batches_of_folder.values())


def test_unreadable_files_get_no_batch(tmp_path: Path, sqlite_url: str) -> None:
    """Unreadable files stay out of batches with outcome 'unreadable'."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    plan(migration.settings, migration.sessions)
    unreadable = [i for i in _instances(migration) if i.parse_error]
    assert len(unreadable) == len(migration.expected("unreadable"))
    assert all(i.batch_id is None for i in unreadable)
    assert all(i.outcome == "unreadable" for i in unreadable)


def test_non_utf8_name_is_unreadable(tmp_path: Path, sqlite_url: str) -> None:
    """A file name that is not UTF-8 is recorded as unreadable and the rest is indexed."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    sample = migration.expected("main")[0]
    root = migration.archive.roots[sample.root]
    bad_name = os.fsdecode(b"bad\xff\xfename.dcm")
    shutil.copy(root / sample.rel_path, root / bad_name)
    summaries = plan(migration.settings, migration.sessions)
    rows = _instances(migration)
    assert len(rows) == len(migration.archive.expected) + 1
    bad = [row for row in rows if row.rel_path == "bad\\xff\\xfename.dcm"]
    assert len(bad) == 1
    assert bad[0].outcome == "unreadable"
    assert "not valid UTF-8" in (bad[0].parse_error or "")
    again = plan(migration.settings, migration.sessions)
    assert sum(s.new for s in again) == 0
    assert sum(s.files for s in summaries) == len(rows)


def test_missing_root_is_reported(tmp_path: Path, sqlite_url: str) -> None:
    """A root that cannot be listed is reported while the other roots are indexed."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    shutil.rmtree(migration.archive.roots["root2"])
    summaries = {s.root: s for s in plan(migration.settings, migration.sessions)}
    assert summaries["root2"].folder_errors
    assert "cannot list the folder" in summaries["root2"].folder_errors[0]
    assert summaries["root1"].files > 0


def test_deleted_files_are_counted_as_gone(tmp_path: Path, sqlite_url: str) -> None:
    """A file deleted after indexing is counted as gone by the next plan."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    plan(migration.settings, migration.sessions)
    victim = migration.expected("main")[0]
    (migration.archive.roots[victim.root] / victim.rel_path).unlink()
    summaries = plan(migration.settings, migration.sessions)
    assert sum(s.gone for s in summaries) == 1


def test_overlong_uid_is_indexed(tmp_path: Path, state_url: str) -> None:
    """A UID longer than the 64 characters PS3.5 allows is still indexed as it is."""
    migration = prepare_migration(tmp_path, state_url, ENDPOINTS)
    sample = migration.expected("main")[0]
    source = migration.archive.roots[sample.root] / sample.rel_path
    ds = pydicom.dcmread(source)
    long_uid = "1.2.826.0.1.3680043.8.498." + "1234567890" * 7
    ds.SeriesInstanceUID = long_uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid length, on purpose here
        ds.save_as(source.with_name("long-uid.dcm"))
    plan(migration.settings, migration.sessions)
    rows = [row for row in _instances(migration) if row.rel_path.endswith("long-uid.dcm")]
    assert len(rows) == 1
    assert rows[0].series_uid == long_uid


def test_symbolic_links(tmp_path: Path, sqlite_url: str) -> None:
    """A link to a file in the root is indexed; loops and links out of the root are reported."""
    migration = prepare_migration(tmp_path, sqlite_url, ENDPOINTS)
    sample = migration.expected("main")[0]
    root = migration.archive.roots[sample.root]
    (root / "inside-link.dcm").symlink_to(root / sample.rel_path)
    outside = tmp_path / "outside.dcm"
    shutil.copy(root / sample.rel_path, outside)
    (root / "outside-link.dcm").symlink_to(outside)
    (root / "loop").symlink_to(root)
    summaries = {s.root: s for s in plan(migration.settings, migration.sessions)}
    rel_paths = {row.rel_path for row in _instances(migration)}
    assert "inside-link.dcm" in rel_paths
    assert "outside-link.dcm" not in rel_paths
    skipped = summaries[sample.root].skipped_links
    assert any("outside-link.dcm" in line for line in skipped)
    assert any(line.split(":")[0].endswith("/loop") for line in skipped)
