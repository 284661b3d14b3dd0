"""The report as one self-contained HTML page: inline CSS and SVG, no external resource.

The page shows counts, storage root and destination names, failure reasons,
times and Study Instance UIDs. The report reads no patient attribute from
the state database (see :func:`~migrator.report.summary.read_failure_reasons`
for what the failure reasons contain).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape

from migrator.report.data import Report
from migrator.report.spread import ArrivalSpread, format_seconds
from migrator.report.sql import Window, as_utc
from migrator.report.summary import OUTCOME_COLUMNS, Summary
from migrator.report.throughput import Series, Throughput, bucket_label

TITLE = "PACS migration report"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #e4e4e4; text-align: left; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; }
.note { color: #555; }
.empty { padding: 1em; background: #fff4d6; border: 1px solid #e8c66a; }
figure { margin: 1em 0; }
svg { max-width: 100%; height: auto; }
"""


def render_report(report: Report) -> str:
    """Build the whole HTML page for ``report``."""
    summary = report.summary
    parts = [f"<h1>{TITLE}</h1>",
             f'<p class="note">Made {_time(report.generated_at)} from the migrator\'s state database. '
             f"{escape(_window_text(report.window))}</p>"]
    if not summary.instances:
        parts.append('<p class="empty" id="empty">The state database has no indexed instance yet, so '
                     "there is nothing to report. Run <code>migrator plan</code> and "
                     "<code>migrator start</code> first.</p>")
    else:
        parts += _summary_section(summary)
        parts += _throughput_section(report.throughput)
        parts += _spread_section(report.spread)
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{TITLE}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _summary_section(summary: Summary) -> list[str]:
    totals = summary.totals()
    span = [("First attempt started", _time(summary.run_start)),
            ("Last attempt finished", _time(summary.run_end)),
            ("Instances indexed", f"{summary.instances:,}")]
    outcome_rows = [[root, *(f"{counts.get(column, 0):,}" for column in OUTCOME_COLUMNS)]
                    for root, counts in sorted(summary.outcomes_by_root.items())]
    outcome_rows.append(["all", *(f"{totals.get(column, 0):,}" for column in OUTCOME_COLUMNS)])
    parts = ["<h2>Summary</h2>",
             _table("run", ["", ""], [list(row) for row in span], numeric=set()),
             "<h3>Outcomes per storage root</h3>",
             '<p class="note">The final outcome of every indexed instance when the report was made; '
             "a time window does not apply to this table.</p>",
             _table("outcomes", ["root", *(column.replace("_", " ") for column in OUTCOME_COLUMNS)],
                    outcome_rows, numeric=set(range(1, len(OUTCOME_COLUMNS) + 1)), total_row=True),
             "<h3>Failed instances by reason</h3>"]
    if summary.failure_reasons:
        parts.append('<p class="note">By the reason of each failed instance\'s last attempt, most frequent '
                     "first; C-STORE failures by status, without the destination's comment.</p>")
        parts.append(_table("failures", ["instances", "destination", "reason"],
                            [[f"{item.instances:,}", item.destination or "", item.reason]
                             for item in summary.failure_reasons], numeric={0}))
    else:
        parts.append('<p id="failures">No instance has failed.</p>')
    parts.append("<h3>Sin bin</h3>")
    parts.append(_table("sinbin", ["items", "count"], [
        ["in the sin bin archive, not released", f"{summary.sinbin_archived:,}"],
        ["unreadable, left on disk", f"{summary.sinbin_on_disk:,}"],
        ["released to a destination after review", f"{summary.sinbin_released:,}"],
    ], numeric={1}))
    return parts


