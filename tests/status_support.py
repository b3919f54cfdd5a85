"""A scripted journal source for the status tests (the ``TriggerSource`` protocol): landing from it
fills the store as a landing from the Adobe journal would, without the emulator process."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import pytest

from include.triggerflow.sources.base import Page, RawMessage
from tests.fixtures import envelope_json

HOST = "http://127.0.0.1:8181"
#: the registration path: its last segment is the consumer the status shows
JOURNAL_PATH = "/events/organizations/ORG/integrations/INT/triggerflow-reg"


class JournalPages:
    """A journal source that delivers ``count`` messages, ``page_limit`` per page (one pointer
    flush per page), keyed as the journal reader keys ``HOST + JOURNAL_PATH``."""

    source_key = f"journal:{JOURNAL_PATH}"
    endpoint = HOST + JOURNAL_PATH

    def __init__(self, count: int, page_limit: int) -> None:
        self.count, self.page_limit = count, page_limit

    def read(self, positions: Mapping[int, str], max_messages: int) -> Iterator[Page]:
        for first in range(0, self.count, self.page_limit):
            numbers = range(first, min(first + self.page_limit, self.count))
            messages = [RawMessage(0, f"pos-{n:04d}", envelope_json(offset=n)) for n in numbers]
            yield Page(messages, next_positions={0: messages[-1].position}, bytes_read=100 * len(messages))


def journal_connection(monkeypatch: pytest.MonkeyPatch, *, page_limit: int) -> None:
    """Connection ``adobe_triggers`` naming that journal (nothing listens there: nothing reads it)."""
    monkeypatch.setenv("AIRFLOW_CONN_ADOBE_TRIGGERS", json.dumps({
        "conn_type": "http", "host": HOST + JOURNAL_PATH, "extra": {"kind": "journal", "page_limit": page_limit},
    }))
