"""Splitting C-FIND queries against a simulated destination with a result limit.

The fake client responds to Study Root queries from an in-memory archive the
way Orthanc 1.10 does at a limit (the matches up to the limit, then status
0xFE00), or silently, or without UID list matching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from migrator.verify.compare import Kind
from migrator.verify.query import DestinationQuery, FindResponse
from migrator.verify.recorded import RecordedInstance, RecordedStudy, SentUids
from migrator.verify.run import verify_chunk

#: study -> series -> SOP Instance UIDs
Archive = dict[str, dict[str, list[str]]]


def values(identifier: Dataset, keyword: str) -> list[str] | None:
    """Return the UIDs to match, or None for universal matching."""
    value = identifier.get(keyword)
    if value in (None, ""):
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


@dataclass
class FakeClient:
    archive: Archive
    limit: int | None = None
    #: True: a response at the limit ends with success, as if nothing were cut.
    silent: bool = False
    uid_lists: bool = True
    fail_study_wide_image: bool = False
    #: Studies whose every query fails with status 0xC000.
    failing: set[str] = field(default_factory=set)
    name: str = "fake"
    requests: list[Dataset] = field(default_factory=list)

    def find(self, identifier: Dataset) -> FindResponse:
        self.requests.append(identifier)
        level = identifier.QueryRetrieveLevel
        studies = values(identifier, "StudyInstanceUID")
        if studies is not None and self.failing & set(studies):
            return FindResponse([], 0xC000, "C-FIND status 0xC000 (unable to process)")
        if studies is not None and len(studies) > 1 and not self.uid_lists:
            # Treats the whole value as one UID, which matches nothing.
            studies = ["\\".join(studies)]
        matches = []
        for study, series_map in self.archive.items():
            if studies is not None and study not in studies:
                continue
            if level == "STUDY":
                match = Dataset()
                match.StudyInstanceUID = study
                match.NumberOfStudyRelatedInstances = sum(len(s) for s in series_map.values())
                matches.append(match)
                continue
            if level == "IMAGE" and self.fail_study_wide_image and values(identifier, "SeriesInstanceUID") is None:
                return FindResponse([], 0xA900, "C-FIND status 0xA900")
            for series, sops in series_map.items():
                series_filter = values(identifier, "SeriesInstanceUID")
                if series_filter is not None and series not in series_filter:
                    continue
                if level == "SERIES":
                    match = Dataset()
                    match.StudyInstanceUID, match.SeriesInstanceUID = study, series
                    matches.append(match)
                    continue
                sop_filter = values(identifier, "SOPInstanceUID")
                for sop in sops:
                    if sop_filter is None or sop in sop_filter:
                        match = Dataset()
                        match.StudyInstanceUID, match.SeriesInstanceUID, match.SOPInstanceUID = study, series, sop
                        matches.append(match)
        if self.limit is not None and len(matches) > self.limit:
            return FindResponse(matches[:self.limit], 0x0000 if self.silent else 0xFE00)
        return FindResponse(matches, 0x0000)


def archive(studies: int, series: int, instances: int) -> Archive:
    return {f"1.{a}": {f"1.{a}.{b}": [f"1.{a}.{b}.{c}" for c in range(instances)] for b in range(series)}
            for a in range(studies)}


def expected_of(store: Archive, study: str) -> dict[str, str | None]:
    return {sop: series for series, sops in store[study].items() for sop in sops}


def test_study_list_split_at_limit() -> None:
    store = archive(studies=9, series=1, instances=1)
    client = FakeClient(store, limit=2)
    query = DestinationQuery(client)  # type: ignore[arg-type]
    lookup = query.studies(sorted(store) + ["9.9"])
    assert sorted(lookup.found) == sorted(store)
    assert lookup.failed == {}
    assert query.uid_lists


def test_silent_limit_split_with_max_results() -> None:
    """With max_results, chunks are no longer than the limit, so nothing is cut silently."""
    store = archive(studies=9, series=1, instances=1)
    client = FakeClient(store, limit=2, silent=True)
    lookup = DestinationQuery(client, max_results=2).studies(sorted(store))  # type: ignore[arg-type]
    assert sorted(lookup.found) == sorted(store)
    assert all(len(values(r, "StudyInstanceUID") or []) <= 2 for r in client.requests)


def test_silent_limit_caught_by_single_queries() -> None:
    """Without max_results, studies a list response leaves out are queried alone."""
    store = archive(studies=5, series=1, instances=1)
    lookup = DestinationQuery(FakeClient(store, limit=2, silent=True)).studies(sorted(store))  # type: ignore[arg-type]
    assert sorted(lookup.found) == sorted(store)


def test_uid_lists_unsupported_queries_alone() -> None:
    store = archive(studies=4, series=1, instances=1)
    client = FakeClient(store, uid_lists=False)
    query = DestinationQuery(client)  # type: ignore[arg-type]
    assert sorted(query.studies(sorted(store)).found) == sorted(store)
    assert not query.uid_lists
    client.requests.clear()
    query.studies(sorted(store))
    assert len(client.requests) == 4


def test_study_instance_count_returned() -> None:
    store = archive(studies=2, series=3, instances=4)
    lookup = DestinationQuery(FakeClient(store)).studies(sorted(store))  # type: ignore[arg-type]
    assert lookup.found["1.0"].instance_count == 12


def test_instances_listed_study_wide() -> None:
    store = archive(studies=1, series=3, instances=4)
    client = FakeClient(store)
    listing = DestinationQuery(client).instances("1.0", 12)  # type: ignore[arg-type]
    assert len(listing.instances) == 12
    assert listing.instances["1.0.2.3"] == "1.0.2"
    assert len(client.requests) == 1


def test_instances_split_by_series_at_limit() -> None:
    store = archive(studies=1, series=3, instances=4)
    listing = DestinationQuery(FakeClient(store, limit=5)).instances("1.0", 12)  # type: ignore[arg-type]
    assert len(listing.instances) == 12
    assert listing.incomplete == []
    assert listing.error is None


def test_large_series_found_by_uid_lists() -> None:
    """A series over the limit is checked by SOP Instance UID lists of the expected instances."""
    store = archive(studies=1, series=2, instances=7)
    query = DestinationQuery(FakeClient(store, limit=3))  # type: ignore[arg-type]
    listing = query.instances("1.0", 14, expected_of(store, "1.0"))
    assert len(listing.instances) == 14
    assert listing.incomplete == []


def test_large_series_with_extra_instance_incomplete() -> None:
    """An instance the audit does not know in a series over the limit cannot be listed."""
    store = archive(studies=1, series=1, instances=7)
    expected = expected_of(store, "1.0")
    del expected["1.0.0.6"]
    listing = DestinationQuery(FakeClient(store, limit=3)).instances("1.0", 7, expected)  # type: ignore[arg-type]
    assert listing.incomplete
    assert len(listing.instances) == 6


def test_silent_limit_caught_by_destination_count() -> None:
    store = archive(studies=1, series=3, instances=4)
    listing = DestinationQuery(FakeClient(store, limit=5, silent=True)).instances("1.0", 12)  # type: ignore[arg-type]
    assert len(listing.instances) == 12


def test_rejected_study_wide_query_goes_by_series() -> None:
    store = archive(studies=1, series=2, instances=2)
    listing = DestinationQuery(FakeClient(store, fail_study_wide_image=True)).instances("1.0", 4)  # type: ignore[arg-type]
    assert len(listing.instances) == 4
    assert listing.error is None


def test_failed_study_reported_others_found() -> None:
    store = archive(studies=4, series=1, instances=1)
    client = FakeClient(store, failing={"1.2"})
    query = DestinationQuery(client)  # type: ignore[arg-type]
    lookup = query.studies(sorted(store))
    assert sorted(lookup.found) == ["1.0", "1.1", "1.3"]
    assert lookup.failed == {"1.2": "C-FIND status 0xC000 (unable to process)"}
    assert query.uid_lists


def recorded_study(store: Archive, study: str) -> RecordedStudy:
    instances = [RecordedInstance(index, "share01", f"f/{sop}.dcm", SentUids(study, series, sop),
                                  "1.2.840.10008.5.1.4.1.1.2", "sent", None, "main")
                 for index, (sop, series) in enumerate(sorted(expected_of(store, study).items()))]
    return RecordedStudy(study, instances)


def test_chunk_goes_on_after_failed_study() -> None:
    """A study whose C-FIND fails is reported as query_failed, and the others are verified."""
    store = archive(studies=3, series=2, instances=2)
    query = DestinationQuery(FakeClient(store, failing={"1.1"}))  # type: ignore[arg-type]
    results = verify_chunk(query, None, [recorded_study(store, study) for study in sorted(store)])  # type: ignore[arg-type]
    assert [result.study.kind for result in results] == [Kind.VERIFIED, Kind.QUERY_FAILED, Kind.VERIFIED]
    assert results[1].study.detail == "STUDY level: C-FIND status 0xC000 (unable to process)"
    assert results[1].study.expected == 4
