"""Bad and odd files end to end: ``migrator plan`` and ``migrator start`` into DCMTK's storescp.

Each file of :func:`loadtest.badfiles.write_bad_files` must get exactly the
outcome its spec states. When the tests run as root, the plan runs without
the capabilities that let root read files and list folders of mode 000.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_fragments
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from loadtest.archive.config import Endpoint, RunSettings, write_migrator_config
from loadtest.archive.legacy_db import legacy_path_prefix
from loadtest.badfiles import (
    FRAME_BYTES,
    NOT_INDEXED,
    SENT,
    SINBINNED,
    UNREADABLE,
    BadFileSpec,
    add_legacy_rows,
    write_bad_files,
    write_multiframe,
)
from migrator.config import Settings, load_settings
from migrator.demo.scp import StorageSCP
from migrator.dicom.prepare import Method, ScratchFolder, prepare_file
from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Instance, SinBinItem
from migrator.steps import StepContext
from migrator.steps.correct import correct_from_legacy
from scheduler.plan.run import plan
from tests.peers import StoreSCP
from tests.support import CALLING_AE

ROOT = "share01"
FOLDER = "bad"
MIGRATOR = Path(sys.executable).parent / "migrator"
#: Wide enough that rich prints each warning of the plan on one line.
WIDE = {"COLUMNS": "500"}


def _plan_command(config: Path) -> list[str]:
    """Return the plan's command line, without root's power to read any file when this process is root.

    Root reads files and lists folders of mode 000 through the capabilities
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. setpriv starts the plan
    without them, so the kernel checks the mode bits as for any other user,
    while the plan can still use the interpreter under /root (mode 700),
    which the user ``nobody`` could not run.
    """
    command = [str(MIGRATOR), "plan", "--config", str(config)]
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("the tests run as root, which reads files of mode 000, and setpriv (util-linux) "
                    "is missing to run the plan without that power")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *command]


def _unlock(folder: Path) -> None:
    """Make every file and folder under ``folder`` removable again."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o755)


def _write_config(base: Path, root: Path, legacy_url: str, state_url: str,
                  endpoints: dict[str, Endpoint]) -> Settings:
    write_migrator_config(base, {ROOT: root}, legacy_url,
                          RunSettings(state_url=state_url, endpoints=endpoints, processes=2))
    config = base / "migrator.toml"
    with config.open("a", encoding="utf-8") as file:
        file.write("\n[retries]\nmax_retries = 0\n")
    return load_settings(config)


@pytest.fixture
def bad_files(tmp_path: Path) -> Iterator[tuple[Path, list[BadFileSpec]]]:
    """The bad files in the folder ``bad`` of a storage root, with their legacy rows."""
    root = tmp_path / "root"
    specs = write_bad_files(root / FOLDER, tmp_path / "outside")
    add_legacy_rows(f"sqlite:///{tmp_path / 'legacy.sqlite3'}", specs, FOLDER, legacy_path_prefix(ROOT))
    yield root, specs
    _unlock(root)


def _rows(sessions: sessionmaker[Session]) -> dict[str, Instance]:
    with sessions() as session:
        return {row.rel_path: row for row in session.scalars(select(Instance))}


def _reasons(sessions: sessionmaker[Session], instance_id: int) -> list[str]:
    with sessions() as session:
        return [entry.reason or "" for entry in session.scalars(
            select(AuditEntry).where(AuditEntry.instance_id == instance_id).order_by(AuditEntry.id))]


def _read(path: Path, stop_before_pixels: bool = False, force: bool = False) -> pydicom.Dataset:
    with warnings.catch_warnings():
        # pydicom warns about each oddity that a bad file has on purpose, such as its character set.
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=force)
        for element in ds:
            pass  # convert every element while warnings are off
        return ds


def _received(scp: StoreSCP) -> dict[str, Path]:
    return {str(_read(path, stop_before_pixels=True).SOPInstanceUID): path for path in scp.received()}


