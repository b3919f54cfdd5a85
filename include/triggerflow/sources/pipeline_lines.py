"""Pipeline stream framing and partition bookkeeping: what one line of the stream is, and where
it goes.

A line is placed at (partition, offset) from its envelope's members only; its body stays the
bytes received. :class:`ReadState` is what one ``read()`` has seen (next offset per partition,
the page being filled, gaps, drops); :class:`PipelineLines` is the part of the reader that turns
lines into that state (see sources/pipeline.py for the rules: duplicates, gaps, unplaceable
lines).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

import msgspec

from include.triggerflow.sources.base import Gap, Page, RawMessage, SourceError
from include.triggerflow.sources.bounded import index_at, object_members, scalar

log = logging.getLogger("include.triggerflow.sources.pipeline")

_OFFSET_RE = re.compile(r"^\d{1,18}$")
_BOM = b"\xef\xbb\xbf"
MAX_OFFSET = 10**18 - 1  # what tf_source_position (and _OFFSET_RE) can hold


class LineKind(StrEnum):
    """What one stream line turned out to be."""

    DATA = "data"
    DUPLICATE = "duplicate"  # DATA below the partition's next offset: already read
    PING = "ping"
    SYNC = "sync"
    UNPLACEABLE = "unplaceable"


class ReadEnd(StrEnum):
    """Why one stream (or the whole read) stopped."""

    CAUGHT_UP = "caught up"  # caught_up_pings PINGs in a row after DATA
    MAX = "max messages"
    BYTES = "max bytes"
    DEADLINE = "deadline"
    NOTHING_CAME = "no DATA"  # keepalive_wait_s without DATA
    IDLE = "idle"  # idle_stop_s without DATA while SYNCs arrive
    EOF = "eof"
    FAILED = "failed"


# Only the fields that place a line; the body is skipped (and checked to be JSON) unparsed.
class _Envelope(msgspec.Struct):
    envelopeType: Any = None
    partition: Any = None
    offset: Any = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def is_index(value: object) -> TypeGuard[int]:
    """A JSON partition or offset: a non-negative int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class PipelineStats:
    """What one PipelineSource has done over all its reads (logs, tests, the hostile corpus)."""

    bytes_read: int = 0
    data_lines: int = 0
    duplicates_dropped: int = 0
    unplaceable: int = 0
    oversize_lines: int = 0
    reconnects: int = 0
    pings: int = 0
    syncs: int = 0
    requests: int = 0
    gaps: int = 0
    rewinds: int = 0


@dataclass
class ReadState:
    """What one ``read()`` call has seen so far."""

    max_messages: int
    # partition -> next offset to read (stored, then advanced by every accepted message)
    next_offsets: dict[int, int]
    accepted: int = 0
    messages: list[RawMessage] = field(default_factory=list)
    page_next: dict[int, str] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    bytes: int = 0
    last_error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)
    total_bytes: int = 0
    received_data: bool = False  # any DATA line in this read (also duplicates)
    pings_in_row: int = 0  # PINGs since the last DATA line
    keepalives: int = 0  # PINGs not yet reported in a page
    dropped: dict[str, int] = field(default_factory=dict)  # not yet reported in a page

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def take_page(self) -> Page | None:
        if not (self.messages or self.gaps or self.dropped or self.keepalives):
            return None
        page = Page(
            messages=self.messages, next_positions=self.page_next, bytes_read=self.bytes, gaps=self.gaps,
            dropped=self.dropped, keepalives=self.keepalives,
        )
        self.messages, self.page_next, self.gaps, self.bytes = [], {}, [], 0
        self.dropped, self.keepalives = {}, 0
        return page


