"""The migration configuration: one TOML file, validated on load.

Passwords never appear in the file. A database section names the environment
variable that contains its password (``password_env``) and the URL is completed
from the environment when the file is loaded. A URL in the file that carries
a password is rejected.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from migrator.errors import ConfigError

#: Routing targets that are not destination names.
SINBIN = "sinbin"
SKIP = "skip"

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReconcileOutcome(str, enum.Enum):
    """The result of comparing an instance with the legacy database."""

    #: A row was found and points at this file (or the query has no path).
    MATCHED = "matched"
    #: No row: deleted from the legacy database but still on disk.
    ORPHAN = "orphan"
    #: The row points at another file, for example after a study merge.
    SUPERSEDED = "superseded"
    #: Another file carries the same SOP Instance UID and the row points there.
    DUPLICATE = "duplicate"


class DatabaseConfig(Frozen):
    """A SQLAlchemy URL without a password, and where to find the password."""

    url: str
    #: Environment variable holding the password, if the server needs one.
    password_env: str | None = None

    @field_validator("url")
    @classmethod
    def _url_has_no_password(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a SQLAlchemy database URL: {exc}") from None
        if url.password or any(key.lower() == "password" for key in url.query):
            raise ValueError(
                "the URL contains a password; remove it and name the environment "
                "variable that contains it in password_env"
            )
        return value

    def sqlalchemy_url(self, base_dir: Path | None = None) -> URL:
        """Return the URL with the password taken from the environment.

        A relative SQLite path is resolved against ``base_dir``.
        """
        url = make_url(self.url)
        if self.password_env:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(
                    f"environment variable {self.password_env} is not set; it must "
                    f"hold the password for {url.render_as_string(hide_password=True)}"
                )
            url = url.set(password=password)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            path = Path(url.database)
            if not path.is_absolute() and base_dir is not None:
                url = url.set(database=str(base_dir / path))
        return url


class StateConfig(DatabaseConfig):
    """The migrator's own state database: index, batches, audit."""


class LegacyConfig(DatabaseConfig):
    """The legacy PACS database and the reconciliation query."""

    #: A SELECT whose column aliases are DICOM keywords, keyed by
    #: SOPInstanceUID, with ``IN :uids`` where the migrator binds a chunk.
    query: str
    #: Column holding the legacy PACS's own path of the file, if any.
    path_column: str | None = "FilePath"
    #: Column naming a display transformation recorded against the instance
    #: ("rotate 90 clockwise"), if any. An instance with a value there is held
    #: back (skipped) for ``migrator transform run``.
    transformation_column: str | None = None
    #: UIDs per query; SQL Server accepts at most 2,100 parameters.
    chunk_size: int = Field(default=1000, ge=1, le=1000)
    #: Compare legacy paths without regard to case (Windows file servers).
    paths_case_insensitive: bool = True
    #: Start even when the query finds none of a sample of indexed UIDs,
    #: which otherwise means a wrong database or query and stops the run.
    allow_no_matches: bool = False

    @field_validator("query")
    @classmethod
    def _query_binds_uids(cls, value: str) -> str:
        if ":uids" not in value:
            raise ValueError("the query must filter with 'IN :uids' on the SOP Instance UID column")
        if "sopinstanceuid" not in value.lower():
            raise ValueError("the query must return a column aliased SOPInstanceUID")
        return value


