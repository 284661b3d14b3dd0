"""Routing: ordered rules, first match wins, each naming where an instance goes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from migrator.config import SINBIN, ReconcileOutcome, RouteRule, Settings
from migrator.errors import ConfigError


@dataclass(frozen=True)
class RouteFacts:
    """The facts of one instance that routing rules test."""

    sop_class_uid: str
    transfer_syntax: str
    has_pixel_data: bool
    modality: str | None
    reconciliation: ReconcileOutcome
    excluded_study: bool
    #: The Study Instance UID that put the instance on the exclusion list.
    excluded_study_uid: str | None = None


@dataclass(frozen=True)
class Route:
    rule: str
    #: A destination name, "sinbin" or "skip".
    to: str
    reason: str | None
    #: What made the rule apply to this instance, for the sin bin reason.
    detail: str | None = None


def _matches(rule: RouteRule, facts: RouteFacts, settings: Settings) -> bool:
    checks = [
        rule.sop_class_uid is None or facts.sop_class_uid in rule.sop_class_uid,
        rule.transfer_syntax is None or facts.transfer_syntax in rule.transfer_syntax,
        rule.has_pixel_data is None or facts.has_pixel_data == rule.has_pixel_data,
        rule.modality is None or (facts.modality or "") in rule.modality,
        rule.reconciliation is None or facts.reconciliation in rule.reconciliation,
        rule.excluded_study is None or facts.excluded_study == rule.excluded_study,
    ]
    if rule.not_accepted_by is not None:
        accepted = settings.destinations[rule.not_accepted_by].accepted_sop_classes
        checks.append(bool(accepted) and facts.sop_class_uid not in accepted)
    return all(checks)


class Router:
    """Applies the configured rules, or the default ones."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = settings.route_rules

    def route(self, facts: RouteFacts) -> Route:
        """Return the first matching rule's target.

        A destination whose ``accepted_sop_classes`` leaves out the
        instance's SOP class never receives it: the instance goes to the sin
        bin with reason "unsupported_sop_class".
        """
        for rule in self.rules:
            if not _matches(rule, facts, self.settings):
                continue
            destination = self.settings.destinations.get(rule.to)
            accepted = destination.accepted_sop_classes if destination else []
            if accepted and facts.sop_class_uid not in accepted:
                return Route(f"{rule.name} (not accepted by {rule.to})", SINBIN, "unsupported_sop_class",
                             f"{rule.to} does not accept SOP class {facts.sop_class_uid}")
            detail = None
            if rule.excluded_study and facts.excluded_study_uid:
                detail = f"study {facts.excluded_study_uid} is on the exclusion list"
            elif rule.not_accepted_by:
                detail = f"{rule.not_accepted_by} does not accept SOP class {facts.sop_class_uid}"
            return Route(rule.name, rule.to, rule.reason, detail)
        return Route("(none)", SINBIN, "no_matching_rule")


def load_exclusion_list(settings: Settings) -> frozenset[str]:
    """Read the Study Instance UIDs on the exclusion list, if one is configured.

    Raises
    ------
    ConfigError
        The file is configured but cannot be read.
    """
    if settings.routing.exclusion_list is None:
        return frozenset()
    path: Path = settings.resolve(settings.routing.exclusion_list)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the exclusion list {path}: {exc.strerror or exc}") from None
    uids = (line.split("#", 1)[0].strip() for line in lines)
    return frozenset(uid for uid in uids if uid)
