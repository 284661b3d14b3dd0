"""Dispatch controls: pause and resume, time-of-day windows, requeue of failures."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from migrator.config import BrokerConfig, Window, load_settings
from migrator.controls import is_paused, set_paused
from migrator.demo.scp import StorageSCP
from migrator.requeue import requeue_failed
from migrator.state.models import Batch
from scheduler.dispatch.distributed import celery_sender, feed
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.peers import free_port
from tests.support import CALLING_AE, Migration, prepare_migration

REDIS_URL = os.environ.get("MIGRATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
MONDAY_NOON = dt.datetime(2026, 12, 7, 12, 0)
MONDAY_NIGHT = dt.datetime(2026, 12, 7, 23, 0)


class TestWindows:
    def test_window_during_the_day(self) -> None:
        """A daytime window contains noon on its days only."""
        window = Window(start=dt.time(7), end=dt.time(18), days=["mon"], max_in_flight_per_root=1)
        assert window.contains(MONDAY_NOON)
        assert not window.contains(MONDAY_NIGHT)
        assert not window.contains(MONDAY_NOON + dt.timedelta(days=1))

    def test_window_across_midnight(self) -> None:
        """A window from 22:00 to 06:00 contains Tuesday 02:00 when it starts on Monday."""
        window = Window(start=dt.time(22), end=dt.time(6), days=["mon"], max_in_flight_per_root=8)
        assert window.contains(MONDAY_NIGHT)
        assert window.contains(dt.datetime(2026, 12, 8, 2, 0))
        assert not window.contains(dt.datetime(2026, 12, 8, 7, 0))

    def test_limit_from_first_matching_window(self) -> None:
        """The first window containing the time sets the limit; otherwise the default applies."""
        broker = BrokerConfig(url=REDIS_URL, max_in_flight_per_root=6, windows=[
            Window(start=dt.time(7), end=dt.time(18), days=["mon", "tue", "wed", "thu", "fri"],
                   max_in_flight_per_root=1)])
        assert broker.in_flight_limit(MONDAY_NOON) == 1
        assert broker.in_flight_limit(MONDAY_NIGHT) == 6


def _migration(tmp_path: Path, state_url: str, scps: dict[str, StorageSCP], extra: str = "") -> Migration:
    migration = prepare_migration(tmp_path, state_url,
                                  {name: (scp.ae_title, scp.port) for name, scp in scps.items()})
    config = tmp_path / "migrator.toml"
    config.write_text(config.read_text().replace("max_instances = 20", "max_instances = 5") + extra)
    migration.settings = load_settings(config)
    plan(migration.settings, migration.sessions)
    return migration


class TestFeed:
    """feed() puts messages on the real Redis queues of the roots."""

    @pytest.fixture
    def queued(self, tmp_path: Path, sqlite_url: str, scps: dict[str, StorageSCP]) -> Iterator[Migration]:
        prefix = f"test-{uuid.uuid4().hex[:10]}"
        windows = ('[[broker.windows]]\nstart = "07:00"\nend = "18:00"\ndays = ["mon"]\n'
                   "max_in_flight_per_root = 1\n")
        migration = _migration(tmp_path, sqlite_url, scps,
                               f'\n[broker]\nurl = "{REDIS_URL}"\nqueue_prefix = "{prefix}"\n'
                               f"max_in_flight_per_root = 3\n{windows}")
        yield migration
        client = redis.Redis.from_url(REDIS_URL)
        for root in migration.settings.roots:
            client.delete(f"{prefix}.{root.name}")

    def _queue_lengths(self, migration: Migration) -> dict[str, int]:
        assert migration.settings.broker is not None
        client = redis.Redis.from_url(REDIS_URL)
        return {root.name: int(client.llen(migration.settings.broker.queue(root.name)))
                for root in migration.settings.roots}

    def test_feed_bounded_per_root(self, queued: Migration) -> None:
        """Outside any window each root gets at most the default number of batches."""
        with queued.sessions() as session:
            feed(session, queued.settings, celery_sender(queued.settings), MONDAY_NIGHT)
            feed(session, queued.settings, celery_sender(queued.settings), MONDAY_NIGHT)
        lengths = self._queue_lengths(queued)
        assert lengths["root1"] == 3
        assert all(1 <= n <= 3 for n in lengths.values())

    def test_feed_window_limit(self, queued: Migration) -> None:
        """Inside the clinical-hours window each root gets one batch at a time."""
        with queued.sessions() as session:
            feed(session, queued.settings, celery_sender(queued.settings), MONDAY_NOON)
        assert set(self._queue_lengths(queued).values()) == {1}

    def test_feed_sends_nothing_while_paused(self, queued: Migration) -> None:
        """A paused run queues nothing; after resume it queues again."""
        with queued.sessions() as session:
            set_paused(session, True)
            assert is_paused(session)
            assert feed(session, queued.settings, celery_sender(queued.settings), MONDAY_NIGHT) == 0
            assert set(self._queue_lengths(queued).values()) == {0}
            set_paused(session, False)
            assert feed(session, queued.settings, celery_sender(queued.settings), MONDAY_NIGHT) > 0


def test_embedded_run_waits_while_paused(tmp_path: Path, sqlite_url: str,
                                         scps: dict[str, StorageSCP]) -> None:
    """An embedded start sends nothing while paused and finishes after resume."""
    migration = _migration(tmp_path, sqlite_url, scps)
    config = tmp_path / "migrator.toml"
    subprocess.run([sys.executable, "-m", "migrator", "pause", "--config", str(config)], check=True,
                   capture_output=True)
    run = subprocess.Popen([sys.executable, "-m", "migrator", "start", "--config", str(config)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(6)
        assert run.poll() is None
        assert all(not scp.arrivals for scp in scps.values())
        subprocess.run([sys.executable, "-m", "migrator", "resume", "--config", str(config)],
                       check=True, capture_output=True)
        assert run.wait(timeout=120) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert None not in migration.outcome_counts()


def test_requeue_filters_and_resends_only_failures(tmp_path: Path, sqlite_url: str) -> None:
    """requeue by root returns only that root's failures, and a new run sends only them."""
    main = StorageSCP("MAIN", tmp_path / "main", [CALLING_AE]).start()
    sinbin = StorageSCP("SINBIN", tmp_path / "sinbin", [CALLING_AE]).start()
    down = StorageSCP("NONPIXEL", tmp_path / "nonpixel", [CALLING_AE])
    try:
        endpoints = {"main": (main.ae_title, main.port), "nonpixel": ("NONPIXEL", 1),
                     "sinbin": (sinbin.ae_title, sinbin.port)}
        migration = prepare_migration(tmp_path, sqlite_url, endpoints)
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
        failed = list(migration.expected("nonpixel"))
        outcomes = migration.outcomes()
        assert all(outcomes[(e.root, e.rel_path)] == "failed" for e in failed)
        roots = sorted({e.root for e in failed})

        with migration.sessions() as session:
            assert requeue_failed(session, reason="no such reason") == (0, 0)
            instances, batches = requeue_failed(session, root=roots[0], reason="refused the connection")
        assert instances == sum(1 for e in failed if e.root == roots[0])
        assert batches >= 1

        down.start()
        text = (tmp_path / "migrator.toml").read_text().replace("port = 1\n", f"port = {down.port}\n")
        (tmp_path / "migrator.toml").write_text(text)
        settings = load_settings(tmp_path / "migrator.toml")
        sent_before = len(main.arrivals)
        run_embedded(settings, migration.sessions)
    finally:
        main.stop()
        sinbin.stop()
        down.stop()
    outcomes = migration.outcomes()
    for expected in failed:
        wanted = "sent" if expected.root == roots[0] else "failed"
        assert outcomes[(expected.root, expected.rel_path)] == wanted
    assert len(main.arrivals) == sent_before
    with migration.sessions() as session:
        unfinished = select(func.count(Batch.id)).where(Batch.status.not_in(["done", "failed"]))
        assert session.scalar(unfinished) == 0