class RootConfig(Frozen):
    """One storage root of the legacy archive."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path
    #: What the legacy database puts before a path relative to this root,
    #: for example ``\\\\pacs01\\share03\\``.
    legacy_path_prefix: str | None = None


class TLSConfig(Frozen):
    """DICOM over TLS (DICOM PS3.15) for the associations to one destination.

    Paths must be absolute. The files are read when an association opens,
    so ``migrator config check`` reports a missing or invalid one.
    """

    #: PEM file with the CA certificates that the destination's certificate must chain to.
    ca_file: Path
    #: PEM file with our client certificate, for a destination that requires
    #: one. It may also contain the private key, which key_file otherwise gives.
    cert_file: Path | None = None
    #: PEM file with the private key of cert_file, not encrypted.
    key_file: Path | None = None
    #: Check that the destination's certificate is valid for ``host``: its
    #: DNS name, or for an IP address an IP entry in subjectAltName.
    check_hostname: bool = True

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _path_is_absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path, such as /etc/migrator/tls/ca.pem")
        return value

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> TLSConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set without cert_file; set cert_file to the client "
                             "certificate that belongs to the key")
        return self


class DestinationConfig(Frozen):
    """A DICOM storage SCP."""

    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    #: SOP Class UIDs the destination takes; empty means every storage class.
    accepted_sop_classes: list[str] = []
    #: Seconds to wait for an association, then for each response.
    acse_timeout: float = Field(default=30, gt=0)
    dimse_timeout: float = Field(default=120, gt=0)
    #: Maximum PDU size we offer to receive; 0 means unlimited.
    max_pdu: int = Field(default=0, ge=0)
    #: Associations open at once across every worker; needs [broker]. None
    #: means no limit beyond the number of worker processes.
    max_associations: int | None = Field(default=None, ge=1)
    #: Seconds a worker waits for a free association slot before the
    #: instances fail with that reason.
    association_wait: float = Field(default=300, gt=0)
    #: Association failures in a row after which no worker tries this
    #: destination for circuit_breaker_seconds; needs [broker].
    circuit_breaker_failures: int = Field(default=5, ge=1)
    circuit_breaker_seconds: float = Field(default=300, gt=0)
    #: The C-STORE sender: "pynetdicom" in the worker process, or "dcmsend",
    #: DCMTK's sender run as a child process (needs the dcmtk package).
    engine: Literal["pynetdicom", "dcmsend"] = "pynetdicom"
    #: DICOM TLS for every association to this destination (C-STORE, C-ECHO,
    #: and verify's C-FIND and Storage Commitment); None uses plain TCP.
    tls: TLSConfig | None = None
    #: Associations a worker opens at once to send one batch's instances
    #: for this destination. Each one counts against max_associations. A
    #: destination that serves one association at a time (storescp without
    #: --fork) keeps the others waiting until they give up after acse_timeout.
    #: The files that a dcmsend session had taken then fail as transient.
    parallel_associations: int = Field(default=1, ge=1, le=16)
    #: Seconds that outcomes recorded for this destination may wait to be
    #: committed together; 0 commits each one at once. A worker killed in the
    #: middle of a batch sends again, besides its C-STOREs in flight, the
    #: instances whose outcomes were not committed yet: up to this many
    #: seconds' worth. A commit per instance cost about 0.6 ms on a local
    #: PostgreSQL 15 on a 2-core VM, against 0.45 ms for the writes themselves.
    audit_commit_seconds: float = Field(default=0, ge=0, le=10)
    #: What happens to an instance stored in a compressed transfer syntax
    #: (JPEG 2000, JPEG, RLE) whose presentation context the destination does
    #: not accept. "fail" records it as failed. "decompress" also proposes
    #: Explicit VR Little Endian for the SOP class and sends a decoded copy in
    #: it, recording the change in the audit. "sinbin" sends the file as stored
    #: to the sin bin, with the destination and the transfer syntax in the
    #: reason. In the [sinbin] section itself, "sinbin" acts as "fail".
    on_transfer_syntax_rejected: Literal["fail", "decompress", "sinbin"] = "fail"
    #: ``migrator verify``: the destination's own limit on matches per C-FIND,
    #: if it has one (Orthanc: LimitFindResults, LimitFindInstances). A
    #: response with this many matches is treated as cut short and split.
    verify_max_results: int | None = Field(default=None, ge=1)
    #: ``migrator verify``: send the Study Instance UIDs of a chunk in one
    #: C-FIND (UID list matching). False sends one C-FIND per study.
    verify_uid_lists: bool = True
    #: ``migrator verify``: a name for the archive this destination stores
    #: into. Destinations with the same name (two ports of one PACS) are
    #: verified as one: C-FIND goes to the first of them, and an instance
    #: delivered to any of them is expected there.
    verify_archive: str | None = None

    @field_validator("tls")
    @classmethod
    def _tls_needs_pynetdicom(cls, value: TLSConfig | None, info: ValidationInfo) -> TLSConfig | None:
        if value is not None and info.data.get("engine") == "dcmsend":
            raise ValueError('engine = "dcmsend" cannot use TLS, because DCMTK 3.6.7\'s dcmsend has no '
                             'TLS options; set engine = "pynetdicom" for this destination or remove its '
                             'tls table')
        return value


class RouteRule(Frozen):
    """One routing rule. Every condition given must hold; omitted ones match anything."""

    name: str
    #: A destination name, "sinbin" or "skip".
    to: str
    #: Recorded with the outcome; required for the sin bin and skip.
    reason: str | None = None
    sop_class_uid: list[str] | None = None
    transfer_syntax: list[str] | None = None
    has_pixel_data: bool | None = None
    modality: list[str] | None = None
    reconciliation: list[ReconcileOutcome] | None = None
    excluded_study: bool | None = None
    #: Matches when this destination's accepted_sop_classes leaves the class out.
    not_accepted_by: str | None = None

    @model_validator(mode="after")
    def _reason_for_sinbin(self) -> RouteRule:
        if self.to in (SINBIN, SKIP) and not self.reason:
            raise ValueError(f"rule '{self.name}' sends to {self.to} and needs a reason")
        return self


class RoutingConfig(Frozen):
    """Ordered rules (first match wins) and the study exclusion list."""

    rules: list[RouteRule] = []
    #: Text file with one Study Instance UID per line; '#' starts a comment.
    exclusion_list: Path | None = None


class BatchConfig(Frozen):
    """Batch limits and the batching mode."""

    max_instances: int = Field(default=500, ge=1)
    max_megabytes: float = Field(default=1024, gt=0)
    mode: Literal["stripe", "folder"] = "stripe"


class RetryConfig(Frozen):
    """Automatic retries of a batch after transient failures.

    Association failures, C-STORE timeouts and 0xA7xx (out of resources)
    are transient: the batch's failed instances are tried again after
    ``backoff_seconds``, doubling up to ``max_backoff_seconds``. After
    ``max_retries`` the batch is marked failed with the reason, and
    ``migrator requeue`` returns it to the plan.
    """

    max_retries: int = Field(default=5, ge=0)
    backoff_seconds: int = Field(default=30, ge=1)
    max_backoff_seconds: int = Field(default=1800, ge=1)


class RunConfig(Frozen):
    """The local side of the migration."""

    #: Our AE title, the calling AE title of every association.
    ae_title: AETitle = "MIGRATOR"
    #: Processes for planning and for the embedded migration.
    processes: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)


class CollisionConfig(Frozen):
    """The policies that ``migrator start`` applies to the collisions that ``migrator plan`` found.

    The destination stores one object per SOP Instance UID, so two files
    that claim one UID cannot both arrive there unchanged. Each policy
    decides which of them are sent and sends the others to the sin bin
    with the collision's kind as the reason.
    """

    #: Files with one SOP Instance UID, one study and different bytes. "sinbin"
    #: sends every copy to the sin bin. "follow_legacy_db" sends the file whose path the
    #: legacy database references, and without a path column sends all to the sin bin.
    #: "send_newest" sends the file with the latest modification time.
    #: "send_all" sends every copy, and the destination's rules decide which it keeps.
    different_content: Literal["sinbin", "follow_legacy_db", "send_newest", "send_all"] = "sinbin"
    #: One SOP Instance UID in the headers of two or more studies.
    #: "follow_legacy_db" sends the file that the legacy database references by
    #: path, or without a path column the file in the study its row names. It
    #: holds back the rest. "sinbin" holds back every file.
    uid_in_two_studies: Literal["sinbin", "follow_legacy_db"] = "follow_legacy_db"
    #: One Patient ID with two or more patient names after the legacy
    #: database's corrections. "sinbin" holds back every file of that Patient
    #: ID that has a name; "send" sends them as the other rules decide.
    patient_id_two_names: Literal["sinbin", "send"] = "sinbin"
    #: Environment variable that contains the key for the keyed hashes of
    #: Patient ID and Patient Name in the index, at least 32 characters. Without
    #: it a random key is generated and stored in the state database.
    patient_key_env: str | None = None


class TransformConfig(Frozen):
    """``migrator transform``: the legacy PACS that answers C-MOVE, our storage SCP, the options."""

    #: The legacy PACS that instances not in the index are retrieved from by
    #: C-MOVE; without it, only indexed files are transformed.
    legacy_ae_title: AETitle | None = None
    legacy_host: str | None = None
    legacy_port: int | None = Field(default=None, ge=1, le=65535)
    #: The Move Destination: our storage SCP, which the legacy PACS must know
    #: by this AE title, host and port. It listens on scp_host, and accepts
    #: associations only from legacy_ae_title. scp_port is required with a legacy PACS.
    scp_ae_title: AETitle = "MIGRATOR"
    scp_host: str = "127.0.0.1"
    scp_port: int | None = Field(default=None, ge=1, le=65535)
    #: Where received instances are kept, relative to the configuration file.
    scp_folder: Path = Path("transform-received")
    #: SOP Instance UIDs per C-MOVE request.
    move_batch_size: int = Field(default=50, ge=1, le=1000)
    #: Seconds to wait for the association, and for each C-MOVE response.
    acse_timeout: float = Field(default=30, gt=0)
    dimse_timeout: float = Field(default=600, gt=0)
    #: Seconds to wait after the final C-MOVE response for instances that it
    #: counts as completed but that have not arrived yet.
    arrival_wait: float = Field(default=5, ge=0)
    #: The destination that receives the transformed instances.
    destination: str = "main"
    #: Send the transformed instance under a new SOP Instance UID, with a
    #: Derivation Description. By default it keeps its UID, which the
    #: destination has not received untransformed.
    new_uid: bool = False
    #: Transform images whose Image Orientation/Position (Patient) place them
    #: in the patient, recomputing both. By default they go to the sin bin.
    allow_patient_geometry: bool = False

    @model_validator(mode="after")
    def _legacy_pacs_complete(self) -> TransformConfig:
        given = [self.legacy_ae_title is not None, self.legacy_host is not None, self.legacy_port is not None]
        if any(given) and not all(given):
            raise ValueError("legacy_ae_title, legacy_host and legacy_port name the legacy PACS together; "
                             "set all three, or none to transform indexed files only")
        if all(given) and self.scp_port is None:
            raise ValueError("scp_port is required with a legacy PACS: the port of our storage SCP, "
                             "which the legacy PACS sends the C-MOVE sub-operations to")
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: list[Weekday] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Window(Frozen):
    """A time-of-day window with its own in-flight limit, in the dispatcher's local time."""

    start: dt.time
    #: May be earlier than start for a window across midnight (22:00 to 06:00).
    end: dt.time
    #: Days on which the window starts; a window across midnight ends the next day.
    days: list[Weekday] = WEEKDAYS
    #: Batches queued or running per root inside the window; 0 pauses dispatch.
    max_in_flight_per_root: int = Field(ge=0)

    def contains(self, moment: dt.datetime) -> bool:
        """Tell whether ``moment`` (local time) falls inside the window."""
        now = moment.time()
        today = WEEKDAYS[moment.weekday()]
        yesterday = WEEKDAYS[(moment.weekday() - 1) % 7]
        if self.start <= self.end:
            return today in self.days and self.start <= now < self.end
        return (today in self.days and now >= self.start) or (yesterday in self.days and now < self.end)


