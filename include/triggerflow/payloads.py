"""What the DAG's tasks hand each other through XCom: ids and counts, typed.

Data moves through the store; these small dicts only say which batch (and chunk) to read and how
many rows a stage wrote, for the next task and for the Airflow UI. Each stage's result dataclass
builds its payload with ``as_xcom()``.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class LandedXCom(TypedDict):
    """``pull_and_land`` → validate, report."""

    batch_id: str
    pulled: int
    newly_landed: int
    reused: bool
    exists: bool
    note: str | None
    dropped: int


class ValidatedXCom(TypedDict):
    """``validate`` → reconcile, report (``note`` is the landing note the DAG carries along)."""

    batch_id: str
    valid: int
    quarantined: int
    note: NotRequired[str | None]


class ReconciledXCom(TypedDict):
    """``reconcile_batch``'s result: its decision counts and the batch's send chunks."""

    batch_id: str
    counts: dict[str, int]
    chunks: list[int]


class ChunkRef(TypedDict):
    """One mapped ``send`` task's input: a chunk of a batch's ledger rows."""

    batch_id: str
    chunk: int


class SentXCom(TypedDict):
    """``send`` (one per chunk) → report."""

    batch_id: str
    chunk: int
    counts: dict[str, int]


class ReportXCom(TypedDict, total=False):
    """``report``: the run's counts (every column of tf_run_summary's counters) and its balance."""

    batch_id: str
    balanced: bool


class ReprocessedXCom(TypedDict):
    """One batch's outcome (``trigger_reprocess``'s reprocess task → summary)."""

    batch_id: str
    quarantined_before: int
    quarantined_after: int
    unmatched_before: int
    unmatched_after: int
    sent_now: int
    skipped_already_sent: int


class BatchGroup(TypedDict):
    """``trigger_reprocess``: one mapped reprocess task's input, the batches it runs in order."""

    batch_ids: list[str]