def test_circuit_breaker_spares_a_down_destination(tmp_path: Path, sqlite_url: str) -> None:
    """After two refused associations to main, its instances fail at once; others are sent."""
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    with StorageSCP("NONPIXEL", tmp_path / "np", [CALLING_AE]) as nonpixel, \
            StorageSCP("SINBIN", tmp_path / "sb", [CALLING_AE]) as sinbin:
        endpoints = {"main": ("MAIN", free_port()), "nonpixel": (nonpixel.ae_title, nonpixel.port),
                     "sinbin": (sinbin.ae_title, sinbin.port)}
        migration = prepare_migration(tmp_path, sqlite_url, endpoints, processes=1)

        config = tmp_path / "migrator.toml"
        text = config.read_text().replace("max_instances = 20", "max_instances = 3")
        text = text.replace("[destinations.main]\n", "[destinations.main]\ncircuit_breaker_failures = 2\n"
                            "circuit_breaker_seconds = 60\n")
        config.write_text(text + f'\n[broker]\nurl = "{REDIS_URL}"\nqueue_prefix = "{prefix}"\n')
        settings = load_settings(config)
        plan(settings, migration.sessions)

        try:
            run_embedded(settings, migration.sessions)
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            client.delete(*client.keys(f"{prefix}:*") or [f"{prefix}:none"])

    reasons = [a.reason or "" for e in migration.expected("main") for a in migration.audit_of(e)]
    refused = [r for r in reasons if "refused the connection" in r]
    skipped = [r for r in reasons if "circuit breaker" in r]
    assert refused
    assert skipped
    assert len(refused) + len(skipped) == len(reasons)

    outcomes = migration.outcomes()
    assert all(outcomes[(e.root, e.rel_path)] == "sent" for e in migration.expected("nonpixel"))
    assert all(outcomes[(e.root, e.rel_path)] == "sinbinned" for e in migration.expected("sinbin"))
    with migration.sessions() as session:
        assert requeue_failed(session, reason="circuit breaker")[0] == len(skipped)