class BrokerConfig(Frozen):
    """The Celery broker of the distributed mode; without it, runs are embedded."""

    #: A Redis URL without a password, for example ``redis://10.1.2.5:6379/0``.
    url: str = Field(pattern=r"^rediss?://")
    #: Environment variable that contains the Redis password, if it needs one.
    password_env: str | None = None
    #: Queue names are ``PREFIX.ROOT``, one queue per storage root.
    queue_prefix: str = Field(default="migrator", pattern=r"^[A-Za-z0-9_.-]+$")
    #: Batches queued or running per root at once, so the broker never contains the whole plan.
    max_in_flight_per_root: int = Field(default=4, ge=1)
    #: Folder index tasks queued or running per root at once during
    #: ``migrator plan --distributed``; each task indexes one folder.
    max_index_tasks_per_root: int = Field(default=64, ge=1)
    #: Other limits at certain hours, for example fewer batches during
    #: clinical hours. The first window that contains the time applies.
    windows: list[Window] = []

    @field_validator("url")
    @classmethod
    def _url_has_no_password(cls, value: str) -> str:
        if urlsplit(value).password or "password=" in urlsplit(value).query:
            raise ValueError("the broker URL contains a password; remove it and name the "
                             "environment variable that contains it in password_env")
        return value

    def broker_url(self) -> str:
        """Return the URL with the password taken from the environment."""
        if not self.password_env:
            return self.url
        password = os.environ.get(self.password_env)
        if password is None:
            raise ConfigError(f"environment variable {self.password_env} is not set; it must "
                              f"contain the password for the broker {self.url}")
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://:{quote(password, safe='')}@{rest}"

    def queue(self, root: str) -> str:
        return f"{self.queue_prefix}.{root}"

    def in_flight_limit(self, moment: dt.datetime) -> int:
        """Return the per-root in-flight limit at ``moment`` (local time)."""
        for window in self.windows:
            if window.contains(moment):
                return window.max_in_flight_per_root
        return self.max_in_flight_per_root




