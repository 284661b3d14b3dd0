"""``python -m loadtest generate`` as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtest.archive import read_manifest
from migrator.config import load_settings


def run_generate(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadtest", "generate", *arguments],
                          capture_output=True, text=True, timeout=300)


def test_hundred_instances_on_eleven_roots(tmp_path: Path) -> None:
    """The defaults spread even 100 instances over all 11 roots and aim at placeholders."""
    out = tmp_path / "archive"
    result = run_generate("--out", str(out), "--instances", "100")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "files/s" in result.stdout
    assert "Expected outcomes" in result.stdout
    manifest = read_manifest(out)
    assert len({entry.sop_instance_uid for entry in manifest.files}) == 100
    roots = sorted(path.name for path in (out / "roots").iterdir())
    assert roots == [f"share{number:02d}" for number in range(1, 12)]
    for root in roots:
        assert any(path.is_file() for path in (out / "roots" / root).rglob("*")), root
    settings = load_settings(out / "migrator.toml")
    assert {name: (d.host, d.port, d.ae_title) for name, d in settings.destinations.items()} == {
        "main": ("127.0.0.1", 11112, "NEWPACS"), "nonpixel": ("127.0.0.1", 11113, "NEWPACS_NP")}
    assert (settings.sinbin.host, settings.sinbin.port, settings.sinbin.ae_title) == (
        "127.0.0.1", 11114, "SINBIN")
    assert settings.state.url == f"sqlite:///{out / 'state.sqlite3'}"
    assert settings.run.ae_title == "MIGRATOR"


def test_destination_options(tmp_path: Path) -> None:
    out = tmp_path / "archive"
    result = run_generate("--out", str(out), "--instances", "20", "--roots", "2",
                          "--main", "127.0.0.1:5104:MAINPACS", "--sinbin", "127.0.0.1:5105:REVIEW",
                          "--calling-aet", "BENCH", "--processes", "3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    settings = load_settings(out / "migrator.toml")
    assert (settings.destinations["main"].port, settings.destinations["main"].ae_title) == (5104, "MAINPACS")
    assert settings.destinations["nonpixel"].port == 11113
    assert (settings.sinbin.port, settings.sinbin.ae_title) == (5105, "REVIEW")
    assert (settings.run.ae_title, settings.run.processes) == ("BENCH", 3)


def test_invalid_destination_rejected(tmp_path: Path) -> None:
    result = run_generate("--out", str(tmp_path / "archive"), "--main", "127.0.0.1:notaport:PACS")
    assert result.returncode == 2
    assert "invalid port" in result.stderr
    assert not (tmp_path / "archive").exists()


def test_invalid_rate_rejected(tmp_path: Path) -> None:
    result = run_generate("--out", str(tmp_path / "archive"), "--orphan-rate", "2")
    assert result.returncode == 2
    assert "orphan_rate must be between 0 and 1" in result.stderr


def test_non_empty_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("operator data")
    result = run_generate("--out", str(tmp_path), "--instances", "10")
    assert result.returncode == 1
    assert "is not empty" in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


def test_password_in_url_rejected(tmp_path: Path) -> None:
    result = run_generate("--out", str(tmp_path / "archive"), "--instances", "10",
                          "--legacy-url", "postgresql+psycopg://reader:secret@127.0.0.1/pacs")
    assert result.returncode == 1
    assert "password" in result.stderr
    assert "secret" not in result.stderr + result.stdout
