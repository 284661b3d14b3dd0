"""Report figures from audit rows with chosen times, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy
import pytest
from sqlalchemy.orm import Session, sessionmaker

from migrator.report import arrival_spread, read_report, render_report
from migrator.report.spread import BIN_EDGES
from migrator.report.sql import Window
from migrator.report.summary import read_summary
from migrator.report.throughput import choose_bucket_seconds, read_throughput
from migrator.state.db import open_state
from migrator.state.models import AuditEntry, Instance, SinBinItem, StorageRoot

#: 2026-12-04 08:00:00 UTC, a whole multiple of a minute since 1970.
T0 = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
STUDY_1, STUDY_2, STUDY_3, STUDY_4, STUDY_5 = (f"1.2.826.0.1.3680043.10.1.{n}" for n in range(1, 6))


def _at(minutes: int, seconds: float = 0.0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


class _State:
    """Inserts roots, instances and audit rows with chosen times."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.roots = {name: StorageRoot(name=name, path=f"/mnt/pacs/{name}") for name in ("share01", "share02")}
        session.add_all(self.roots.values())
        session.flush()
        self.count = 0

    def instance(self, root: str, study: str | None, outcome: str | None) -> Instance:
        self.count += 1
        instance = Instance(root_id=self.roots[root].id, rel_path=f"2026/12/04/file{self.count}.dcm",
                            folder="2026/12/04", size=1000, mtime_ns=0, study_uid=study, outcome=outcome,
                            indexed_at=T0 - timedelta(days=1))
        self.session.add(instance)
        self.session.flush()
        return instance

    def attempt(self, instance: Instance, outcome: str, finished: datetime, destination: str | None = "main",
                reason: str | None = None, dimse_status: int | None = None) -> None:
        self.session.add(AuditEntry(instance_id=instance.id, outcome=outcome, destination=destination,
                                    reason=reason, dimse_status=dimse_status,
                                    started_at=finished - timedelta(seconds=0.5), finished_at=finished,
                                    host="test"))

    def delivered(self, root: str, study: str, outcome: str, finished: datetime,
                  destination: str = "main") -> Instance:
        instance = self.instance(root, study, outcome)
        self.attempt(instance, outcome, finished, destination)
        return instance


@pytest.fixture
def sessions(state_url: str) -> sessionmaker[Session]:
    """A state database with deliveries over 30 minutes from T0 and three failed instances.

    Study 1 (share01): main at T0, T0 + 59.999999 s and T0 + 60 s, so a spread of 60 s.
    Study 2 (share02): main at 10 min 0.25 s, nonpixel at 29 min 59.75 s, so 1199.5 s.
    Study 3 (share01): one instance sinbinned at 5 min. Study 4 (share02): one instance
    failed at 7 min and sent at 20 min. Study 5 (share01): three failed instances.
    share02 also has an unreadable instance in the sin bin and a pending one.
    """
    factory = open_state(state_url)
    with factory() as session:
        state = _State(session)
        state.delivered("share01", STUDY_1, "sent", _at(0))
        state.delivered("share01", STUDY_1, "sent", _at(0, 59.999999))
        state.delivered("share01", STUDY_1, "sent", _at(1))
        state.delivered("share02", STUDY_2, "sent", _at(10, 0.25))
        state.delivered("share02", STUDY_2, "sent_with_warning", _at(29, 59.75), "nonpixel")
        sinbinned = state.delivered("share01", STUDY_3, "sinbinned", _at(5), "sinbin")
        session.add(SinBinItem(instance_id=sinbinned.id, reason="orphan", archived=True, created_at=_at(5)))
        retried = state.instance("share02", STUDY_4, "sent")
        state.attempt(retried, "failed", _at(7), reason="association to main rejected")
        state.attempt(retried, "sent", _at(20))
        for _ in range(2):
            failed = state.instance("share01", STUDY_5, "failed")
            state.attempt(failed, "failed", _at(8), reason=f"/mnt/pacs/share01/{failed.rel_path}: file is gone")
        failed = state.instance("share01", STUDY_5, "failed")
        state.attempt(failed, "failed", _at(9), reason="C-STORE status 0xA700 (Failure): DEMO^PATIENT",
                      dimse_status=0xA700)
        unreadable = state.instance("share02", None, "unreadable")
        session.add(SinBinItem(instance_id=unreadable.id, reason="unreadable: empty file", archived=False,
                               created_at=_at(0)))
        state.instance("share02", None, None)
        session.commit()
    return factory


def test_choose_bucket_seconds() -> None:
    """Seconds for runs under 400 s, minutes up to 400 minutes, hours for two weeks."""
    assert choose_bucket_seconds(0) == 1
    assert choose_bucket_seconds(399) == 1
    assert choose_bucket_seconds(400) == 60
    assert choose_bucket_seconds(3600) == 60
    assert choose_bucket_seconds(400 * 60) == 300
    assert choose_bucket_seconds(14 * 86400) == 3600
    assert choose_bucket_seconds(1000 * 86400) == 86400


