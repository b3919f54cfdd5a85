"""The one Adobe retry rule (include/triggerflow/adobe/http.py), driven by scripted attempts: no
server, no sleeping (the waits are recorded), so every rule is checked exactly."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from include.triggerflow.adobe.http import (
    AdobeRetry,
    RetryableFailure,
    RetryPolicy,
    Unauthorized,
    backoff_s,
    parse_retry_after,
)


class Refused(Exception):
    pass


class GaveUp(Exception):
    def __init__(self, failure: RetryableFailure, tries: int) -> None:
        super().__init__(f"{failure.what}; gave up after {tries}")
        self.failure = failure
        self.tries = tries


def scripted(*outcomes: object) -> tuple[Callable[[bool], str], list[bool]]:
    """An attempt that raises or returns each outcome in turn, recording the refresh flags."""
    calls: list[bool] = []
    queue = list(outcomes)

    def attempt(refresh: bool) -> str:
        calls.append(refresh)
        outcome = queue.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)

    return attempt, calls


def retry(max_tries: int = 4, max_wait_s: float = 30.0, deadline_at: float | None = None) -> AdobeRetry:
    return AdobeRetry(
        RetryPolicy(max_tries=max_tries, max_wait_s=max_wait_s), name="test", deadline_at=deadline_at,
        sleep=lambda seconds: None,
    )


def call(r: AdobeRetry, attempt: Callable[[bool], str]) -> str:
    return r.call(attempt, give_up=GaveUp, refused_twice=lambda: Refused("401 twice"))


# -- Retry-After --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("0", 0.0), (" 1.5 ", 1.5), ("-4", 0.0), (None, None), ("soon", None), ("", None), ("nan", None)],
)
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_http_date_counts_from_now() -> None:
    now = datetime(2026, 12, 6, 4, 0, 0, tzinfo=UTC).timestamp()
    in_90_s = format_datetime(datetime(2026, 12, 6, 4, 1, 30, tzinfo=UTC), usegmt=True)
    assert in_90_s == "Sun, 06 Dec 2026 04:01:30 GMT"
    assert parse_retry_after(in_90_s, now=now) == pytest.approx(90.0)
    assert parse_retry_after("Sun, 06 Dec 2026 03:59:00 GMT", now=now) == 0.0  # already past


def test_backoff_doubles_from_half_a_second() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


# -- 401 ----------------------------------------------------------------------------------------------
def test_401_refreshes_the_token_once_and_is_not_a_failed_try() -> None:
    r = retry()
    attempt, calls = scripted(Unauthorized(), "page")
    assert call(r, attempt) == "page"
    assert calls == [False, True]
    assert (r.failures, r.waits) == (0, [])


def test_a_second_401_in_a_row_is_an_error_not_a_loop() -> None:
    attempt, calls = scripted(Unauthorized(), Unauthorized(), "never")
    with pytest.raises(Refused):
        call(retry(), attempt)
    assert calls == [False, True]


def test_a_401_after_a_retried_failure_gets_its_own_refresh() -> None:
    attempt, calls = scripted(Unauthorized(), RetryableFailure("503", retry_after="0"), Unauthorized(), "page")
    assert call(retry(), attempt) == "page"
    assert calls == [False, True, False, True]


# -- retries ------------------------------------------------------------------------------------------
def test_retry_after_sets_the_wait_else_exponential_backoff() -> None:
    r = retry()
    attempt, _ = scripted(
        RetryableFailure("503", retry_after="0.3"), RetryableFailure("cut"), RetryableFailure("cut"), "page"
    )
    assert call(r, attempt) == "page"
    assert r.waits == [pytest.approx(0.3), 1.0, 2.0]  # failures 2 and 3 back off 0.5 * 2**(n-1)


def test_waits_are_capped_at_max_wait() -> None:
    r = retry(max_wait_s=0.2)
    attempt, _ = scripted(RetryableFailure("503", retry_after="60"), "page")
    call(r, attempt)
    assert r.waits == [0.2]


def test_max_tries_consecutive_failures_give_up_with_the_count() -> None:
    r = retry(max_tries=3)
    attempt, calls = scripted(*(RetryableFailure(f"503 #{n}") for n in range(5)))
    with pytest.raises(GaveUp) as info:
        call(r, attempt)
    assert info.value.tries == 3 and info.value.failure.what == "503 #2"
    assert len(calls) == 3 and len(r.waits) == 2


def test_other_errors_are_not_retried() -> None:
    attempt, calls = scripted(ValueError("400"), "never")
    with pytest.raises(ValueError, match="400"):
        call(retry(), attempt)
    assert calls == [False]


def test_failures_outside_a_call_count_until_progress_resets_them() -> None:
    r = retry(max_tries=3)
    r.failed(RetryableFailure("stream broke"), GaveUp)
    attempt, _ = scripted(RetryableFailure("503"), "stream")
    call(r, attempt)
    assert r.failures == 2
    with pytest.raises(GaveUp) as info:
        r.failed(RetryableFailure("stream broke again"), GaveUp)
    assert info.value.tries == 3
    r.reset()
    r.failed(RetryableFailure("after progress"), GaveUp)
    assert r.failures == 1


def test_waits_never_pass_the_deadline_and_no_request_follows_it() -> None:
    r = retry(deadline_at=time.monotonic() + 0.05)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)  # let the deadline pass for real (at most 0.05 s)

    r.sleep = sleep
    attempt, calls = scripted(RetryableFailure("503", retry_after="30"), "too late")
    with pytest.raises(GaveUp):
        call(r, attempt)
    assert slept and slept[0] <= 0.05
    assert calls == [False]  # the wait ran into the deadline: no second request