class Settings(Frozen):
    """The whole configuration file."""

    state: StateConfig
    legacy: LegacyConfig
    roots: list[RootConfig] = Field(min_length=1)
    destinations: dict[str, DestinationConfig] = Field(min_length=1)
    sinbin: DestinationConfig
    routing: RoutingConfig = RoutingConfig()
    batches: BatchConfig = BatchConfig()
    retries: RetryConfig = RetryConfig()
    collisions: CollisionConfig = CollisionConfig()
    run: RunConfig = RunConfig()
    transform: TransformConfig = TransformConfig()
    #: The distributed mode's broker; None runs batches on a local pool.
    broker: BrokerConfig | None = None
    #: Directory of the configuration file; relative paths are resolved here.
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        names = [root.name for root in self.roots]
        if len(set(names)) != len(names):
            raise ValueError(f"storage root names must be unique: {names}")
        for reserved in (SINBIN, SKIP):
            if reserved in self.destinations:
                raise ValueError(f"'{reserved}' is reserved and cannot name a destination")
        targets = set(self.destinations) | {SINBIN, SKIP}
        for rule in self.routing.rules:
            if rule.to not in targets:
                raise ValueError(
                    f"rule '{rule.name}' sends to unknown destination '{rule.to}'; "
                    f"expected one of {sorted(targets)}"
                )
            if rule.not_accepted_by and rule.not_accepted_by not in self.destinations:
                raise ValueError(
                    f"rule '{rule.name}': not_accepted_by names unknown destination "
                    f"'{rule.not_accepted_by}'"
                )
        return self

    @property
    def route_rules(self) -> list[RouteRule]:
        """The configured rules, or the default rules when none are given."""
        return self.routing.rules or default_rules(self.destinations)

    def resolve(self, path: Path) -> Path:
        """Return ``path`` resolved against the configuration file's directory."""
        return path if path.is_absolute() else (self.base_dir / path)

    def root(self, name: str) -> RootConfig:
        for root in self.roots:
            if root.name == name:
                return root
        raise ConfigError(f"storage root '{name}' is not in the configuration")