def _stored_pixels(path: Path) -> bytes:
    """Return the Pixel Data value of a bad file as stored, reading files without File Meta too."""
    return bytes(_read(path, force=True).PixelData)


def _body_encoding(path: Path) -> tuple[bool, bool]:
    """Return (implicit VR, little endian) of the data set's elements, as read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    raw = [element for element in map(ds.get_item, ds.keys()) if isinstance(element, RawDataElement)]
    assert raw, path
    return raw[0].is_implicit_VR, raw[0].is_little_endian


def _check_sent(spec: BadFileSpec, source: Path, received: Path) -> None:
    ds = _read(received)
    syntax = ds.file_meta.TransferSyntaxUID
    assert syntax == spec.transfer_syntax, spec.kind
    # pydicom reads a body in another encoding than its syntax's, with a warning only.
    assert _body_encoding(received) == (syntax.is_implicit_VR, syntax.is_little_endian), spec.kind
    assert ds.SOPClassUID == spec.sop_class_uid, spec.kind
    assert ds.file_meta.MediaStorageSOPInstanceUID == spec.sop_instance_uid, spec.kind
    for keyword, value in spec.corrections.items():
        assert str(ds.get(keyword)) == value, f"{spec.kind}: {keyword} not corrected"
    if "PixelData" not in ds:
        return
    stored = _stored_pixels(source)
    if syntax.is_compressed:
        # storescp writes the fragments as received: each as stored, an odd one with a NULL byte.
        sent = list(generate_fragments(ds.PixelData))
        assert sent == [fragment + b"\x00" * (len(fragment) % 2)
                        for fragment in generate_fragments(stored)], spec.kind
    else:
        assert bytes(ds.PixelData) == stored, spec.kind


def test_each_bad_file_gets_its_outcome(tmp_path: Path, bad_files: tuple[Path, list[BadFileSpec]],
                                        postgres_url: str) -> None:
    """Every bad file is sent, sinbinned, unreadable with its reason, or not indexed, as its spec states."""
    root, specs = bad_files
    with StoreSCP(tmp_path / "storescp", "STORESCP") as dcmtk:
        sinbin = StorageSCP("SINBIN", tmp_path / "sinbin", [CALLING_AE]).start()
        try:
            endpoints = {"main": Endpoint("127.0.0.1", dcmtk.port, "STORESCP"),
                         "nonpixel": Endpoint("127.0.0.1", dcmtk.port, "STORESCP"),
                         "sinbin": Endpoint("127.0.0.1", sinbin.port, "SINBIN")}
            settings = _write_config(tmp_path, root, f"sqlite:///{tmp_path / 'legacy.sqlite3'}",
                                     postgres_url, endpoints)
            config = tmp_path / "migrator.toml"
            planned = subprocess.run(_plan_command(config), capture_output=True, text=True, timeout=120,
                                     env={**os.environ, **WIDE}, stdin=subprocess.DEVNULL)
            # The folder of mode 000 cannot be listed, so the plan ends with status 1.
            assert planned.returncode == 1, planned.stdout + planned.stderr
            assert "folder(s) could not be read" in planned.stderr, planned.stdout + planned.stderr
            started = subprocess.run([str(MIGRATOR), "start", "--config", str(config)], capture_output=True,
                                     text=True, timeout=120, env={**os.environ, **WIDE},
                                     stdin=subprocess.DEVNULL)
        finally:
            sinbin.stop()
        received = _received(dcmtk)

    sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
    rows = _rows(sessions)
    with sessions() as session:
        sinbin_reasons = dict(session.execute(select(SinBinItem.instance_id, SinBinItem.reason)).all())
    sent_uids = set()
    for spec in specs:
        expected = spec.expected_for(as_root=False)
        rel_path = f"{FOLDER}/{spec.rel_path}"
        if expected.outcome == NOT_INDEXED:
            assert rel_path not in rows, spec.kind
            assert expected.reason is not None
            # The plan names a link by its path, and a file in a folder it cannot list by the folder.
            path = root / rel_path
            assert any(expected.reason in line and (f"{path}:" in line or f"{path.parent}:" in line)
                       for line in planned.stderr.splitlines()), \
                f"{spec.kind}: the plan does not list {rel_path} with '{expected.reason}'"
            continue
        row = rows.pop(rel_path)
        assert row.outcome == expected.outcome, f"{spec.kind}: {row.outcome} ({_reasons(sessions, row.id)})"
        if expected.outcome == UNREADABLE:
            assert expected.reason is not None
            assert row.parse_error is not None, spec.kind
            assert expected.reason in row.parse_error, spec.kind
            assert _reasons(sessions, row.id) == [f"unreadable: {row.parse_error}"], spec.kind
        elif expected.outcome == SINBINNED:
            assert sinbin_reasons[row.id].startswith(expected.reason or ""), spec.kind
            assert spec.sop_instance_uid in sinbin.received, spec.kind
        else:
            assert expected.outcome == SENT
            assert spec.sop_instance_uid is not None
            sent_uids.add(spec.sop_instance_uid)
            _check_sent(spec, root / FOLDER / spec.rel_path, received[spec.sop_instance_uid])
    assert rows == {}, "indexed files without a spec"
    assert set(received) == sent_uids
    # migrator start ends with status 1 while an instance has failed.
    assert started.returncode == 0, started.stdout + started.stderr


def test_large_multiframe_is_streamed(tmp_path: Path, sqlite_url: str) -> None:
    """A corrected 400 MiB multi-frame image is sent with less memory than half its size per process."""
    root = tmp_path / "root"
    path = root / FOLDER / "large.dcm"
    spec = write_multiframe(path, frames=800)
    size = path.stat().st_size
    assert size > 800 * FRAME_BYTES
    with ScratchFolder() as scratch:
        legacy = StepContext(1, spec.corrections)
        prepared = prepare_file(path, lambda dataset: correct_from_legacy(dataset, legacy), scratch)
        # A file in /dev/shm would be a second copy in memory.
        assert prepared.method is Method.SPLICED
        assert not prepared.path.is_relative_to("/dev/shm")
        assert prepared.path.stat().st_size > 800 * FRAME_BYTES
    add_legacy_rows(f"sqlite:///{tmp_path / 'legacy.sqlite3'}", [spec], FOLDER, legacy_path_prefix(ROOT))
    with StoreSCP(tmp_path / "storescp", "STORESCP") as dcmtk:
        endpoints = {name: Endpoint("127.0.0.1", dcmtk.port, "STORESCP")
                     for name in ("main", "nonpixel", "sinbin")}
        settings = _write_config(tmp_path, root, f"sqlite:///{tmp_path / 'legacy.sqlite3'}", sqlite_url,
                                 endpoints)
        sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
        plan(settings, sessions)
        usage = tmp_path / "usage.json"
        # The wrapper reports the peak RSS of migrator start and of the pool processes it waited for.
        started = subprocess.run(
            [sys.executable, "-m", "loadtest.bench.rusage_wrapper", str(usage), str(MIGRATOR), "start",
             "--config", str(tmp_path / "migrator.toml")],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert started.returncode == 0, started.stdout + started.stderr
        received = dcmtk.received()
    assert [row.outcome for row in _rows(sessions).values()] == [SENT]
    assert len(received) == 1
    assert received[0].stat().st_size > 800 * FRAME_BYTES
    ds = pydicom.dcmread(received[0], stop_before_pixels=True)
    assert ds.SOPInstanceUID == spec.sop_instance_uid
    assert ds.PatientName == spec.corrections["PatientName"]
    # A worker process takes about 130 MiB before it reads any file.
    max_rss = json.loads(usage.read_text())["max_rss_kib"] * 1024
    assert max_rss < size / 2, f"peak RSS {max_rss / 2**20:.0f} MiB for a file of {size / 2**20:.0f} MiB"
