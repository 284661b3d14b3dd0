"""Building blocks of the transform tests: sample files, a legacy database, a configuration."""

from __future__ import annotations

import json
import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from numpy.typing import NDArray
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from typer.testing import CliRunner, Result

from migrator.cli import load_commands

CALLING_AE = "MIGRATOR"
#: The reconciliation queries of the transform tests: the legacy row has only the UID and the transformation.
QUERY = "SELECT SOPInstanceUID, Transformation FROM instance WHERE SOPInstanceUID IN :uids"
QUERY_WITHOUT_TRANSFORMATION = "SELECT SOPInstanceUID FROM instance WHERE SOPInstanceUID IN :uids"


def sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} not found"
    return Path(path)


def copy_sample(name: str, target: Path, change: Callable[[Dataset], None] | None = None) -> Dataset:
    """Copy a pydicom test file to ``target`` with new Study, Series and SOP Instance UIDs.

    Several test files share UIDs, and a PACS keeps one instance per SOP
    Instance UID. ``change`` may alter the copy further before it is written.
    """
    ds = pydicom.dcmread(sample(name))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if change is not None:
        change(ds)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return ds


def frames_of(ds: Dataset) -> NDArray[Any]:
    """Decode every frame with pydicom's defaults, shaped (frames, rows, columns, samples)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = ds.pixel_array
    return array.reshape(int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns),
                         int(ds.get("SamplesPerPixel") or 1))


def write_legacy_db(path: Path, transformations: dict[str, str | None]) -> str:
    """Write a legacy SQLite database with one row per UID; return its URL."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE instance (SOPInstanceUID TEXT PRIMARY KEY, Transformation TEXT)")
        connection.executemany("INSERT INTO instance VALUES (?, ?)", list(transformations.items()))
    return f"sqlite:///{path}"


def write_config(path: Path, *, state_url: str, legacy_url: str, root: Path,
                 main: tuple[str, int], sinbin: tuple[str, int], transform: dict[str, Any],
                 transformation_column: bool = True) -> Path:
    """Write a migrator.toml with one root, a main destination, a sin bin and a [transform] section."""
    q = json.dumps
    lines = ["[state]", f"url = {q(state_url)}", "",
             "[legacy]", f"url = {q(legacy_url)}"]
    if transformation_column:
        lines += [f"query = {q(QUERY)}", 'transformation_column = "Transformation"']
    else:
        lines.append(f"query = {q(QUERY_WITHOUT_TRANSFORMATION)}")
    lines += ["", "[run]", f'ae_title = "{CALLING_AE}"', "processes = 1", "",
              "[[roots]]", 'name = "archive"', f"path = {q(str(root))}", ""]
    for section, (ae_title, port) in (("[destinations.main]", main), ("[sinbin]", sinbin)):
        lines += [section, f'ae_title = "{ae_title}"', 'host = "127.0.0.1"', f"port = {port}", ""]
    lines.append("[transform]")
    lines += [f"{key} = {q(value)}" for key, value in transform.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def migrator(*args: str) -> Result:
    """Run the ``migrator`` command line in-process."""
    return CliRunner().invoke(load_commands(), list(args))


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("sop_instance_uid,transformation\n" + "".join(f"{uid},{name}\n" for uid, name in rows),
                    encoding="utf-8")
    return path
