"""Writing a whole synthetic archive: files, legacy database, manifest and migrator.toml."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import URL

from loadtest.archive.config import RunSettings, write_migrator_config
from loadtest.archive.instances import (
    CTSeriesEncoder,
    ImageEncoders,
    NonPixelSeriesEncoder,
)
from loadtest.archive.layout import (
    CT,
    ArchiveSpec,
    PlannedFile,
    iter_files,
    plan_archive,
)
from loadtest.archive.legacy_db import legacy_database
from loadtest.archive.manifest import ManifestWriter
from loadtest.archive.pixels import PixelTemplates, build_pixel_templates
from migrator.config import DatabaseConfig, Settings

LOGGER = logging.getLogger(__name__)

LEGACY_DB_NAME = "legacy-pacs.sqlite3"
#: Files written between two calls of the progress callback.
PROGRESS_EVERY = 200


@dataclass(frozen=True)
class GeneratedArchive:
    """A generated archive and what it took to write it."""

    folder: Path
    roots: dict[str, Path]
    #: The legacy database URL as written to migrator.toml (without a password).
    legacy_url: str
    settings: Settings
    #: The content of manifest.json.
    summary: dict[str, Any]
    #: Wall-clock seconds from the start of planning to the written migrator.toml.
    seconds: float

    @property
    def files_per_second(self) -> float:
        return self.summary["files"] / self.seconds if self.seconds else 0.0


class _FileWriter:
    """Writes planned files, making one header template per series."""

    def __init__(self, roots: dict[str, Path], pixels: PixelTemplates, seed: int) -> None:
        self._roots = roots
        self._images = ImageEncoders(pixels, seed)
        self._seed = seed
        self._folders: set[Path] = set()
        self._series_uid: str | None = None
        self._encoder: CTSeriesEncoder | NonPixelSeriesEncoder | None = None

    def _encoder_for(self, file: PlannedFile) -> CTSeriesEncoder | NonPixelSeriesEncoder:
        if self._encoder is None or self._series_uid != file.series.uid:
            if file.series.kind == CT:
                self._encoder = self._images.for_series(file.study, file.series)
            else:
                self._encoder = NonPixelSeriesEncoder(file.study, file.series, file.sop_class_uid,
                                                      file.transfer_syntax, self._seed)
            self._series_uid = file.series.uid
        return self._encoder

    def write(self, file: PlannedFile) -> int:
        """Write ``file`` and return its size in bytes."""
        path = self._roots[file.root] / file.rel_path
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        encoder = self._encoder_for(file)
        if isinstance(encoder, NonPixelSeriesEncoder):
            data = encoder.encode(file)
            path.write_bytes(data)
            return len(data)
        head, pixel_data = encoder.encode(file)
        # Two writes, so the 160 to 200 kB of Pixel Data are not copied into one buffer first.
        with open(path, "wb") as stream:
            stream.write(head)
            stream.write(pixel_data)
        return len(head) + len(pixel_data)


def _prepare_folder(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"output folder {folder} is not empty; give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)


def _database_config(role: str, url: str, password_env: str | None) -> DatabaseConfig:
    """Validate a database URL as migrator.toml will, before any file is written."""
    try:
        return DatabaseConfig(url=url, password_env=password_env)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"invalid {role} database URL: {message}") from None


def _legacy_urls(folder: Path, legacy_url: str | None,
                 password_env: str | None) -> tuple[str, URL | str]:
    """Return the legacy URL for migrator.toml and the one to connect with (password added)."""
    if legacy_url is None:
        url = f"sqlite:///{folder / LEGACY_DB_NAME}"
        return url, url
    return legacy_url, _database_config("legacy", legacy_url, password_env).sqlalchemy_url()


def generate_archive(folder: Path, spec: ArchiveSpec, run: RunSettings | None = None,
                     legacy_url: str | None = None,
                     progress: Callable[[int], None] | None = None) -> GeneratedArchive:
    """Generate the archive of ``spec`` in ``folder``.

    Parameters
    ----------
    folder
        A new or empty folder. It receives ``roots/<root>/``, the legacy
        database (``legacy-pacs.sqlite3`` unless ``legacy_url`` is given),
        ``manifest.json``, ``manifest-files.jsonl`` and ``migrator.toml``.
    spec
        What to generate.
    run
        State database, destinations and processes for migrator.toml.
    legacy_url
        SQLAlchemy URL of an empty database for the legacy tables, without a
        password (``run.legacy_password_env`` names the variable that contains it).
    progress
        Called with the number of files written since its last call.

    Raises
    ------
    ValueError
        If the specification or a URL is invalid.
    FileExistsError
        If ``folder`` is not empty, or the legacy database already has its tables.
    FileNotFoundError
        If pydicom-data, which ships the CT sample, is not installed.
    migrator.errors.ConfigError
        If the migrator rejects the written migrator.toml, or a password
        variable is not set.
    """
    run = run or RunSettings()
    started = time.perf_counter()
    plan = plan_archive(spec)
    folder = folder.resolve()
    toml_legacy_url, connect_url = _legacy_urls(folder, legacy_url, run.legacy_password_env)
    if run.state_url is not None:
        _database_config("state", run.state_url, run.state_password_env)
    _prepare_folder(folder)
    roots = {name: folder / "roots" / name for name in spec.root_names}
    for root in roots.values():
        root.mkdir(parents=True)
    writer = _FileWriter(roots, build_pixel_templates(spec.frames, spec.seed), spec.seed)
    manifest = ManifestWriter(folder, plan)
    LOGGER.info("Generating %d instances in %d studies on %d roots into %s",
                spec.instances, len(plan.studies), spec.roots, folder)

    unreported = 0
    try:
        with legacy_database(connect_url, plan) as database:
            for file in iter_files(plan):
                size = writer.write(file)
                database.add(file)
                manifest.add(file, size)
                unreported += 1
                if progress is not None and unreported == PROGRESS_EVERY:
                    progress(unreported)
                    unreported = 0
    finally:
        manifest.close()
    summary = manifest.write_summary()
    if progress is not None and unreported:
        progress(unreported)

    settings = write_migrator_config(folder, roots, toml_legacy_url, run)
    seconds = time.perf_counter() - started
    LOGGER.info("Generated %d files (%.1f GB) in %.1f s", summary["files"], summary["bytes"] / 1e9, seconds)
    return GeneratedArchive(folder, roots, toml_legacy_url, settings, summary, seconds)
