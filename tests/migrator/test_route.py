"""Tests for routing rules, the default rules and the study exclusion list."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    TwelveLeadECGWaveformStorage,
)

from migrator.config import SINBIN, ReconcileOutcome, Settings
from migrator.errors import ConfigError
from migrator.route import Route, RouteFacts, Router, load_exclusion_list

#: The classes the default test configuration's main destination takes.
MAIN_CLASSES = [CTImageStorage, MRImageStorage, BasicTextSRStorage, EncapsulatedPDFStorage]

CT_IMAGE = RouteFacts(
    sop_class_uid=CTImageStorage,
    transfer_syntax=JPEG2000Lossless,
    has_pixel_data=True,
    modality="CT",
    reconciliation=ReconcileOutcome.MATCHED,
    excluded_study=False,
)

REPORT = RouteFacts(
    sop_class_uid=BasicTextSRStorage,
    transfer_syntax=ExplicitVRLittleEndian,
    has_pixel_data=False,
    modality="SR",
    reconciliation=ReconcileOutcome.MATCHED,
    excluded_study=False,
)


def destination(port: int, accepted: list[str] | None = None) -> dict[str, Any]:
    return {
        "ae_title": f"SCP{port}",
        "host": "127.0.0.1",
        "port": port,
        "accepted_sop_classes": accepted or [],
    }


def make_settings(
    rules: list[dict[str, Any]] | None = None,
    destinations: dict[str, Any] | None = None,
    base_dir: Path = Path("/srv/migrator"),
    exclusion_list: str | None = None,
) -> Settings:
    routing: dict[str, Any] = {"rules": rules or []}
    if exclusion_list is not None:
        routing["exclusion_list"] = exclusion_list
    return Settings.model_validate({
        "state": {"url": "sqlite:///state.db"},
        "legacy": {"url": "sqlite:///legacy.db",
                   "query": "SELECT uid AS SOPInstanceUID FROM image WHERE uid IN :uids"},
        "roots": [{"name": "share03", "path": "/mnt/share03"}],
        "destinations": destinations or {
            "main": destination(11112, accepted=MAIN_CLASSES),
            "nonpixel": destination(11114),
            "open": destination(11115),
        },
        "sinbin": destination(11113),
        "routing": routing,
        "base_dir": str(base_dir),
    })


def route_with_rule(rule: dict[str, Any], facts: RouteFacts) -> Route:
    """Route ``facts`` with ``rule`` followed by a catch-all rule to 'open'."""
    settings = make_settings([
        {"name": "under test", "to": "main", **rule},
        {"name": "fallback", "to": "open"},
    ])
    return Router(settings).route(facts)


CONDITION_CASES = [
    pytest.param({"sop_class_uid": [CTImageStorage, MRImageStorage]},
                 {"sop_class_uid": MRImageStorage}, {"sop_class_uid": BasicTextSRStorage},
                 id="sop_class_uid"),
    pytest.param({"transfer_syntax": [ImplicitVRLittleEndian]},
                 {"transfer_syntax": ImplicitVRLittleEndian}, {"transfer_syntax": JPEG2000Lossless},
                 id="transfer_syntax"),
    pytest.param({"has_pixel_data": False},
                 {"has_pixel_data": False}, {"has_pixel_data": True},
                 id="has_pixel_data"),
    pytest.param({"modality": ["CT", "MR"]},
                 {"modality": "MR"}, {"modality": "US"},
                 id="modality"),
    pytest.param({"modality": [""]},
                 {"modality": None}, {"modality": "CT"},
                 id="modality-missing"),
    pytest.param({"reconciliation": ["orphan", "superseded"]},
                 {"reconciliation": ReconcileOutcome.SUPERSEDED},
                 {"reconciliation": ReconcileOutcome.MATCHED},
                 id="reconciliation"),
    pytest.param({"excluded_study": True},
                 {"excluded_study": True}, {"excluded_study": False},
                 id="excluded_study"),
    pytest.param({"not_accepted_by": "main"},
                 {"sop_class_uid": TwelveLeadECGWaveformStorage}, {"sop_class_uid": CTImageStorage},
                 id="not_accepted_by"),
]


class TestConditions:
    @pytest.mark.parametrize(("rule", "matching", "other"), CONDITION_CASES)
    def test_condition_matches(
        self, rule: dict[str, Any], matching: dict[str, Any], other: dict[str, Any]
    ) -> None:
        """A rule matches facts that meet its condition."""
        facts = dataclasses.replace(CT_IMAGE, **matching)

        assert route_with_rule(rule, facts).rule.startswith("under test")

    @pytest.mark.parametrize(("rule", "matching", "other"), CONDITION_CASES)
    def test_condition_fails(
        self, rule: dict[str, Any], matching: dict[str, Any], other: dict[str, Any]
    ) -> None:
        """A rule does not match facts that miss its condition."""
        facts = dataclasses.replace(CT_IMAGE, **other)

        assert route_with_rule(rule, facts).rule == "fallback"

    def test_not_accepted_by_open_destination(self) -> None:
        """A destination with no accepted_sop_classes takes every class."""
        route = route_with_rule({"not_accepted_by": "open"}, REPORT)

        assert route.rule == "fallback"

    def test_all_conditions_must_hold(self) -> None:
        """A rule with two conditions needs both."""
        rule = {"modality": ["CT"], "has_pixel_data": False}

        assert route_with_rule(rule, CT_IMAGE).rule == "fallback"
        assert route_with_rule(rule, dataclasses.replace(CT_IMAGE, has_pixel_data=False)).rule == (
            "under test"
        )

    def test_rule_without_conditions_matches_all(self) -> None:
        """A rule with no conditions matches anything."""
        assert route_with_rule({}, CT_IMAGE).rule == "under test"
        assert route_with_rule({}, REPORT).rule == "under test"


class TestOrder:
    def test_first_match_wins(self) -> None:
        """The first matching rule decides, even when later rules also match."""
        settings = make_settings([
            {"name": "reports", "to": "nonpixel", "modality": ["SR"]},
            {"name": "no pixels", "to": SINBIN, "reason": "review", "has_pixel_data": False},
            {"name": "everything", "to": "main"},
        ])
        router = Router(settings)

        assert router.route(REPORT) == Route("reports", "nonpixel", None)
        assert router.route(dataclasses.replace(REPORT, modality="KO")) == Route(
            "no pixels", SINBIN, "review"
        )
        assert router.route(CT_IMAGE) == Route("everything", "main", None)

    def test_no_match_goes_to_sinbin(self) -> None:
        """Facts that no configured rule matches go to the sin bin as no_matching_rule."""
        router = Router(make_settings([{"name": "CT only", "to": "main", "modality": ["CT"]}]))

        assert router.route(REPORT) == Route("(none)", SINBIN, "no_matching_rule")

    def test_skip_rule(self) -> None:
        """A skip rule routes to 'skip' with its reason."""
        router = Router(make_settings([{"name": "presentation states", "to": "skip",
                                        "reason": "not migrated", "modality": ["PR"]}]))

        route = router.route(dataclasses.replace(REPORT, modality="PR"))

        assert route == Route("presentation states", "skip", "not migrated")


class TestDefaultRules:
    @pytest.mark.parametrize(
        ("facts", "reason"),
        [
            pytest.param({"reconciliation": ReconcileOutcome.ORPHAN}, "orphan", id="orphan"),
            pytest.param({"reconciliation": ReconcileOutcome.DUPLICATE}, "duplicate", id="duplicate"),
            pytest.param({"reconciliation": ReconcileOutcome.SUPERSEDED}, "superseded",
                         id="superseded"),
            pytest.param({"excluded_study": True}, "excluded_study", id="excluded"),
            pytest.param({"sop_class_uid": TwelveLeadECGWaveformStorage}, "unsupported_sop_class",
                         id="unsupported-by-main"),
        ],
    )
    def test_default_sinbin_reasons(self, facts: dict[str, Any], reason: str) -> None:
        """Orphans, duplicates, superseded, excluded and unsupported go to the sin bin."""
        route = Router(make_settings()).route(dataclasses.replace(CT_IMAGE, **facts))

        assert route.to == SINBIN
        assert route.reason == reason

    def test_default_unsupported_by_nonpixel(self) -> None:
        """A class the nonpixel destination does not take goes to the sin bin."""
        settings = make_settings(destinations={
            "main": destination(11112),
            "nonpixel": destination(11114, accepted=[BasicTextSRStorage]),
        })
        facts = dataclasses.replace(REPORT, sop_class_uid=EncapsulatedPDFStorage)

        route = Router(settings).route(facts)

        assert route == Route("non-pixel object (not accepted by nonpixel)", SINBIN,
                              "unsupported_sop_class",
                              f"nonpixel does not accept SOP class {EncapsulatedPDFStorage}")

    def test_default_acceptance_per_destination(self) -> None:
        """Each destination's accepted classes limit only what is routed to it."""
        settings = make_settings(destinations={
            "main": destination(11112, accepted=[CTImageStorage]),
            "nonpixel": destination(11114, accepted=[BasicTextSRStorage]),
        })
        router = Router(settings)

        assert router.route(REPORT) == Route("non-pixel object", "nonpixel", None)
        assert router.route(CT_IMAGE) == Route("image", "main", None)

    @pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    def test_default_non_pixel_to_nonpixel(self, syntax: str) -> None:
        """A non-pixel object in Implicit or Explicit VR Little Endian goes to nonpixel."""
        route = Router(make_settings()).route(dataclasses.replace(REPORT, transfer_syntax=syntax))

        assert route == Route("non-pixel object", "nonpixel", None)

    def test_default_image_to_main(self) -> None:
        """An image goes to main."""
        assert Router(make_settings()).route(CT_IMAGE) == Route("image", "main", None)

    def test_default_other_syntax_to_sinbin(self) -> None:
        """A non-pixel object in another transfer syntax goes to the sin bin."""
        facts = dataclasses.replace(REPORT, transfer_syntax=DeflatedExplicitVRLittleEndian)

        route = Router(make_settings()).route(facts)

        assert route == Route("no other rule", SINBIN, "no_matching_rule")

    def test_default_without_nonpixel_destination(self) -> None:
        """Without a nonpixel destination, non-pixel objects go to main."""
        settings = make_settings(destinations={"main": destination(11112)})

        assert Router(settings).route(REPORT) == Route("non-pixel object", "main", None)

    def test_default_main_is_first_destination(self) -> None:
        """Without a destination named main, images go to the first destination."""
        settings = make_settings(destinations={"archive": destination(11112),
                                               "other": destination(11116)})

        assert Router(settings).route(CT_IMAGE).to == "archive"


