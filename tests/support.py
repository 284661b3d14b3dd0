"""Building a test migration: the demo archive, a configuration, and a run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from migrator.config import Settings, load_settings
from migrator.demo.archive import DemoArchive, ExpectedOutcome, build_demo_archive
from migrator.demo.run import write_config
from migrator.demo.scp import StorageSCP
from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Instance, StorageRoot

CALLING_AE = "MIGRATOR"


@dataclass
class Migration:
    archive: DemoArchive
    settings: Settings
    sessions: sessionmaker[Session]

    def expected(self, destination: str) -> list[ExpectedOutcome]:
        return [e for e in self.archive.expected if e.destination == destination]

    def outcomes(self) -> dict[tuple[str, str], str | None]:
        """(root, relative path) -> recorded outcome."""
        with self.sessions() as session:
            rows = session.execute(select(StorageRoot.name, Instance.rel_path, Instance.outcome)
                                   .join(StorageRoot, StorageRoot.id == Instance.root_id))
            return {(root, rel): outcome for root, rel, outcome in rows}

    def audit_of(self, expected: ExpectedOutcome) -> list[AuditEntry]:
        with self.sessions() as session:
            return list(session.scalars(
                select(AuditEntry).join(Instance, Instance.id == AuditEntry.instance_id)
                .join(StorageRoot, StorageRoot.id == Instance.root_id)
                .where(StorageRoot.name == expected.root, Instance.rel_path == expected.rel_path)
                .order_by(AuditEntry.id)))

    def outcome_counts(self) -> Counter[str | None]:
        return Counter(self.outcomes().values())

    def repeats(self, scps: dict[str, StorageSCP]) -> dict[str, int]:
        """SOP Instance UIDs the SCPs received more than once, beyond the intended duplicate pair.

        The demo's duplicate pair shares one UID on purpose: one copy goes to
        main, the other to the sin bin.
        """
        arrivals = Counter(uid for scp in scps.values() for uid in scp.arrivals)
        duplicate_uids = {e.sop_instance_uid for e in self.expected("sinbin") if e.reason == "duplicate"}
        return {uid: n for uid, n in arrivals.items()
                if n > 1 and not (uid in duplicate_uids and n == 2)}


def prepare_migration(tmp_path: Path, state_url: str, endpoints: dict[str, tuple[str, int]],
                      processes: int = 2, max_retries: int = 0, backoff_seconds: int = 1) -> Migration:
    """Build the demo archive under ``tmp_path`` and a configuration aimed at ``endpoints``.

    Automatic retries are off unless ``max_retries`` is given, so a test
    of a failure finds it recorded at once.
    """
    archive = build_demo_archive(tmp_path / "archive")
    config = write_config(tmp_path, archive, endpoints, processes, state_url=state_url)
    with config.open("a") as file:
        file.write(f"\n[retries]\nmax_retries = {max_retries}\nbackoff_seconds = {backoff_seconds}\n")
    settings = load_settings(config)
    sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
    return Migration(archive, settings, sessions)


@contextmanager
def running_scps(tmp_path: Path, delay: float = 0.0) -> Iterator[dict[str, StorageSCP]]:
    """Run main, non-pixel and sin bin SCPs for the length of the block."""
    scps = {name: StorageSCP(name.upper(), tmp_path / name, [CALLING_AE], delay=delay).start()
            for name in ("main", "nonpixel", "sinbin")}
    try:
        yield scps
    finally:
        for scp in scps.values():
            scp.stop()
