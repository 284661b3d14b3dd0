"""Migrating a generated archive with the real ``migrator plan`` and ``migrator start``.

The outcomes that the state database records, and what each storage SCP
receives, must equal the manifest's expectations file by file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
from sqlalchemy import select

from loadtest.archive import (
    ArchiveSpec,
    Endpoint,
    RunSettings,
    generate_archive,
    read_manifest,
)
from loadtest.archive.manifest import Manifest
from loadtest.verify import compare, outcome_counts, recorded_files
from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Instance
from tests.conftest import postgres_database
from tests.support import CALLING_AE

SPEC = ArchiveSpec(instances=200, roots=3, seed=5, nonpixel_rate=0.05, mismatch_rate=0.05,
                   orphan_rate=0.03, duplicate_rate=0.03, merged_rate=0.2, instances_per_study=20)


def endpoints_of(scps: dict[str, StorageSCP]) -> dict[str, Endpoint]:
    return {name: Endpoint("127.0.0.1", scp.port, scp.ae_title) for name, scp in scps.items()}


def run_migrator(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *arguments], capture_output=True,
                          text=True, timeout=600)


def migrate(config: Path) -> None:
    for command in ("plan", "start"):
        result = run_migrator(command, "--config", str(config))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def check_outcomes(config: Path, manifest: Manifest) -> None:
    settings = load_settings(config)
    sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
    try:
        recorded = recorded_files(sessions)
    finally:
        sessions.kw["bind"].dispose()
    assert compare(manifest, recorded) == []
    assert outcome_counts(recorded) == manifest.summary["expected"]["outcome"]


def check_received(scps: dict[str, StorageSCP], manifest: Manifest) -> None:
    """Each SCP received exactly the instances the manifest sends there, corrected."""
    for name, scp in scps.items():
        expected = {entry.sop_instance_uid: entry for entry in manifest.files if entry.destination == name}
        assert set(scp.received) == set(expected), name
        for uid, entry in expected.items():
            assert scp.received[uid] == entry.transfer_syntax
            if not entry.corrections:
                continue
            ds = pydicom.dcmread(scp.folder / f"{uid}.dcm", stop_before_pixels=True)
            for keyword, value in entry.corrections.items():
                assert str(ds.get(keyword)) == value, (entry.path, keyword)


def test_outcomes_equal_manifest(tmp_path: Path, scps: dict[str, StorageSCP]) -> None:
    archive = generate_archive(tmp_path / "archive", SPEC,
                               RunSettings(endpoints=endpoints_of(scps), calling_ae_title=CALLING_AE,
                                           processes=2))
    manifest = read_manifest(archive.folder)
    assert manifest.summary["expected"]["destination"].keys() == {"main", "nonpixel", "sinbin"}

    migrate(archive.folder / "migrator.toml")

    check_outcomes(archive.folder / "migrator.toml", manifest)
    check_received(scps, manifest)
    check_study_order(archive.folder / "migrator.toml")


def check_study_order(config: Path) -> None:
    """Within each batch, every study reaches main and non-pixel before the next study starts."""
    settings = load_settings(config)
    sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
    try:
        with sessions() as session:
            rows = session.execute(
                select(AuditEntry.batch_id, AuditEntry.instance_id).where(
                    AuditEntry.destination.in_(["main", "nonpixel"])).order_by(AuditEntry.id)).all()
            studies = {id_: study for id_, study in session.execute(select(Instance.id, Instance.study_uid))}
    finally:
        sessions.kw["bind"].dispose()
    merged = manifest_merges(config)
    runs: dict[int, list[str]] = {}
    for batch_id, instance_id in rows:
        study = merged.get(studies[instance_id], studies[instance_id])
        sequence = runs.setdefault(batch_id, [])
        if not sequence or sequence[-1] != study:
            sequence.append(study)
    batches_with_two_studies = [sequence for sequence in runs.values() if len(sequence) > 1]
    assert batches_with_two_studies, "no batch holds two studies; the check proves nothing"
    for batch_id, sequence in runs.items():
        assert len(sequence) == len(set(sequence)), f"batch {batch_id} interleaves studies: {sequence}"


def manifest_merges(config: Path) -> dict[str, str]:
    """Return header Study Instance UID -> the study the legacy database merged it into."""
    manifest = read_manifest(config.parent)
    return {entry.study_instance_uid: entry.corrections["StudyInstanceUID"] for entry in manifest.files
            if "StudyInstanceUID" in entry.corrections}


def test_cli_archive_on_postgresql(tmp_path: Path, scps: dict[str, StorageSCP]) -> None:
    """``--state-url`` and ``--legacy-url`` put both databases on PostgreSQL."""
    out = tmp_path / "archive"
    with postgres_database() as state_url, postgres_database() as legacy_url:
        endpoints = [f"--{name}={endpoint}" for name, endpoint in endpoints_of(scps).items()]
        result = subprocess.run(
            [sys.executable, "-m", "loadtest", "generate", "--out", str(out), "--instances", "80",
             "--roots", "2", "--instances-per-study", "15", "--orphan-rate", "0.05",
             "--duplicate-rate", "0.05", "--mismatch-rate", "0.1", "--merged-rate", "0.3",
             "--state-url", state_url, "--legacy-url", legacy_url, "--calling-aet", CALLING_AE,
             "--processes", "2", *endpoints],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        settings = load_settings(out / "migrator.toml")
        assert settings.state.url == state_url
        assert settings.legacy.url == legacy_url
        assert not (out / "legacy-pacs.sqlite3").exists()

        migrate(out / "migrator.toml")

        manifest = read_manifest(out)
        check_outcomes(out / "migrator.toml", manifest)
        check_received(scps, manifest)
