"""Destination faults in whole runs: an association aborted mid-batch, a late response, a rejection.

Each fault is recorded as a transient failure, never as sent, and the
automatic retry sends the instance once the destination behaves.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from migrator.config import load_settings
from migrator.demo.archive import ExpectedOutcome
from migrator.demo.scp import StorageSCP
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import CALLING_AE, Migration, prepare_migration, running_scps

ENGINES = ["pynetdicom", "dcmsend"]


class AbortingSCP:
    """A storage SCP that aborts the association when a chosen instance first arrives."""

    def __init__(self) -> None:
        self.ae_title = "MAIN"
        #: The SOP Instance UID whose first C-STORE aborts the association.
        self.abort_uid: str | None = None
        #: Every SOP Instance UID in the order it arrived, the aborted one included.
        self.arrivals: list[str] = []
        #: Instances that received a success response.
        self.stored: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self.port = 0

    def __enter__(self) -> AbortingSCP:
        ae = AE(self.ae_title)
        ae.require_calling_aet = [CALLING_AE]
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert server is not None
        self._server = server
        self.port = server.server_address[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        uid = str(request.AffectedSOPInstanceUID)
        with self._lock:
            first = uid not in self.arrivals
            self.arrivals.append(uid)
        if uid == self.abort_uid and first:
            event.assoc.abort()  # the C-STORE response is never sent
            return 0x0000
        with self._lock:
            self.stored.append(uid)
        return 0x0000


def _planned(tmp_path: Path, main: tuple[str, int], side: dict[str, StorageSCP], engine: str,
             **fields: object) -> Migration:
    """Plan the demo archive with retries on, ``main`` as the main destination with ``engine``."""
    endpoints = {"main": main, **{n: (s.ae_title, s.port) for n, s in side.items() if n != "main"}}
    migration = prepare_migration(tmp_path, f"sqlite:///{tmp_path / 'state.sqlite3'}", endpoints,
                                  max_retries=2, backoff_seconds=1)
    config = tmp_path / "migrator.toml"
    settings = "".join(f"{key} = {value}\n" for key, value in {"engine": f'"{engine}"', **fields}.items())
    config.write_text(config.read_text().replace("[destinations.main]\n", "[destinations.main]\n" + settings))
    migration.settings = load_settings(config)
    plan(migration.settings, migration.sessions)
    return migration


def _victim(migration: Migration, engine: str) -> ExpectedOutcome:
    """An image in the middle of its batch, in a transfer syntax that ``engine`` sends itself."""
    images = [e for e in migration.expected("main")
              if engine == "pynetdicom" or e.transfer_syntax == "1.2.840.10008.1.2.4.90"]
    return images[len(images) // 2]


def _assert_failed_then_sent(migration: Migration, victim: ExpectedOutcome, reason: str) -> None:
    entries = migration.audit_of(victim)
    assert [entry.outcome for entry in entries] == ["failed", "sent"]
    failure = entries[0]
    assert failure.transient is True
    assert failure.dimse_status is None
    assert (failure.reason or "").startswith(reason), failure.reason
    assert entries[1].dimse_status == 0x0000
    others = [e for e in migration.expected("main") if e is not victim]
    outcomes = migration.outcomes()
    assert {outcomes[(e.root, e.rel_path)] for e in others} == {"sent"}
    assert all(len(migration.audit_of(e)) == 1 for e in others)


@pytest.mark.parametrize("engine", ENGINES)
def test_aborted_association_fails_then_retries(tmp_path: Path, engine: str) -> None:
    """An abort mid-batch fails only the C-STORE in flight, the rest go on, and the retry sends it."""
    with running_scps(tmp_path) as side, AbortingSCP() as main:
        migration = _planned(tmp_path, (main.ae_title, main.port), side, engine)
        victim = _victim(migration, engine)
        main.abort_uid = victim.sop_instance_uid
        run_embedded(migration.settings, migration.sessions)
    _assert_failed_then_sent(migration, victim, "no C-STORE response from main: ")
    assert Counter(main.arrivals)[victim.sop_instance_uid] == 2
    assert Counter(main.stored)[victim.sop_instance_uid] == 1
    assert sorted(main.stored) == sorted(e.sop_instance_uid for e in migration.expected("main"))


@pytest.mark.parametrize("engine", ENGINES)
def test_late_response_fails_then_retries(tmp_path: Path, engine: str) -> None:
    """A response later than dimse_timeout is a transient failure, which the retry sends."""
    chosen: set[str] = set()
    answered: Counter[str] = Counter()

    def status_for(uid: str) -> int:
        answered[uid] += 1
        if uid in chosen and answered[uid] == 1:
            time.sleep(3)
        return 0x0000

    with running_scps(tmp_path) as side:
        side["main"].status_for = status_for
        migration = _planned(tmp_path, (side["main"].ae_title, side["main"].port), side, engine,
                             dimse_timeout=1)
        victim = _victim(migration, engine)
        chosen.add(victim.sop_instance_uid)
        run_embedded(migration.settings, migration.sessions)
    _assert_failed_then_sent(migration, victim,
                             "no C-STORE response from main: timed out after 1 s (dimse_timeout)")
    assert answered[victim.sop_instance_uid] == 2


def test_rejected_association_fails_transient(tmp_path: Path) -> None:
    """A rejected association fails every main instance as transient, naming the calling AE title."""
    with running_scps(tmp_path) as side, \
            StorageSCP("MAIN", tmp_path / "rejecting", ["SOMEONE"]) as rejecting:
        migration = _planned(tmp_path, (rejecting.ae_title, rejecting.port), side, "pynetdicom")
        run_embedded(migration.settings, migration.sessions)
    outcomes = migration.outcomes()
    for expected in migration.expected("main"):
        assert outcomes[(expected.root, expected.rel_path)] == "failed"
        entries = migration.audit_of(expected)
        assert len(entries) == 3, "the first attempt and two automatic retries"
        for entry in entries:
            assert (entry.outcome, entry.transient, entry.dimse_status) == ("failed", True, None)
            assert (f"destination main (MAIN@127.0.0.1:{rejecting.port}) rejected the association; "
                    "check that it accepts calling AE title MIGRATOR") in (entry.reason or "")
    assert not rejecting.arrivals
    sent = migration.expected("nonpixel")
    assert {outcomes[(e.root, e.rel_path)] for e in sent} == {"sent"}
