"""What the status tests share, unit and integration: a clock, batch refs, a greylisting SMTP
session, the document as of now; and a scripted journal source (the ``TriggerSource`` protocol):
landing from it fills the store as a landing from the Adobe journal would, without the emulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.messages import CART_ABANDONMENT_TRIGGER_ID, trigger_message
from include.triggerflow.hooks.smtp import SmtpOutcome, TriggerMailHook
from include.triggerflow.smtp_replies import SmtpStage, read_reply
from include.triggerflow.sources.base import Page, RawMessage
from include.triggerflow.stages.land import BatchRef
from include.triggerflow.status import build_status
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


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = {"flush-pointer-msg-count": 2, "retry-period-ms": 10_000}
UNROUTED = "00000000-0000-0000-0000-000000000000"


def cart(**kwargs: Any) -> dict[str, Any]:
    return trigger_message(trigger_id=CART_ABANDONMENT_TRIGGER_ID, **kwargs)


def ref(minute: int) -> BatchRef:
    start = T0 + timedelta(minutes=minute)
    return BatchRef("trigger_emails", f"scheduled__{minute}", "scheduled", start, start + timedelta(minutes=1))


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_hour(value: datetime) -> str:
    return utc(value).replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class GreylistingSession:
    """The real SMTP session to the sink, except that the given recipients get a 4xx reply, which
    the sink (it accepts everything) cannot give."""

    def __init__(self, real: TriggerMailHook, deferred: set[str]) -> None:
        self.real, self.deferred = real, deferred
        self.sender, self.from_name, self.message_id_domain = real.sender, real.from_name, real.message_id_domain

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        if recipient in self.deferred:
            return read_reply(SmtpStage.RCPT, 451, "4.7.1 greylisted, try later")
        return self.real.send_prepared(recipient, message)


def greylisting(*recipients: str) -> Callable[[], Any]:
    @contextmanager
    def open_session():
        with TriggerMailHook() as real:
            yield GreylistingSession(real, set(recipients))

    return open_session


def status_now(kit, routing, **kwargs: Any) -> tuple[dict[str, Any], datetime]:
    now = datetime.now(UTC)
    kwargs.setdefault("consumer", "customer_dev")
    kwargs.setdefault("settings", SETTINGS)
    return build_status(kit.engine, routing, now=now, **kwargs), now
