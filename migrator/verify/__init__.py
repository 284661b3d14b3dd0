"""``migrator verify``: compare what each destination stores with the audit.

For every study that the audit places at a destination, C-FIND queries
(Study Root, STUDY and IMAGE level) list the instances the destination
stores. The comparison lists each instance missing there, and each one
there that the audit does not record as delivered. Optionally, a Storage
Commitment request (N-ACTION) has the destination confirm that it has
taken responsibility for the delivered instances.
"""

from migrator.verify.commit import CommitListener, CommitTracker
from migrator.verify.compare import Kind, ReportRow, StudyResult, compare_study
from migrator.verify.recorded import (
    RecordedAudit,
    RecordedInstance,
    RecordedStudy,
    SentUids,
    sent_uids,
)
from migrator.verify.report import DestinationSummary, ReportWriter, read_recheck
from migrator.verify.run import Target, VerifyOptions, group_targets, verify_destination

__all__ = [
    "CommitListener", "CommitTracker", "DestinationSummary", "Kind", "RecordedAudit", "RecordedInstance",
    "RecordedStudy", "ReportRow", "ReportWriter", "SentUids", "StudyResult", "Target",
    "VerifyOptions", "compare_study", "group_targets", "read_recheck", "sent_uids", "verify_destination",
]
