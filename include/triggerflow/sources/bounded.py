"""Bounded reads from Adobe: a size cap and an overall deadline for every answer, a linear line
splitter with a line cap for the Pipeline stream, and a JSON scanner that finds members without
recursion (for messages nested deeper than a JSON parser will follow).

Socket timeouts (``requests``' ``timeout``) bound each *read*; a server trickling one byte per
timeout would keep a request open forever. Here the deadline is checked after every chunk, so a
request ends at most one socket read timeout after its deadline, and the size cap is checked
before the bytes are kept, so memory stays bounded whatever the server sends.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

CHUNK_BYTES = 64 * 1024
HEAD_BYTES = 64 * 1024


class BoundedReadError(RuntimeError):
    """An answer broke one of its bounds; callers turn it into their own error with a hint."""


class AnswerTooLarge(BoundedReadError):
    def __init__(self, what: str, cap: int, head: bytes = b"") -> None:
        super().__init__(f"{what} is larger than {cap} bytes")
        self.cap = cap
        self.head = head  # the first bytes of the answer (at most HEAD_BYTES), for a position


class DeadlinePassed(BoundedReadError):
    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} took longer than its {seconds:g} s deadline")
        self.seconds = seconds


def read_body(resp: requests.Response, *, what: str, max_bytes: int, deadline_s: float, started: float) -> bytes:
    """The body of a ``stream=True`` response, at most ``max_bytes``, done by ``started +
    deadline_s`` (monotonic); closes the response in every case."""
    try:
        length = resp.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > max_bytes:
            raise AnswerTooLarge(what, max_bytes, resp.raw.read1(min(HEAD_BYTES, max_bytes)))  # not worth reading
        parts: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() - started > deadline_s:
                raise DeadlinePassed(what, deadline_s)
            # read1: returns what one socket read brought, so the deadline is checked often
            chunk = resp.raw.read1(CHUNK_BYTES)
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > max_bytes:
                raise AnswerTooLarge(what, max_bytes, b"".join(parts)[:HEAD_BYTES] or chunk[:HEAD_BYTES])
            parts.append(chunk)
    finally:
        resp.close()


@dataclass
class LineSplitter:
    """Splits a byte stream into lines in linear time, never holding more than ``max_line``
    bytes of one line: a longer line is discarded while its end is still looked for, and
    reported as ``None`` with its full size. (``requests.iter_lines`` re-joins and re-splits the
    pending line on every chunk: quadratic in the length of a line without a newline.)"""

    max_line: int
    _parts: list[bytes] = field(default_factory=list)
    _pending: int = 0
    _oversize: bool = False

    def feed(self, chunk: bytes) -> Iterator[tuple[bytes | None, int]]:
        """(line without its newline, or None when over the cap; bytes it took with the newline)."""
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            size = self._pending + (end - start)
            if self._oversize or size > self.max_line:
                yield None, size + 1
            else:
                piece = chunk[start:end]
                yield (b"".join([*self._parts, piece]) if self._parts else piece), size + 1
            self._parts, self._pending, self._oversize = [], 0, False
            start = end + 1
        rest = len(chunk) - start
        if rest:
            self._pending += rest
            if self._oversize or self._pending > self.max_line:
                self._oversize, self._parts = True, []
            else:
                self._parts.append(chunk[start:])

    def finish(self) -> tuple[bytes | None, int] | None:
        """The last line when the stream ended cleanly without a final newline."""
        if not self._pending:
            return None
        line = None if self._oversize else b"".join(self._parts)
        size = self._pending
        self._parts, self._pending, self._oversize = [], 0, False
        return line, size

    @property
    def pending(self) -> int:
        """Bytes of the unfinished line held or skipped so far."""
        return self._pending


# -- JSON without recursion ---------------------------------------------------------------------------
# Strings (with escapes), structural characters; scalars are what lies between them.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]:,"]', re.DOTALL)
_INDEX = re.compile(rb"^\d{1,18}$")


def _container_spans(data: bytes, start: int, end: int, opener: bytes) -> list[tuple[bytes | None, int, int]] | None:
    """The depth-1 members of the object (``{``) or elements of the array (``[``) in
    ``data[start:end]``: (raw key token or None, value start, value end). None if malformed.
    Iterative: any nesting depth costs only the tokens it has."""
    i = start
    while i < end and data[i : i + 1].isspace():
        i += 1
    if data[i : i + 1] != opener:
        return None
    closer = b"}" if opener == b"{" else b"]"
    out: list[tuple[bytes | None, int, int]] = []
    depth = 0
    key: bytes | None = None
    value_start = -1
    for match in _TOKEN.finditer(data, i, end):
        tok = match.group()
        if tok == b'"':
            return None  # an unterminated string
        if depth == 1:
            if opener == b"{" and value_start < 0:
                if tok.startswith(b'"') and len(tok) > 1 and key is None:
                    key = tok
                    continue
                if tok == b":" and key is not None:
                    value_start = match.end()
                    continue
            if tok in (b",", closer):
                if value_start >= 0:
                    out.append((key, value_start, match.start()))
                key, value_start = None, -1
                if tok == closer:
                    return out
                if opener == b"[":
                    value_start = match.end()
                continue
        if tok in (b"{", b"["):
            depth += 1
            if depth == 1 and opener == b"[":
                value_start = match.end()
        elif tok in (b"}", b"]"):
            depth -= 1
            if depth < 0:
                return None
    return None


def object_members(data: bytes, start: int = 0, end: int | None = None) -> dict[str, tuple[int, int]] | None:
    """Byte spans of the members of the JSON object in ``data[start:end]``, by key (the last of
    duplicate keys wins, as with ``json.loads``); None if it is not a well-formed object."""
    spans = _container_spans(data, start, len(data) if end is None else end, b"{")
    if spans is None:
        return None
    members: dict[str, tuple[int, int]] = {}
    for key, s, e in spans:
        try:
            name = json.loads(key) if key is not None else None
        except ValueError:
            return None
        if isinstance(name, str):
            members[name] = (s, e)
    return members


def array_elements(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int]] | None:
    """Byte spans of the elements of the JSON array in ``data[start:end]``; None if malformed."""
    spans = _container_spans(data, start, len(data) if end is None else end, b"[")
    if spans is None:
        return None
    return [(s, e) for _, s, e in spans if data[s:e].strip()]


def scalar(data: bytes, span: tuple[int, int]) -> Any:
    """The JSON scalar (string, number, true/false/null) at ``span``; None for anything else."""
    text = data[span[0] : span[1]].strip()
    if not text or text[:1] in (b"{", b"["):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def index_at(data: bytes, span: tuple[int, int]) -> int | None:
    """A non-negative integer of at most 18 digits at ``span`` (a partition or an offset)."""
    text = data[span[0] : span[1]].strip()
    return int(text) if _INDEX.match(text) else None


def strip_span(data: bytes, span: tuple[int, int]) -> bytes:
    return data[span[0] : span[1]].strip()
