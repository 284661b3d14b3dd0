"""The planner at 100,000 and 1,000,000 index rows, without generating that many DICOM files.

The storage root is a tree of hard links to a few copies of one generated
CT file, all with the same size and modification time. The state database
receives one synthetic index row per link, with that size and time, so
``migrator plan`` finds every file unchanged and parses none. The first
plan walks the tree and cuts every row into stripe batches. The second one
walks the unchanged tree and has nothing left to cut, so the difference of
the two is an estimate of the time that cutting takes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from loadtest.bench.config import RunConfig, write_run_config
from loadtest.bench.contenders import Archive
from loadtest.bench.databases import postgres_database
from loadtest.bench.measure import Finished, run_measured
from loadtest.bench.results import ScaleMeasure
from migrator.state.db import open_state
from migrator.state.models import Batch, Instance, StorageRoot

LOGGER = logging.getLogger(__name__)

ROOT_NAME = "scale01"
FILES_PER_FOLDER = 1000
#: ext4 allows 65,000 hard links per inode; each copy of the source file takes fewer.
LINKS_PER_SOURCE = 50_000
#: Instances per synthetic study, as in the generator's default.
INSTANCES_PER_STUDY = 150
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: A placeholder destination for migrator.toml; planning opens no association.
UNUSED_PORT = 11112


class _Tree:
    """A storage root of hard links that grows to the number of rows asked for."""

    def __init__(self, folder: Path, template: Path) -> None:
        self.root = folder / "root"
        self.sources = folder / "sources"
        self.template = template
        self.files = 0
        self.size = template.stat().st_size
        self.mtime_ns = template.stat().st_mtime_ns

    @staticmethod
    def rel_path(index: int) -> tuple[str, str]:
        folder = f"F{index // FILES_PER_FOLDER:05d}"
        return folder, f"{folder}/I{index:07d}.dcm"

    def _source(self, index: int) -> Path:
        path = self.sources / f"S{index // LINKS_PER_SOURCE:04d}.dcm"
        if not path.exists():
            self.sources.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.template, path)
            os.utime(path, ns=(self.mtime_ns, self.mtime_ns))
        return path

    def grow(self, files: int) -> None:
        for index in range(self.files, files):
            folder, rel_path = self.rel_path(index)
            if index % FILES_PER_FOLDER == 0:
                (self.root / folder).mkdir(parents=True, exist_ok=True)
            os.link(self._source(index), self.root / rel_path)
        self.files = max(self.files, files)


def _insert_rows(state_url: str, root_id: int, tree: _Tree, rows: int) -> float:
    """Insert ``rows`` index rows that match the tree's files with COPY; return the seconds."""
    conninfo = make_url(state_url).set(drivername="postgresql").render_as_string(hide_password=False)
    now = datetime.now(UTC)
    started = time.perf_counter()
    with psycopg.connect(conninfo) as connection:
        with connection.cursor() as cursor:
            columns = ("root_id, rel_path, folder, size, mtime_ns, transfer_syntax, sop_class_uid, "
                       "sop_instance_uid, study_uid, series_uid, modality, has_pixel_data, indexed_at")
            with cursor.copy(f"COPY instances ({columns}) FROM STDIN") as copy:
                for index in range(rows):
                    folder, rel_path = tree.rel_path(index)
                    study = f"2.25.{1_000_000 + index // INSTANCES_PER_STUDY}"
                    copy.write_row((root_id, rel_path, folder, tree.size, tree.mtime_ns, JPEG_2000_LOSSLESS,
                                    CT_IMAGE_STORAGE, f"2.25.{10_000_000 + index}", study, f"{study}.1",
                                    "CT", True, now))
        # Autovacuum would analyze the table during a real plan, which inserts the rows over hours.
        connection.execute("ANALYZE instances")
    return time.perf_counter() - started


def _plan(config: Path, folder: Path, name: str, timeout: float) -> Finished:
    return run_measured([sys.executable, "-m", "migrator", "plan", "--config", str(config)],
                        folder / f"{name}.log", timeout)


def measure_scale(row_counts: list[int], archive: Archive, folder: Path, postgres_url: str,
                  processes: int, timeout: float) -> list[ScaleMeasure]:
    """Measure the two plans at each row count, each on a new PostgreSQL state database."""
    template = next(archive.roots[entry.root] / entry.path for entry in archive.files if entry.kind == "CT")
    tree = _Tree(folder, template)
    measures = []
    for rows in sorted(row_counts):
        LOGGER.info("planner scale: linking %d files and inserting %d index rows", rows, rows)
        tree.grow(rows)
        with postgres_database(postgres_url, f"scale_{rows}") as state_url:
            measures.append(_measure(rows, tree, folder / f"rows-{rows}", state_url, archive, processes,
                                     timeout))
    return measures


def _measure(rows: int, tree: _Tree, folder: Path, state_url: str, archive: Archive, processes: int,
             timeout: float) -> ScaleMeasure:
    sessions = open_state(state_url)
    engine = sessions.kw["bind"]
    try:
        with sessions() as session:
            root = StorageRoot(name=ROOT_NAME, path=str(tree.root))
            session.add(root)
            session.commit()
            root_id = root.id
        insert_seconds = _insert_rows(state_url, root_id, tree, rows)
        config = write_run_config(folder, {ROOT_NAME: tree.root}, archive.legacy_url,
                                  RunConfig(state_url, UNUSED_PORT, "UNUSED", processes))
        cut = _plan(config, folder, "plan-cut", timeout)
        replan = _plan(config, folder, "plan-unchanged", timeout)
        problems = [failure for failure in (cut.failure(), replan.failure()) if failure is not None]
        with sessions() as session:
            indexed = session.scalar(select(func.count(Instance.id))) or 0
            unbatched = session.scalar(select(func.count(Instance.id)).where(Instance.batch_id.is_(None))) or 0
            batches = session.scalar(select(func.count(Batch.id))) or 0
        if indexed != rows:
            problems.append(f"the index has {indexed} rows after planning, expected {rows}: the walk "
                            "found files that no synthetic row matches")
        if unbatched:
            problems.append(f"{unbatched} index rows are not in a batch after planning")
    finally:
        engine.dispose()
    return ScaleMeasure(rows=rows, folders=-(-rows // FILES_PER_FOLDER),
                        cut_seconds=cut.usage.seconds, cut_cpu_seconds=cut.usage.cpu_seconds,
                        cut_max_rss_kib=cut.usage.max_rss_kib, batches=batches,
                        replan_seconds=replan.usage.seconds, replan_cpu_seconds=replan.usage.cpu_seconds,
                        replan_max_rss_kib=replan.usage.max_rss_kib, insert_seconds=insert_seconds,
                        problems=problems)
