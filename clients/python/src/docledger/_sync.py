"""Full-sync accounting shared by both clients: which documents a run sent, whether it
failed, and what its cleanup did. The rule is LangChain's `full` cleanup: after a run
that sent every line successfully, every live document under the prefix that the run did
not send is deleted; after a run that failed part way, nothing is.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._core import check_sync_item
from .errors import SyncFailed
from .models import BatchResult, Delete, ListedDocument, Operation, SyncReport


class SyncTally:
    """One sync run's bookkeeping."""

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a string")
        self.prefix = prefix
        self.sent: set[str] = set()
        self.report = SyncReport()

    def take(self, op: Operation) -> Operation:
        """Checks a line of the run and remembers its document."""
        check_sync_item(op, self.prefix)
        self.sent.add(op.doc_id)
        return op

    def record(self, r: BatchResult) -> None:
        """Counts one answer of the run."""
        self.report.sent += 1
        if r.result is None:
            self.report.refused.append(r)
        elif r.result.unchanged:
            self.report.unchanged += 1
        else:
            self.report.changed += 1

    def check_run(self) -> None:
        """Raises:
        SyncFailed: a line of the run was refused; nothing will be deleted."""
        if self.report.refused:
            first = self.report.refused[0]
            raise SyncFailed(
                f"{len(self.report.refused)} line(s) refused (first: line {first.line}, "
                f"{first.doc_id}: {first.error}); no document was deleted",
                self.report,
            )

    def deletions(self, listed: Iterable[ListedDocument]) -> Iterable[Delete]:
        """A delete for each live listed document the run did not send, guarded by the
        version listed: a document written since is kept (409), not deleted."""
        for d in listed:
            if not d.deleted and d.doc_id not in self.sent and d.doc_id.startswith(self.prefix):
                yield Delete(d.doc_id, expected_version=d.version)

    def record_cleanup(self, r: BatchResult) -> None:
        """Counts one answer of the cleanup."""
        if r.ok:
            self.report.deleted.append(r.doc_id)
        elif r.status == 409:
            self.report.kept.append(r)
        elif r.status != 404:  # 404: deleted by someone else meanwhile
            self.report.refused.append(r)

    def check_cleanup(self) -> SyncReport:
        """Raises:
        SyncFailed: a deletion was refused (the run's own lines all landed)."""
        if self.report.refused:
            raise SyncFailed(
                f"cleanup incomplete: {len(self.report.refused)} deletion(s) refused "
                f"(first: {self.report.refused[0].doc_id}: {self.report.refused[0].error})",
                self.report,
            )
        return self.report