def _throughput_section(throughput: Throughput | None) -> list[str]:
    parts = ["<h2>Throughput</h2>"]
    if throughput is None:
        return parts + ['<p id="throughput">No instance was delivered in this time window.</p>']
    parts.append(f'<p class="note">Instances delivered (sent, sent with a warning or sinbinned) per '
                 f"{escape(bucket_label(throughput.bucket_seconds))}, counted when each C-STORE finished, "
                 f"from {_time(throughput.first)} to {_time(throughput.last)}. Averages per hour run from "
                 "the first to the last delivery, pauses included.</p>")
    all_series = [throughput.overall, *throughput.by_root, *throughput.by_destination]
    kinds = [""] + ["root"] * len(throughput.by_root) + ["destination"] * len(throughput.by_destination)
    parts.append(_table("rates", ["", "name", "delivered", "average per hour", "busiest hour (UTC)",
                                  "in the busiest hour"],
                        [[kind, *_rate_cells(series)] for kind, series in zip(kinds, all_series)],
                        numeric={2, 3, 5}))
    # Imported here, so that only drawing imports matplotlib.
    from migrator.report.charts import throughput_svg

    charts = [
        throughput_svg(throughput, [throughput.overall], "All destinations", "throughput-all", filled=True),
        throughput_svg(throughput, throughput.by_root, "Per storage root", "throughput-root"),
        throughput_svg(throughput, throughput.by_destination, "Per destination", "throughput-destination"),
    ]
    parts += [f'<figure class="chart">{svg}</figure>' for svg in charts]
    return parts


def _rate_cells(series: Series) -> list[str]:
    per_hour = "n/a" if series.per_hour is None else f"{series.per_hour:,.0f}"
    if series.busiest_hour is None:
        return [series.name, f"{series.total:,}", per_hour, "n/a (buckets longer than an hour)", ""]
    start, count = series.busiest_hour
    return [series.name, f"{series.total:,}", per_hour, f"{start:%Y-%m-%d %H:00}", f"{count:,}"]


def _spread_section(spread: ArrivalSpread) -> list[str]:
    parts = ["<h2>Arrival spread per study</h2>"]
    if not spread.studies or spread.median is None or spread.max_seconds is None:
        return parts + ['<p id="spread">No study has a delivered instance in this time window.</p>']
    parts.append('<p class="note">For each study, the time from the first to the last of its instances '
                 "reaching a destination (the sin bin included). A study with one delivered instance "
                 "counts as 0 s. Percentiles interpolate linearly between the two nearest studies.</p>")
    parts.append(_table("spread", ["studies", "median", "95th percentile", "max"], [[
        f"{spread.studies:,}", _seconds(spread.median), _seconds(spread.percentiles[95]),
        _seconds(spread.max_seconds)]], numeric={0, 1, 2, 3}))
    # Imported here, so that only drawing imports matplotlib.
    from migrator.report.charts import spread_svg

    parts.append(f'<figure class="chart">{spread_svg(spread, "spread")}</figure>')
    parts.append(f"<h3>Studies with the largest spread (top {len(spread.largest)})</h3>")
    parts.append(_table("largest-spread", ["Study Instance UID", "spread", "deliveries", "first arrival",
                                           "last arrival"],
                        [[study.study_uid, _seconds(study.seconds), f"{study.deliveries:,}",
                          _time(study.first_arrival), _time(study.last_arrival)]
                         for study in spread.largest], numeric={1, 2}))
    return parts


def _table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int],
           total_row: bool = False) -> str:
    """Build a table of escaped cells; columns in ``numeric`` align right."""
    def cell(tag: str, index: int, text: str) -> str:
        css = ' class="number"' if index in numeric else ""
        return f"<{tag}{css}>{escape(text)}</{tag}>"

    rows = list(rows)
    lines = [f'<table id="{table_id}">']
    if any(headers):
        lines.append("<tr>" + "".join(cell("th", i, text) for i, text in enumerate(headers)) + "</tr>")
    for number, row in enumerate(rows, start=1):
        css = ' class="total"' if total_row and number == len(rows) else ""
        lines.append(f"<tr{css}>" + "".join(cell("td", i, text) for i, text in enumerate(row)) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _seconds(seconds: float) -> str:
    """Write a spread in seconds and, from a minute on, in its largest unit too."""
    exact = f"{seconds:,.3f} s"
    return exact if seconds < 60 else f"{exact} ({format_seconds(seconds)})"


def _time(moment: datetime | None) -> str:
    return "n/a" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _window_text(window: Window) -> str:
    if window.since is None and window.until is None:
        return "Charts and rates cover every recorded delivery."
    since = "the first delivery" if window.since is None else _time(as_utc(window.since))
    until = "the last delivery" if window.until is None else _time(as_utc(window.until))
    return f"Charts and rates cover deliveries from {since} until {until}."