def test_throughput_buckets(sessions: sessionmaker[Session]) -> None:
    """Deliveries are counted per minute at finished_at, a bucket's first microsecond included."""
    with sessions() as session:
        throughput = read_throughput(session)
    assert throughput is not None
    assert throughput.bucket_seconds == 60
    assert throughput.starts[0] == T0
    assert throughput.starts[-1] == _at(29)
    expected = [0] * 30
    for minute, count in ((0, 2), (1, 1), (5, 1), (10, 1), (20, 1), (29, 1)):
        expected[minute] = count
    assert throughput.overall.counts == expected
    roots = {series.name: series.counts for series in throughput.by_root}
    assert sorted(roots) == ["share01", "share02"]
    assert [(i, n) for i, n in enumerate(roots["share01"]) if n] == [(0, 2), (1, 1), (5, 1)]
    assert [(i, n) for i, n in enumerate(roots["share02"]) if n] == [(10, 1), (20, 1), (29, 1)]
    destinations = {series.name: series.counts for series in throughput.by_destination}
    assert sorted(destinations) == ["main", "nonpixel", "sinbin"]
    assert [(i, n) for i, n in enumerate(destinations["main"]) if n] == [(0, 2), (1, 1), (10, 1), (20, 1)]
    assert [(i, n) for i, n in enumerate(destinations["nonpixel"]) if n] == [(29, 1)]
    assert [(i, n) for i, n in enumerate(destinations["sinbin"]) if n] == [(5, 1)]


def test_throughput_rates(sessions: sessionmaker[Session]) -> None:
    """Averages run from the first delivered attempt's start to the last finish; the busiest hour is exact."""
    with sessions() as session:
        throughput = read_throughput(session)
    assert throughput is not None
    assert throughput.first == _at(0, -0.5)
    assert throughput.last == _at(29, 59.75)
    hours = 1800.25 / 3600
    assert throughput.overall.per_hour == pytest.approx(7 / hours)
    assert throughput.overall.busiest_hour == (T0, 7)
    main = next(series for series in throughput.by_destination if series.name == "main")
    assert main.per_hour == pytest.approx(5 / hours)


def test_throughput_window(sessions: sessionmaker[Session]) -> None:
    """--since is inclusive and --until exclusive."""
    with sessions() as session:
        throughput = read_throughput(session, Window(_at(1), _at(20)))
    assert throughput is not None
    assert throughput.starts[0] == _at(1)
    assert throughput.overall.counts == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]


def test_spread_exact(sessions: sessionmaker[Session]) -> None:
    """Spreads are exact to the microsecond; percentiles match numpy's linear interpolation."""
    with sessions() as session:
        spread = arrival_spread(session, top=3)
    spreads = [0.0, 0.0, 60.0, 1199.5]
    assert spread.studies == 4
    assert spread.max_seconds == 1199.5
    assert spread.median == pytest.approx(30.0)
    assert spread.percentiles[95] == pytest.approx(float(numpy.percentile(spreads, 95)))
    assert spread.percentiles[95] == pytest.approx(1028.575)
    assert [(study.study_uid, study.seconds) for study in spread.largest[:2]] == [
        (STUDY_2, 1199.5), (STUDY_1, 60.0)]
    assert spread.largest[2].study_uid == max(STUDY_3, STUDY_4)
    assert [study.deliveries for study in spread.largest[:2]] == [2, 3]
    assert spread.largest[0].first_arrival == _at(10, 0.25)
    assert spread.largest[0].last_arrival == _at(29, 59.75)


def test_spread_histogram(sessions: sessionmaker[Session]) -> None:
    """Each study falls in the bin whose upper edge is the first one above its spread."""
    with sessions() as session:
        spread = arrival_spread(session)
    expected = [0] * (len(BIN_EDGES) + 1)
    expected[0] = 2                               # 0 s, twice
    expected[BIN_EDGES.index(120)] = 1            # 60 s: the bin from 60 s to 120 s
    expected[BIN_EDGES.index(1800)] = 1           # 1199.5 s: from 600 s to 1800 s
    assert spread.histogram == expected


def test_spread_filters(sessions: sessionmaker[Session]) -> None:
    """A window and a destination list limit the deliveries that count."""
    with sessions() as session:
        windowed = arrival_spread(session, since=_at(0, 30))
        nonpixel = arrival_spread(session, destinations=["nonpixel"])
    assert windowed.studies == 4
    assert windowed.largest[1].study_uid == STUDY_1
    assert windowed.largest[1].seconds == pytest.approx(0.000001, abs=1e-9)
    assert nonpixel.studies == 1
    assert nonpixel.max_seconds == 0.0


def test_summary_counts(sessions: sessionmaker[Session]) -> None:
    """Outcomes per root, failures by the reason of the last attempt, and the sin bin."""
    with sessions() as session:
        summary = read_summary(session, top=10)
    assert summary.outcomes_by_root["share01"] == {"sent": 3, "sinbinned": 1, "failed": 3}
    assert summary.outcomes_by_root["share02"] == {"sent": 2, "sent_with_warning": 1, "unreadable": 1,
                                                   "pending": 1}
    reasons = [(item.instances, item.destination, item.dimse_status, item.reason)
               for item in summary.failure_reasons]
    assert reasons == [(2, "main", None, "/mnt/pacs/share01/<file>: file is gone"),
                       (1, "main", 0xA700, "C-STORE status 0xA700 (Failure)")]
    assert (summary.sinbin_archived, summary.sinbin_on_disk, summary.sinbin_released) == (1, 1, 0)
    assert summary.run_start == _at(0, -0.5)
    assert summary.run_end == _at(29, 59.75)


def test_page_leaves_out_error_comments(sessions: sessionmaker[Session]) -> None:
    """The destination's Error Comment is not in the page, the C-STORE status is."""
    with sessions() as session:
        page = render_report(read_report(session))
    assert "0xA700" in page
    assert "DEMO^PATIENT" not in page
    assert page.count("<svg") == 4


def test_empty_state(state_url: str) -> None:
    """An empty state database gives a page with a message and no chart."""
    with open_state(state_url)() as session:
        report = read_report(session)
    assert report.throughput is None
    assert report.spread.studies == 0
    page = render_report(report)
    assert 'id="empty"' in page
    assert "<svg" not in page
