"""SQL expressions that PostgreSQL and SQLite evaluate alike, and the report's time window.

SQLAlchemy stores a ``DateTime`` in SQLite as text, ``YYYY-MM-DD HH:MM:SS.ffffff``
in UTC here because the migrator writes UTC times, while PostgreSQL has a
``timestamptz`` type. Each construct below compiles to the form that each
engine accepts, so the report aggregates with GROUP BY on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import BigInteger, Float


class EpochSeconds(FunctionElement[float]):
    """Seconds since 1970-01-01 UTC of a timestamp, with its microseconds, as a float."""

    type = Float()
    name = "epoch_seconds"
    inherit_cache = True


class SecondsBetween(FunctionElement[float]):
    """Seconds from the first timestamp argument to the second, as a float.

    Subtracting in the database keeps microseconds exact, where the
    difference of two :class:`EpochSeconds` loses about 0.1 µs on PostgreSQL.
    """

    type = Float()
    name = "seconds_between"
    inherit_cache = True


class FloorInt(FunctionElement[int]):
    """The largest integer not greater than a number (SQLite may lack FLOOR)."""

    type = BigInteger()
    name = "floor_int"
    inherit_cache = True


def _arguments(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(argument, **kw) for argument in element.clauses]


@compiles(EpochSeconds)
@compiles(SecondsBetween)
@compiles(FloorInt)
def _unsupported(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(f"{element.name} is defined for PostgreSQL and SQLite only, "
                       f"not for {compiler.dialect.name}")


@compiles(EpochSeconds, "postgresql")
def _epoch_postgresql(element: EpochSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = _arguments(element, compiler, **kw)
    return f"CAST(EXTRACT(EPOCH FROM {moment}) AS DOUBLE PRECISION)"


def _sqlite_whole_seconds(moment: str) -> str:
    # SQLite computes dates in milliseconds, so strftime('%s') of "...:59.999999"
    # would round up to the next second: the fraction is cut off first.
    return f"CAST(strftime('%s', substr({moment}, 1, 19)) AS INTEGER)"


def _sqlite_fraction(moment: str) -> str:
    # The text from position 20 on is the fraction ".ffffff", or empty, which CAST makes 0.
    return f"CAST(substr({moment}, 20) AS REAL)"


def _sqlite_epoch(moment: str) -> str:
    return f"({_sqlite_whole_seconds(moment)} + {_sqlite_fraction(moment)})"


@compiles(EpochSeconds, "sqlite")
def _epoch_sqlite(element: EpochSeconds, compiler: SQLCompiler, **kw: Any) -> str:
    (moment,) = _arguments(element, compiler, **kw)
    return _sqlite_epoch(moment)


@compiles(SecondsBetween, "postgresql")
def _between_postgresql(element: SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = _arguments(element, compiler, **kw)
    return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) AS DOUBLE PRECISION)"


@compiles(SecondsBetween, "sqlite")
def _between_sqlite(element: SecondsBetween, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = _arguments(element, compiler, **kw)
    return (f"(({_sqlite_whole_seconds(end)} - {_sqlite_whole_seconds(start)})"
            f" + ({_sqlite_fraction(end)} - {_sqlite_fraction(start)}))")


@compiles(FloorInt, "postgresql")
def _floor_postgresql(element: FloorInt, compiler: SQLCompiler, **kw: Any) -> str:
    (number,) = _arguments(element, compiler, **kw)
    return f"CAST(FLOOR({number}) AS BIGINT)"


@compiles(FloorInt, "sqlite")
def _floor_sqlite(element: FloorInt, compiler: SQLCompiler, **kw: Any) -> str:
    # CAST truncates toward zero, so a negative number with a fraction needs 1 less.
    (number,) = _arguments(element, compiler, **kw)
    return f"(CAST({number} AS INTEGER) - ({number} < CAST({number} AS INTEGER)))"


def as_utc(moment: datetime) -> datetime:
    """Attach UTC to a naive time (SQLite returns them) or convert an aware one to UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """The time range of audit rows that the report covers; None leaves that side open.

    A naive time is taken as UTC. ``since`` is inclusive and ``until`` exclusive.
    """

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and as_utc(self.since) >= as_utc(self.until):
            raise ValueError(f"the window start {self.since} is not before its end {self.until}")

    def conditions(self, column: SQLColumnExpression[datetime]) -> list[ColumnElement[bool]]:
        """Build the WHERE conditions that keep ``column`` inside the window."""
        conditions = []
        if self.since is not None:
            conditions.append(column >= as_utc(self.since))
        if self.until is not None:
            conditions.append(column < as_utc(self.until))
        return conditions
