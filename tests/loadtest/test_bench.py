"""``python -m loadtest bench`` on a small archive: the rows, their checks and the BENCHMARKS.md section.

No test here asserts a time or a rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from loadtest.archive import ArchiveSpec, RunSettings, generate_archive, read_manifest
from loadtest.archive.generate import LEGACY_DB_NAME
from loadtest.archive.manifest import Manifest, ManifestFile
from loadtest.bench.contenders import (
    Archive,
    Bench,
    dcmsend_engine_available,
    dry_run_available,
    run_migrator,
    run_storescu,
)
from loadtest.bench.measure import run_measured
from loadtest.bench.receivers import OrthancReceiver, StoreSCPReceiver
from loadtest.cli import BENCHMARKS_FILE
from tests.conftest import POSTGRES_ADMIN_URL
from tests.workers.celery_support import REDIS_URL

INSTANCES = 150
SCALE_ROWS = 2000
def run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", "bench", "--postgres-url", POSTGRES_ADMIN_URL,
                           "--redis-url", REDIS_URL, *arguments],
                          capture_output=True, text=True, timeout=900)


def test_small_bench_rows_verified(tmp_path: Path) -> None:
    """Every contender gets a verified row, and --append writes the given file only."""
    record = tmp_path / "BENCHMARKS.md"
    record.write_text("# Benchmarks\n\nEarlier results.\n", encoding="utf-8")
    real_record = BENCHMARKS_FILE.read_bytes() if BENCHMARKS_FILE.exists() else None
    work = tmp_path / "work"

    result = run_bench("--instances", str(INSTANCES), "--receivers", "storescp", "--processes", "1",
                       "--celery-workers", "1",
                       "--only", "storescu,embedded,dcmsend,dry-run,celery,indexing,planner-scale,profile",
                       "--scale-rows", str(SCALE_ROWS), "--work-dir", str(work), "--keep",
                       "--append", "--benchmarks-file", str(record))

    assert result.returncode in (0, 1), result.stdout[-4000:] + result.stderr[-4000:]
    for label in ("storescu (anchor)", "migrator embedded", "migrator embedded, engine dcmsend",
                  "migrator embedded, start --dry-run", "migrator Celery, 1 worker"):
        assert label in result.stdout, label
    files = len(read_manifest(work / "archive").files)
    results = json.loads((work / "bench-results.json").read_text(encoding="utf-8"))
    runs = {run["contender"]: run for run in results["runs"]}
    assert set(runs) == {"storescu", "embedded", "dcmsend", "dry-run", "celery"}
    assert runs["dcmsend"]["available"] == dcmsend_engine_available()
    assert dry_run_available()
    assert runs["dry-run"]["available"]
    for name, run in runs.items():
        if not run["available"]:
            assert run["note"], name
            continue
        assert run["instances"] == files, name
        assert run["seconds"] > 0, name
        assert run["cpu_seconds"] > 0, name
    for name in ("embedded", "celery"):
        assert runs[name]["spread"]["studies"] > 0, name
        assert runs[name]["plan"]["files"] == files, name
    assert runs["celery"]["state"] == "postgresql"
    assert runs["celery"]["state_sizes"]["instances"] > 0
    assert results["baseline"]["files"] == files
    assert [measure["rows"] for measure in results["scale"]] == [SCALE_ROWS]
    assert results["scale"][0]["problems"] == []
    assert results["scale"][0]["batches"] > 0
    profile = results["profile"]
    assert profile["problems"] == []
    assert profile["samples"] > 0
    assert abs(sum(profile["shares"].values()) - 1) < 1e-6
    assert profile["shares"]["pynetdicom: encode and send C-STORE, wait for its response"] > 0

    text = record.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nEarlier results.\n\n## Migration throughput, ")
    for heading in ("### Throughput", "### Indexing", "### Where migrator start spends its CPU",
                    "### Planner with synthetic index rows",
                    "### State database size", "### Scale on paper"):
        assert heading in text, heading
    for fact in ("- Machine: ", "- Load average", "- Versions: Python ", "pydicom ", "pynetdicom ", "DCMTK ",
                 f"- Data: {INSTANCES:,} instances in {files:,} files"):
        assert fact in text, fact
    assert "| storescu (anchor) | storescp |" in text
    assert "| migrator Celery, 1 worker | storescp | postgresql |" in text
    current = BENCHMARKS_FILE.read_bytes() if BENCHMARKS_FILE.exists() else None
    assert current == real_record

    rerun = run_bench("--results", str(work / "bench-results.json"), "--append",
                      "--benchmarks-file", str(tmp_path / "again.md"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "again.md").read_text(encoding="utf-8") == "# Benchmarks\n\n" + text.split("\n\n", 2)[2]

    for name, run in runs.items():
        assert run["problems"] == [], name
    assert result.returncode == 0


def test_unknown_contender_rejected(tmp_path: Path) -> None:
    result = run_bench("--only", "storescu,fastest", "--work-dir", str(tmp_path / "work"))
    assert result.returncode == 2
    assert "fastest" in result.stderr
    assert not (tmp_path / "work").exists()


class IgnoringStoreSCP(StoreSCPReceiver):
    """storescp that responds to every C-STORE with success but writes no file (``--ignore``)."""

    def _command(self) -> list[str]:
        return [*super()._command(), "--ignore"]


def small_bench(tmp_path: Path, receiver: StoreSCPReceiver, manifest: Manifest | None = None) -> Bench:
    folder = tmp_path / "archive"
    spec = ArchiveSpec(instances=20, roots=2, instances_per_study=10)
    if not folder.exists():
        generate_archive(folder, spec, RunSettings())
    archive = Archive(folder, {name: folder / "roots" / name for name in spec.root_names},
                      f"sqlite:///{folder / LEGACY_DB_NAME}", manifest or read_manifest(folder))
    return Bench(archive, receiver, tmp_path / "runs", processes=1, timeout=300,
                 postgres_url=POSTGRES_ADMIN_URL, redis_url=REDIS_URL, embedded_state="sqlite")


def test_rows_invalid_when_receiver_stores_nothing(tmp_path: Path) -> None:
    receiver = IgnoringStoreSCP(tmp_path / "storescp")
    bench = small_bench(tmp_path, receiver)
    try:
        anchor = run_storescu(bench)
        migrated = run_migrator(bench, "embedded", "migrator embedded")
    finally:
        receiver.stop()
    files = len(bench.archive.files)
    for run in (anchor, migrated):
        assert not run.valid, run.label
        assert run.problems == [f"storescp stored 0 instance(s), expected {files}"], run.label


def test_row_invalid_when_outcomes_differ_from_manifest(tmp_path: Path) -> None:
    receiver = StoreSCPReceiver(tmp_path / "storescp")
    archive_bench = small_bench(tmp_path, receiver)
    manifest = archive_bench.archive.manifest
    changed = next(index for index, entry in enumerate(manifest.files) if entry.outcome == "sent")
    files = list(manifest.files)
    files[changed] = replace(files[changed], outcome="sinbinned", destination="sinbin", reason="orphan")
    bench = small_bench(tmp_path, receiver, Manifest(manifest.summary, files))
    try:
        migrated = run_migrator(bench, "embedded", "migrator embedded")
    finally:
        receiver.stop()
    assert not migrated.valid
    assert migrated.problems[0].startswith("1 file(s) differ from the manifest: ")
    assert "recorded outcome sent, expected sinbinned" in migrated.problems[0]
    assert len(migrated.problems) == 1


def test_orthanc_counts_corrected_duplicate_twice(tmp_path: Path) -> None:
    """Orthanc keys an instance by patient, study, series and SOP Instance UID as sent."""
    receiver = OrthancReceiver(tmp_path / "orthanc")
    sent = ManifestFile(root="share01", path="a.dcm", size=1, sop_instance_uid="1.2.3.4",
                        study_instance_uid="1.2.3", series_instance_uid="1.2.3.1",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.4.90",
                        kind="CT", scenarios=["duplicate", "merged"], reconciliation="matched",
                        destination="main", outcome="sent", reason=None,
                        corrections={"StudyInstanceUID": "1.2.9", "PatientID": "P2"})
    sinbinned = replace(sent, path="b.dcm", reconciliation="duplicate", destination="sinbin",
                        outcome="sinbinned", reason="duplicate", corrections={})
    assert receiver.expected([sent, sinbinned], corrected=True) == 2
    assert receiver.expected([sent, sinbinned], corrected=False) == 1
    assert StoreSCPReceiver(tmp_path / "storescp").expected([sent, sinbinned], corrected=True) == 2


def test_max_rss_excludes_benchmark_process(tmp_path: Path) -> None:
    """A small command reports its own peak memory, not that of the process that started it."""
    ballast = bytearray(300 * 1024 * 1024)
    for index in range(0, len(ballast), 4096):
        ballast[index] = 1

    finished = run_measured(["true"], tmp_path / "true.log", timeout=60)

    assert finished.failure() is None
    assert finished.usage.max_rss_kib < 100 * 1024
