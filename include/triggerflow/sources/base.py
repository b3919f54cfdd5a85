"""The small interface every trigger source implements.

A source reads raw messages after the stored positions and yields them page by page, each page
with the positions it advances to. The landing stage commits each page and its positions in one
transaction, so a source never needs to remember anything itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class SourceKind(StrEnum):
    """``extra.kind`` of connection adobe_triggers."""

    JOURNAL = "journal"  # I/O Events journal (sources/journal.py)
    PIPELINE = "pipeline"  # Pipeline v3 consumer (sources/pipeline.py)


class ResetPolicy(StrEnum):
    """Where a source starts when no position is stored."""

    EARLIEST = "earliest"
    LATEST = "latest"


# As plain strings, for messages that list the choices: ('journal', 'pipeline').
SOURCE_KINDS: tuple[str, ...] = tuple(kind.value for kind in SourceKind)
RESET_POLICIES: tuple[str, ...] = tuple(policy.value for policy in ResetPolicy)


class SourceError(RuntimeError):
    """The source cannot be read; the message says what to check."""


@dataclass(frozen=True)
class RawMessage:
    partition: int
    position: str  # where this message sits in its partition (opaque for the journal)
    # The message as received (pipeline envelope JSON). Readers hand over bytes they have not
    # decoded: landing decodes (with replacement), caps and notes what it changed, so no content
    # can fail a read.
    payload: str | bytes


@dataclass(frozen=True)
class Gap:
    """The source resumed somewhere else than asked: messages in between are not coming."""

    partition: int
    expected: str | None  # the position we asked for (None when nothing was stored)
    resumed: str  # where the source actually resumed
    reason: str


@dataclass
class Page:
    messages: list[RawMessage]
    # Positions to store once this page is landed: partition -> position to read *after*.
    next_positions: dict[int, str] = field(default_factory=dict)
    bytes_read: int = 0
    # Reported with the page, in the same transaction: a gap is never silent.
    gaps: list[Gap] = field(default_factory=list)
    # What the reader received but could not place at a position (a line that is not JSON, not
    # an object, blank...): {reason: count}, landed with the page into tf_batch / source health.
    dropped: dict[str, int] = field(default_factory=dict)
    # Keep-alives (Pipeline PINGs) received with this page: a read that only ever gets these
    # while messages are waiting is a source problem the status must show, not an idle minute.
    keepalives: int = 0


class TriggerSource(Protocol):
    #: key under which positions are stored in tf_source_position
    source_key: str
    #: where the source was reached (reported in the status document)
    endpoint: str

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        """Yield pages of at most ``max_messages`` messages in total, starting after ``positions``."""
        ...