class TestExclusionList:
    def test_comments_and_blank_lines_ignored(self, tmp_path: Path) -> None:
        """Only the UIDs are read: comments, inline comments and blank lines are skipped."""
        (tmp_path / "excluded.txt").write_text(
            "# studies kept in the old archive\n"
            "\n"
            "1.2.826.0.1.3680043.8.498.11\n"
            "   1.2.826.0.1.3680043.8.498.12   # research study\n"
            "   \n"
            "#1.2.826.0.1.3680043.8.498.13\n",
            encoding="utf-8",
        )
        settings = make_settings(base_dir=tmp_path, exclusion_list="excluded.txt")

        assert load_exclusion_list(settings) == {
            "1.2.826.0.1.3680043.8.498.11",
            "1.2.826.0.1.3680043.8.498.12",
        }

    def test_no_list_configured(self) -> None:
        """Without an exclusion list no study is excluded."""
        assert load_exclusion_list(make_settings()) == frozenset()

    def test_missing_file_raises(self, tmp_path: Path) -> None:
        """A configured list that does not exist raises ConfigError naming the file."""
        settings = make_settings(base_dir=tmp_path, exclusion_list="lists/excluded.txt")

        with pytest.raises(ConfigError) as caught:
            load_exclusion_list(settings)

        assert str(tmp_path / "lists" / "excluded.txt") in str(caught.value)
        assert "cannot read the exclusion list" in str(caught.value)
