"""``migrator report``: a self-contained HTML record of the migration.

:mod:`~migrator.report.summary`, :mod:`~migrator.report.throughput` and
:mod:`~migrator.report.spread` aggregate the state database with GROUP BY
queries that PostgreSQL and SQLite both run; :mod:`~migrator.report.page`
turns the result into HTML with charts from :mod:`~migrator.report.charts`.
"""

from migrator.report.data import Report, read_report
from migrator.report.page import render_report
from migrator.report.spread import ArrivalSpread, StudySpread, arrival_spread

__all__ = ["ArrivalSpread", "Report", "StudySpread", "arrival_spread", "read_report", "render_report"]