NON_PIXEL_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]


def default_rules(destinations: dict[str, Any]) -> list[RouteRule]:
    """Build the default rules.

    Orphans, superseded files, duplicates and excluded studies go to the
    sin bin. Objects without
    Pixel Data stored in Implicit or Explicit VR Little Endian go to
    ``nonpixel`` (or ``main`` when no such destination exists), images go to
    ``main``, and anything else goes to the sin bin for review. The router
    itself sends a SOP class that the chosen destination does not accept to
    the sin bin.
    """
    main = "main" if "main" in destinations else next(iter(destinations))
    nonpixel = "nonpixel" if "nonpixel" in destinations else main
    rules = [
        RouteRule(name="orphan", to=SINBIN, reason="orphan",
                  reconciliation=[ReconcileOutcome.ORPHAN]),
        RouteRule(name="duplicate", to=SINBIN, reason="duplicate",
                  reconciliation=[ReconcileOutcome.DUPLICATE]),
        RouteRule(name="superseded", to=SINBIN, reason="superseded",
                  reconciliation=[ReconcileOutcome.SUPERSEDED]),
        RouteRule(name="excluded study", to=SINBIN, reason="excluded_study",
                  excluded_study=True),
    ]
    rules += [
        RouteRule(name="non-pixel object", to=nonpixel, has_pixel_data=False,
                  transfer_syntax=NON_PIXEL_SYNTAXES),
        RouteRule(name="image", to=main, has_pixel_data=True),
        RouteRule(name="no other rule", to=SINBIN, reason="no_matching_rule"),
    ]
    return rules


def load_settings(path: Path | str) -> Settings:
    """Read and validate a configuration file.

    Raises
    ------
    ConfigError
        The file is missing, is not TOML, or fails validation. The message
        names each bad key, its value and what is expected.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file not found: {path.absolute()}; name it with --config FILE after "
            "the subcommand or with the MIGRATOR_CONFIG environment variable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    raw.setdefault("base_dir", str(path.resolve().parent))
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def format_validation_error(path: Path, exc: ValidationError) -> str:
    """Render pydantic's errors as one line per key: key, bad value, expectation."""
    lines = [f"{path}: {exc.error_count()} invalid setting(s)"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            # A check across sections has the whole file as its input, so only
            # its message, which names the bad values, is shown.
            lines.append(f"  {key}: {message}")
            continue
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; check its spelling against the README")
            continue
        value = error.get("input")
        shown = "missing" if error["type"] == "missing" else f"got {value!r}"
        if error["type"] != "missing" and key.endswith("url"):
            shown = "value not shown, since a URL may contain a password"
        lines.append(f"  {key}: {message} ({shown})")
    return "\n".join(lines)
