"""The report's charts, drawn with matplotlib as SVG text to put inside the page.

Figures are built with :class:`matplotlib.figure.Figure` directly, without
pyplot, so no GUI backend or global figure state is involved.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import matplotlib
import numpy
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

from migrator.report.spread import ArrivalSpread, bin_labels, format_seconds
from migrator.report.throughput import Series, Throughput, bucket_label

SIZE_INCHES = (9.0, 3.2)
#: Text stays <text> elements in the page's font instead of glyph outlines,
#: which keeps each chart small and its labels searchable. Time axes are in
#: UTC with matplotlib's concise date labels.
SVG_STYLE: dict[RcKeyType, Any] = {"svg.fonttype": "none", "font.size": 9.0, "timezone": "UTC",
                                   "date.converter": "concise"}

#: Leaves out the RDF block with the creation date and matplotlib's web address.
NO_METADATA: dict[str, str | None] = {"Date": None, "Format": None, "Type": None, "Creator": None}


def to_svg(figure: Figure, name: str) -> str:
    """Render ``figure`` as an ``<svg>`` element; ``name`` keeps its element ids unique in the page."""
    buffer = io.StringIO()
    # matplotlib derives element ids from a hash salted with svg.hashsalt:
    # a salt per chart keeps ids from repeating across charts in one page.
    style: dict[RcKeyType, Any] = {**SVG_STYLE, "svg.hashsalt": name}
    with matplotlib.rc_context(style):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata=NO_METADATA)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def throughput_svg(throughput: Throughput, series: Sequence[Series], title: str, name: str,
                   filled: bool = False) -> str:
    """Draw deliveries per bucket over time: one step line per series, or a filled area for one."""
    with matplotlib.rc_context(SVG_STYLE):
        figure = Figure(figsize=SIZE_INCHES)
        axes = figure.add_subplot()
        # numpy (a matplotlib dependency) stores the times as naive UTC because it has no time zones.
        ends = [*throughput.starts, throughput.starts[-1] + timedelta(seconds=throughput.bucket_seconds)]
        edges = numpy.array([moment.replace(tzinfo=None) for moment in ends], dtype="datetime64[s]")
        for item in series:
            axes.stairs(item.counts, edges, fill=filled, label=item.name, linewidth=1.2)
        axes.set_xlabel("time (UTC)")
        axes.set_ylabel(f"instances per {bucket_label(throughput.bucket_seconds)}")
        axes.set_ylim(bottom=0)
        axes.set_title(title, loc="left")
        _style(axes)
        if len(series) > 1:
            axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        return to_svg(figure, name)


def spread_svg(spread: ArrivalSpread, name: str) -> str:
    """Draw the histogram of arrival spreads, bins up to the last non-empty one."""
    labels = bin_labels()
    last = max(index for index, count in enumerate(spread.histogram) if count)
    with matplotlib.rc_context(SVG_STYLE):
        figure = Figure(figsize=SIZE_INCHES)
        axes = figure.add_subplot()
        positions = range(last + 1)
        axes.bar(positions, spread.histogram[:last + 1], width=0.85, color="#4477aa")
        axes.set_xticks(list(positions), labels[:last + 1], rotation=30, ha="right")
        axes.set_xlabel("time from a study's first to its last delivered instance")
        axes.set_ylabel("studies")
        median = spread.median
        summary = "" if median is None else (
            f" (median {format_seconds(median)}, 95th percentile {format_seconds(spread.percentiles[95])})")
        axes.set_title(f"Arrival spread of {spread.studies:,} studies{summary}", loc="left")
        _style(axes)
        return to_svg(figure, name)


def _style(axes: Axes) -> None:
    axes.grid(axis="y", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
