"""``migrator demo`` as a newcomer runs it, and what its logs reveal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom

from migrator.demo.archive import build_demo_archive


def _patient_values(tmp_path: Path) -> set[str]:
    """Every patient name, ID and birth date in the demo archive and its legacy database."""
    archive = build_demo_archive(tmp_path / "reference")
    values: set[str] = set()
    for expected in archive.expected:
        if expected.destination == "unreadable":
            continue
        ds = pydicom.dcmread(archive.roots[expected.root] / expected.rel_path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            if ds.get(keyword):
                values.add(str(ds.get(keyword)))
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            if keyword in expected.corrections:
                values.add(expected.corrections[keyword])
    return values


def test_demo_accounts_for_every_file(tmp_path: Path) -> None:
    """The demo exits 0, prints the outcome table and logs no patient data."""
    result = subprocess.run([sys.executable, "-m", "migrator", "-v", "demo", "--dir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "every one of the 43 files is accounted for" in output
    assert "Demo outcomes" in output
    leaked = {value for value in _patient_values(tmp_path) if value in output}
    assert not leaked


def test_demo_refuses_a_foreign_folder(tmp_path: Path) -> None:
    """A non-empty folder that no demo made is left alone."""
    (tmp_path / "keep.txt").write_text("operator data")
    result = subprocess.run([sys.executable, "-m", "migrator", "demo", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "was not made by 'migrator demo'" in result.stdout + result.stderr
    assert (tmp_path / "keep.txt").exists()
