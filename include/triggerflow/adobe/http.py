"""The one retry rule for Adobe's HTTP APIs (the I/O Events journal, Pipeline discovery and stream).

Every reader sends its requests through :meth:`AdobeRetry.call`, which does three things the same
way for all of them:

* **401 once.** A 401 means the IMS token expired or was revoked: the try is repeated at once with
  a freshly minted token (``attempt(True)``); a second 401 in a row is an error (the credential has
  no access), never a loop. The refresh does not count as a failed try.
* **Retry-After.** 429 and 5xx answers, transport errors and answers cut or too slow are retried
  by tenacity: the wait is the answer's ``Retry-After`` (seconds or an HTTP-date, parsed by
  :func:`parse_retry_after`), else exponential back-off (0.5 s, 1 s, 2 s...), at most
  ``max_wait_s`` and never past the reader's deadline.
* **Consecutive failures.** ``max_tries`` failures in a row give up with the reader's own message
  (``give_up``). The count lives on the :class:`AdobeRetry` object, not in one call, because the
  Pipeline reader also counts streams that broke without progress (:meth:`AdobeRetry.failed`) and
  starts again from zero after progress (:meth:`AdobeRetry.reset`).

The sessions stay with the readers: the journal and the Pipeline stream are read with
``stream=True`` under a byte cap and a deadline (sources/bounded.py), which the http provider's
``HttpHook.run`` does not offer (it reads whole answers, and it would send the connection's
login/password as Basic auth and unknown extras as headers — reference/airflow-3.3-notes.md
finding 8). The IMS connection's credentials are posted only to the token endpoint by AdobeImsHook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")

#: statuses worth another try: throttled, or the service is having a bad moment
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_MAX_TRIES = 4
DEFAULT_MAX_WAIT_S = 30.0
BACKOFF_BASE_S = 0.5


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110
    §10.2.3); None when absent or unreadable (the caller backs off instead). Never negative."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT; a date without a zone is read as such
            from datetime import UTC

            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # noqa: PLR0124 - NaN is the one value unequal to itself
        return None
    return max(0.0, seconds)


def backoff_s(failures: int, base_s: float = BACKOFF_BASE_S) -> float:
    """Exponential back-off after ``failures`` consecutive failures (1 -> base_s)."""
    return base_s * 2 ** max(0, failures - 1)


class RetryableFailure(Exception):
    """One try failed in a way worth another: a transport error, an answer cut or too slow, or a
    retryable status (``retry_after`` is then its header)."""

    def __init__(
        self, what: str, *, kind: str = "transport", retry_after: str | None = None,
        status: int | None = None, cause: BaseException | None = None,
    ) -> None:
        super().__init__(what)
        self.what = what
        self.kind = kind  # "transport", "deadline", "status" or "stream": lets give_up word it
        self.retry_after = retry_after
        self.status = status
        self.cause = cause


class _DeadlineReached(Exception):
    def __init__(self, failure: RetryableFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class Unauthorized(Exception):
    """The answer was 401: the token expired or was revoked."""


@dataclass
class RetryPolicy:
    max_tries: int = DEFAULT_MAX_TRIES
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    base_wait_s: float = BACKOFF_BASE_S


GiveUp = Callable[[RetryableFailure, int], Exception]


class _RetryAfterOrBackoff(tenacity.wait.wait_base):
    """tenacity wait strategy: the failure's Retry-After, else exponential back-off on the
    consecutive failure count, capped and clipped to the deadline."""

    def __init__(self, owner: AdobeRetry) -> None:
        self.owner = owner

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = failure.retry_after if isinstance(failure, RetryableFailure) else None
        return self.owner.wait_s(retry_after)


class AdobeRetry:
    """The consecutive failures of one reader and what comes next: another try after a wait, or
    giving up. ``deadline_at`` (monotonic) bounds the waits and stops retrying once passed;
    ``sleep`` is injectable so tests assert on the waits asked for, not on wall time."""

    def __init__(
        self, policy: RetryPolicy, *, name: str, deadline_at: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self.name = name
        self.deadline_at = deadline_at
        self.sleep = sleep
        self.failures = 0
        self.last_failure: RetryableFailure | None = None
        #: every wait asked for, in order (what tests and logs check instead of elapsed time)
        self.waits: list[float] = []

    def reset(self) -> None:
        """Progress was made: the next failure is the first again."""
        self.failures = 0

    def deadline_passed(self) -> bool:
        return self.deadline_at is not None and time.monotonic() >= self.deadline_at

    def wait_s(self, retry_after: str | None) -> float:
        parsed = parse_retry_after(retry_after)
        wait = backoff_s(self.failures, self.policy.base_wait_s) if parsed is None else parsed
        wait = min(wait, self.policy.max_wait_s)
        if self.deadline_at is not None:
            # never wait past the deadline; the next check then ends the read with this error
            wait = min(wait, max(0.0, self.deadline_at - time.monotonic()))
        return wait

    def _sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.sleep(seconds)

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        failure = retry_state.outcome.exception() if retry_state.outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        log.warning(
            "%s: %s; retrying in %.2f s (try %d of %d)",
            self.name, failure, wait, self.failures, self.policy.max_tries,
        )

    def _stop(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.failures >= self.policy.max_tries or self.deadline_passed()

    def failed(self, failure: RetryableFailure, give_up: GiveUp) -> None:
        """A failure outside :meth:`call` (a stream that broke without progress): wait, or give up."""
        self.failures += 1
        self.last_failure = failure
        if self.failures >= self.policy.max_tries:
            raise give_up(failure, self.failures)
        wait = self.wait_s(failure.retry_after)
        log.warning(
            "%s: %s; retrying in %.2f s (try %d of %d)", self.name, failure, wait, self.failures, self.policy.max_tries
        )
        self._sleep(wait)

    def call(self, attempt: Callable[[bool], T], *, give_up: GiveUp, refused_twice: Callable[[], Exception]) -> T:
        """``attempt(refresh)`` until it returns: it raises :class:`Unauthorized` on a 401 and
        :class:`RetryableFailure` on what is worth another try; anything else propagates."""

        def one_try() -> T:
            if self.failures and self.last_failure is not None and self.deadline_passed():
                # the wait before this try ran into the deadline: no request after it
                raise _DeadlineReached(self.last_failure)
            try:
                try:
                    return attempt(False)
                except Unauthorized:
                    pass
                try:
                    return attempt(True)  # the token expired or was revoked: mint a new one once
                except Unauthorized:
                    raise refused_twice() from None
            except RetryableFailure as failure:
                self.failures += 1
                self.last_failure = failure
                raise

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableFailure),
            stop=self._stop,
            wait=_RetryAfterOrBackoff(self),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(one_try)
        except RetryableFailure as failure:
            raise give_up(failure, self.failures) from None
        except _DeadlineReached as reached:
            raise give_up(reached.failure, self.failures) from None