class PipelineLines:
    """Placing lines (a mixin of PipelineSource: it shares the source's settings and stats)."""

    source_key: str
    endpoint: str
    reset: str
    partitions: int
    max_line_bytes: int
    stats: PipelineStats

    def _take(
        self, item: tuple[bytes | None, int], st: ReadState, assigned: Mapping[int, int | None], seen: set[int]
    ) -> LineKind:
        """Account for one line (None = over the line cap) and place it; returns its kind."""
        raw, size = item
        st.bytes += size
        st.total_bytes += size
        self.stats.bytes_read += size
        if raw is None:
            self.stats.oversize_lines += 1
            return self._unplaceable(st, b"", f"line larger than {self.max_line_bytes} bytes", size=size)
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return self._take_line(raw, st, assigned, seen)

    def _take_line(
        self, raw: bytes, st: ReadState, assigned: Mapping[int, int | None], seen: set[int]
    ) -> LineKind:
        if not raw.strip():
            return self._unplaceable(st, raw, "blank line")
        if raw.startswith(_BOM):
            return self._unplaceable(st, raw, "line starts with a byte order mark")
        try:
            env = _decode_envelope(raw)
            envelope_type, partition, offset = env.envelopeType, env.partition, env.offset
        except msgspec.ValidationError:
            return self._unplaceable(st, raw, "not a JSON object")
        except (msgspec.DecodeError, RecursionError):
            # Nested deeper than the parser follows, or not strict JSON further in (NaN, a broken
            # body): find the placing members with a scanner that neither recurses nor judges
            # values, so the message lands at its position and validation says what is wrong.
            members = object_members(raw)
            if members is None:
                return self._unplaceable(st, raw, "not JSON")
            envelope_type = scalar(raw, members["envelopeType"]) if "envelopeType" in members else None
            partition = index_at(raw, members["partition"]) if "partition" in members else None
            offset = index_at(raw, members["offset"]) if "offset" in members else None
        if envelope_type == "PING":
            self.stats.pings += 1
            st.keepalives += 1
            st.pings_in_row += 1
            return LineKind.PING
        if envelope_type == "SYNC":
            self.stats.syncs += 1  # triggerflow keeps its own offsets: never committed
            return LineKind.SYNC
        if not is_index(partition) or not is_index(offset) or offset > MAX_OFFSET:
            return self._unplaceable(st, raw, "no integer partition/offset")
        self.stats.data_lines += 1
        st.received_data = True
        st.pings_in_row = 0
        if partition not in seen:
            seen.add(partition)
            self._check_resume(st, partition, offset, assigned.get(partition))
        expected = st.next_offsets.get(partition)
        if expected is not None and offset < expected:
            self.stats.duplicates_dropped += 1  # at-least-once delivery: already read
            return LineKind.DUPLICATE
        try:
            payload: str | bytes = raw.decode("utf-8")
        except UnicodeDecodeError:
            payload = raw  # landing decodes with replacement and keeps these bytes
        st.messages.append(RawMessage(partition=partition, position=str(offset), payload=payload))
        st.next_offsets[partition] = offset + 1
        st.page_next[partition] = str(offset + 1)
        st.accepted += 1
        return LineKind.DATA

    def _check_resume(self, st: ReadState, partition: int, offset: int, asked: int | None) -> None:
        """First DATA line of a partition on this connection: did Pipeline start where asked?"""
        if asked is None:
            reason = f"first read of this partition (reset={self.reset})"
            st.gaps.append(Gap(partition=partition, expected=None, resumed=str(offset), reason=reason))
            self.stats.gaps += 1
        elif offset > asked:
            reason = (
                f"the source resumed past the requested offset: offsets {asked}..{offset - 1} expired "
                f"from retention or were skipped by reset={self.reset}"
            )
            st.gaps.append(Gap(partition=partition, expected=str(asked), resumed=str(offset), reason=reason))
            self.stats.gaps += 1
            log.warning("%s partition %d: asked for offset %d, resumed at %d", self.source_key, partition, asked, offset)
        elif offset < asked:
            # Redelivery below what we asked for: those lines are dropped as already landed.
            self.stats.rewinds += 1
            log.warning(
                "%s partition %d: asked for offset %d, the source restarted at %d; lines below %d are "
                "dropped as already landed (a topic recreated with reused offsets would lose them)",
                self.source_key, partition, asked, offset, asked,
            )

    def _unplaceable(self, st: ReadState, raw: bytes, why: str, *, size: int | None = None) -> LineKind:
        self.stats.unplaceable += 1
        st.drop(why)
        log.warning(
            "%s: unplaceable line (%s, %d bytes) from %s, not landed: %r",
            self.source_key, why, len(raw) if size is None else size, self.endpoint, raw[:80],
        )
        return LineKind.UNPLACEABLE

    # -- helpers -----------------------------------------------------------------------------------

    def _stored_offsets(self, positions: Mapping[int, str]) -> dict[int, int]:
        offsets: dict[int, int] = {}
        for partition, position in positions.items():
            p = int(partition)
            if not 0 <= p < self.partitions:
                log.warning(
                    "%s: stored position for partition %d ignored (topic has partitions 0..%d)",
                    self.source_key, p, self.partitions - 1,
                )
                continue
            text = str(position).strip()
            if not _OFFSET_RE.match(text):
                raise SourceError(
                    f"{self.source_key}: stored position {position!r} of partition {p} is not a "
                    "Pipeline offset (tf_source_position)"
                )
            offsets[p] = int(text)
        return offsets
