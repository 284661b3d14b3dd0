"""A distributed migration logged at DEBUG leaves no patient name, ID or birth date in any log.

The archive is made here: six of pydicom's sample files in two roots, with
distinctive patient values in place of their own. A legacy SQLite
database corrects some of these values and has no row for one file, an
orphan that goes to the sin bin.

A Celery worker indexes and migrates the archive from Redis, with
PostgreSQL state. It is started as ``celery worker --loglevel DEBUG``,
because ``migrator worker`` always logs at INFO. ``migrator -v plan
--distributed`` and ``migrator -v start`` run as the planner and the
dispatcher.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from migrator.demo.scp import StorageSCP
from migrator.state.models import Instance, StorageRoot
from tests.support import CALLING_AE
from tests.workers.celery_support import add_broker, stop_process_groups

STATE_PASSWORD = "Wk7-state-pw-9e41"


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    birth_date: str


#: Header values; the family names, IDs and dates appear nowhere else.
QUILL = Patient("QUILLFEATHER^ODALYS^V", "PX7Q-30571", "19310217")
VANTER = Patient("VANTERPOOL^ISMENE", "PX7Q-48213", "19440923")
GRIM = Patient("GRIMSHAWLEAK^TOBIAS", "PX7Q-66102", "19520611")
#: What the legacy database holds for a patient whose values it corrects.
LEGACY = {QUILL: Patient("QUILLFEATHER^ODALYS^VERA", QUILL.patient_id, "19310218"),
          VANTER: Patient(VANTER.name, "PX7Q-48213B", VANTER.birth_date)}


@dataclass(frozen=True)
class ArchiveFile:
    sample: str
    root: str
    rel_path: str
    patient: Patient
    #: False for the orphan: no legacy row.
    in_legacy: bool
    #: The destination that receives it.
    destination: str


FILES = [
    ArchiveFile("CT_small.dcm", "root1", "2021/03/a1.dcm", QUILL, True, "main"),
    ArchiveFile("MR_small.dcm", "root1", "2021/03/a2.dcm", QUILL, True, "main"),
    ArchiveFile("JPEG2000.dcm", "root1", "2021/04/b1.dcm", VANTER, True, "main"),
    ArchiveFile("rtplan.dcm", "root2", "2021/04/b2.dcm", VANTER, True, "nonpixel"),
    ArchiveFile("MR_small_jp2klossless.dcm", "root2", "2022/01/c1.dcm", QUILL, True, "main"),
    ArchiveFile("SC_rgb_rle.dcm", "root2", "2022/01/d1.dcm", GRIM, False, "sinbin"),
]


def patient_strings() -> set[str]:
    """Every form in which a patient value could be logged: family names, IDs, dates as DA and ISO."""
    strings: set[str] = set()
    for patient in [QUILL, VANTER, GRIM, *LEGACY.values()]:
        strings |= {patient.name, patient.name.split("^")[0], patient.patient_id, patient.birth_date,
                    f"{patient.birth_date[:4]}-{patient.birth_date[4:6]}-{patient.birth_date[6:]}"}
    return strings


def _build_archive(folder: Path) -> tuple[dict[str, Path], Path, dict[str, str]]:
    """Write the files and the legacy database; return the roots, its path and SOP Instance UID per file."""
    roots = {name: folder / name for name in ("root1", "root2")}
    uids: dict[str, str] = {}
    study_uids = {QUILL: generate_uid(), VANTER: generate_uid(), GRIM: generate_uid()}
    rows = []
    for file in FILES:
        ds = pydicom.dcmread(get_testdata_file(file.sample))  # type: ignore[arg-type]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = (file.patient.name, file.patient.patient_id,
                                                             file.patient.birth_date)
        ds.StudyInstanceUID = study_uids[file.patient]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = roots[file.root] / file.rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        uids[file.rel_path] = str(ds.SOPInstanceUID)
        if file.in_legacy:
            legacy = LEGACY.get(file.patient, file.patient)
            rows.append((str(ds.SOPInstanceUID), legacy.patient_id, legacy.name, legacy.birth_date,
                         str(ds.StudyInstanceUID), str(path)))
    database = folder / "legacy.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE instances (sop TEXT, pid TEXT, pname TEXT, birth TEXT, "
                           "study TEXT, path TEXT)")
        connection.executemany("INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?)", rows)
    connection.close()
    return roots, database, uids


def _write_config(folder: Path, state_url: str, roots: dict[str, Path], legacy: Path,
                  scps: dict[str, StorageSCP]) -> Path:
    lines = ["[state]", f'url = "{state_url}"', 'password_env = "MIGRATOR_TEST_STATE_PASSWORD"', "",
             "[legacy]", f'url = "sqlite:///{legacy}"',
             'query = "SELECT sop AS SOPInstanceUID, pid AS PatientID, pname AS PatientName, '
             'birth AS PatientBirthDate, study AS StudyInstanceUID, path AS FilePath '
             'FROM instances WHERE sop IN :uids"', "",
             "[run]", f'ae_title = "{CALLING_AE}"', "processes = 1", "",
             "[batches]", "max_instances = 2", ""]
    for name, path in roots.items():
        lines += ["[[roots]]", f'name = "{name}"', f'path = "{path}"', ""]
    for name, scp in scps.items():
        section = "[sinbin]" if name == "sinbin" else f"[destinations.{name}]"
        lines += [section, f'ae_title = "{scp.ae_title}"', 'host = "127.0.0.1"', f"port = {scp.port}", ""]
    config = folder / "migrator.toml"
    config.write_text("\n".join(lines), encoding="utf-8")
    return config


def _migrator(config: Path, environment: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", "-v", *command, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=environment)


@pytest.fixture
def worker_processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Processes the test starts, each stopped with its process group afterwards."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    stop_process_groups(started)


def test_debug_logs_without_patient_data(tmp_path: Path, postgres_url: str,
                                         worker_processes: list[subprocess.Popen[Any]]) -> None:
    """Planner, dispatcher and worker logs at DEBUG contain no patient value and no password."""
    roots, legacy, uids = _build_archive(tmp_path / "archive")
    scps = {name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE]).start()
            for name in ("main", "nonpixel", "sinbin")}
    state_url = make_url(postgres_url).set(username="postgres").render_as_string(hide_password=False)
    try:
        config = _write_config(tmp_path, state_url, roots, legacy, scps)
        prefix = add_broker(config, max_in_flight_per_root=2)
        environment = {**os.environ, "MIGRATOR_TEST_STATE_PASSWORD": STATE_PASSWORD, "COLUMNS": "2000",
                       "MIGRATOR_CONFIG": str(config)}
        worker_log = tmp_path / "worker.log"
        with worker_log.open("w") as log:
            worker_processes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "--app", "workers.app", "worker", "--loglevel", "DEBUG",
                 "--queues", f"{prefix}.root1,{prefix}.root2", "--concurrency", "1", "--without-gossip",
                 "--without-mingle", "--hostname", f"{prefix}@%h"],
                stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True))
        # The worker indexes the folders, reading every header, and then migrates the batches.
        planned = _migrator(config, environment, "plan", "--distributed")
        assert planned.returncode == 0, planned.stdout + planned.stderr + worker_log.read_text()[-3000:]
        started = _migrator(config, environment, "start")
        assert started.returncode == 0, started.stdout + started.stderr + worker_log.read_text()[-3000:]
    finally:
        for scp in scps.values():
            scp.stop()

    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        recorded = {(root, rel): outcome for root, rel, outcome in connection.execute(
            select(StorageRoot.name, Instance.rel_path, Instance.outcome)
            .join(StorageRoot, StorageRoot.id == Instance.root_id))}
    engine.dispose()
    assert recorded == {(file.root, file.rel_path): "sinbinned" if file.destination == "sinbin" else "sent"
                        for file in FILES}
    for file in FILES:
        assert uids[file.rel_path] in scps[file.destination].received, file.rel_path
    # The corrected values reached the destination, so they passed through the worker.
    corrected = pydicom.dcmread(scps["main"].folder / f"{uids['2021/03/a1.dcm']}.dcm", stop_before_pixels=True)
    assert str(corrected.PatientName) == LEGACY[QUILL].name

    logs = {"plan": planned.stdout + planned.stderr, "start": started.stdout + started.stderr,
            "worker": worker_log.read_text(errors="replace")}
    assert "DEBUG/" in logs["worker"], "the worker did not log at DEBUG"
    assert "migrator.index_folder" in logs["worker"], "the worker indexed no folder"
    assert "migrator.migrate_batch" in logs["worker"], "the worker migrated no batch"
    for name, text in logs.items():
        joined = "".join(text.split())
        leaked = sorted(value for value in patient_strings() if value in text or value in joined)
        assert leaked == [], f"the {name} log contains patient values {leaked}"
        assert STATE_PASSWORD not in joined, f"the {name} log contains the state database password"
