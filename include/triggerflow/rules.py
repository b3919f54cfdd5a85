"""The reconcile rules: which profile an event belongs to, and what is decided for it.

Pure functions over typed records; no store access. The reconcile stage
(:mod:`include.triggerflow.stages.reconcile`) loads what the rules need for a whole batch at once
(profiles per identity key, recent ledger rows, suppressions, unsubscribes: set-based, never one
query per event), calls these functions per event, and writes their records in bulk. Keeping the
rules here means a new rule is a function and a test over records, not a change to a stage that
talks to the store.

The order of the checks in :func:`decide` is the order the reconcile module documents (expiry,
suppression, no-products, deduplication, frequency cap, quiet hours); the earliest rule that
applies decides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include.triggerflow.addresses import InvalidAddressError, validate_address
from include.triggerflow.config import TriggerRoute
from include.triggerflow.content import EmailContent
from include.triggerflow.events import TriggerEvent, as_int
from include.triggerflow.states import Decision, Suppression, suppressed
from include.triggerflow.timeutil import as_utc

#: A profile row as read from the store (``profiles`` columns by name).
Profile = Mapping[str, Any]
#: column, keys -> {key: every profile carrying it}: the batch-wide look-up identity resolution calls
ProfileLookup = Callable[[str, list[str]], Mapping[str, Sequence[Profile]]]

#: values of ``profiles.opted_out`` that mean "opted out" (the column is a boolean; CSV loads and
#: SQLite may hand back 1 or text)
_TRUE = (True, 1, "1", "true", "True", "t")
#: epoch milliseconds reconcile can compute with: from 1970 (the batch's look-back window is
#: subtracted from the earliest) to the last millisecond a datetime holds (year 9999)
TS_MS_MIN, TS_MS_MAX = 0, 253_402_300_799_999


class EventProblem(ValueError):
    """An event reconcile cannot act on although it passed validation (defence in depth)."""


# -- records -------------------------------------------------------------------------------------------
# The per-event records are built once and never changed (a new decision is ``dataclasses.replace``),
# but not ``frozen``: a frozen dataclass sets each field through object.__setattr__, which doubles
# the cost of building one, and reconcile builds several per event of a 50,000-event batch.
@dataclass(slots=True)
class Candidate:
    """A valid, routed event waiting for its profile and its decision."""

    event_id: int
    batch_id: str
    trigger_id: str
    route: TriggerRoute
    #: the value of each of the route's identity rules in the event (None: the event lacks it)
    keys: tuple[str | None, ...]
    #: triggerTimestamp in epoch ms (None: the event has none)
    trigger_ts: int | None
    event: TriggerEvent


@dataclass(slots=True)
class ProfileMatch:
    """The profile an identity rule found for a candidate."""

    profile: Profile
    customer_key: str  # the event's value the profile was found by
    rule: str  # "eVar01->shopper_id": the identity rule that found it
    matches: int  # how many profiles carried the key (the first by profile_order was taken)

    @property
    def customer_id(self) -> str:
        return str(self.profile["customer_id"])


@dataclass(frozen=True, slots=True)
class NoMatch:
    """No identity rule of the route found a profile: what each rule tried."""

    tried: tuple[str, ...]

    @property
    def detail(self) -> str:
        return "; ".join(self.tried) or "no identity rule applies"


@dataclass(slots=True)
class RecentSend:
    """A ledger row counting as an email to a customer (dedup windows, frequency caps)."""

    route: str
    trigger_ts: int | None
    event_id: int
    batch_id: str
    created_at: datetime


@dataclass(slots=True)
class Facts:
    """What the rules know of the batch's customers, loaded once for the whole batch.

    ``recent`` grows while a batch is decided: an email queued for an earlier event counts
    against the dedup window and frequency cap of the customer's later events."""

    now: datetime
    #: {address or "@domain": source} of active suppression entries (tf_suppression)
    suppressions: Mapping[str, str]
    #: customers who used an unsubscribe link (tf_unsubscribe)
    unsubscribed: set[str]
    #: customer_id -> ledger rows that count as an email to them
    recent: dict[str, list[RecentSend]]


@dataclass(slots=True)
class Decided:
    """One ``tf_decision`` row: every valid event gets exactly one."""

    event_id: int
    batch_id: str
    decision: Decision
    detail: str | None = None
    trigger_id: str | None = None
    route: str | None = None
    customer_key: str | None = None
    profile_id: str | None = None
    #: a deferred email is not sent before this (the end of the customer's quiet hours)
    not_before: datetime | None = None

    @property
    def queued(self) -> bool:
        """Whether this decision owns a ledger row."""
        return self.decision in QUEUED_DECISIONS


#: decisions that own a ledger row
QUEUED_DECISIONS = (Decision.MATCHED, Decision.DEFERRED)


def checked_ts(value: Any) -> int | None:
    """triggerTimestamp as epoch ms, or None when the event has none; a value no datetime or
    BIGINT can hold raises :class:`EventProblem` for this event only."""
    ts = as_int(value)
    if ts is not None and not TS_MS_MIN <= ts <= TS_MS_MAX:
        raise EventProblem("triggerTimestamp out of range")
    return ts


def idempotency_key(trigger_id: str, trigger_ts: int, customer_id: str, template: str) -> str:
    """Adobe advises triggerId + triggerTimestamp as the duplicate key of a trigger; adding the
    customer and the template makes it the key of one email."""
    raw = json.dumps([trigger_id, trigger_ts, customer_id, template], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


# -- identity ----------------------------------------------------------------------------------------
def _sortable(value: Any) -> Any:
    return as_utc(value).timestamp() if isinstance(value, datetime) else value


def choose(route: TriggerRoute, candidates: Sequence[Profile]) -> list[Profile]:
    """The candidates in the route's ``profile_order``; ties and profiles without a value fall
    back to customer_id order, so the choice is the same on every replay."""
    column, descending = route.profile_order
    present = sorted((p for p in candidates if p.get(column) is not None), key=lambda p: p["customer_id"])
    present.sort(key=lambda p: _sortable(p[column]), reverse=descending)  # stable sort keeps ties in order
    absent = sorted((p for p in candidates if p.get(column) is None), key=lambda p: p["customer_id"])
    return present + absent


def resolve_identities(
    candidates: Iterable[Candidate], lookup: ProfileLookup
) -> dict[int, ProfileMatch | NoMatch]:
    """event_id -> the profile each candidate belongs to, or what was tried. The route's identity
    rules are tried in order: a rule whose value the event lacks, or that finds no profile, passes
    the event to the next rule. ``lookup`` is called once per profile column per rule level."""
    out: dict[int, ProfileMatch | NoMatch] = {}
    tried: dict[int, list[str]] = {}
    pending = list(candidates)
    level = 0
    while pending:
        wanted: dict[str, set[str]] = {}
        for item in pending:
            rules = item.route.identities
            if level < len(rules) and (key := item.keys[level]) is not None:
                wanted.setdefault(rules[level].profile_column, set()).add(key)
        found = {column: lookup(column, sorted(keys)) for column, keys in wanted.items()}
        still: list[Candidate] = []
        for item in pending:
            rules = item.route.identities
            notes = tried.setdefault(item.event_id, [])
            if level < len(rules):
                rule = rules[level]
                key = item.keys[level]
                profiles = found.get(rule.profile_column, {}).get(key, []) if key is not None else []
                if key is None:
                    notes.append(f"{rule.key} not in the event")
                elif not profiles:
                    notes.append(f"no profile with {rule.profile_column}={key!r}")
                else:
                    ordered = choose(item.route, profiles)
                    out[item.event_id] = ProfileMatch(
                        profile=ordered[0], customer_key=key, rule=f"{rule.key}->{rule.profile_column}",
                        matches=len(ordered),
                    )
                    continue
                if level + 1 < len(rules):
                    still.append(item)
                    continue
            out[item.event_id] = NoMatch(tuple(notes))
        pending = still
        level += 1
    return out


# -- decisions ---------------------------------------------------------------------------------------
def fmt_s(seconds: int) -> str:
    """86400 -> "24h", 7 days -> "7d", 90 -> "90s": as people write windows in the routing file."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size and not (unit == "d" and seconds < 2 * 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# The checks as plain text for the set look-ups done per event (hashing a str is cheaper than an enum member).
_OPT_OUT, _INVALID_ADDRESS = Suppression.OPT_OUT.value, Suppression.INVALID_ADDRESS.value


def suppression_reason(
    route: TriggerRoute, profile: Profile, suppressions: Mapping[str, str], unsubscribed: set[str]
) -> tuple[Decision, str] | None:
    """The suppression decision and its detail for a profile, or None: the route's checks, in
    the order of :class:`states.Suppression`."""
    checks = route.rules.suppress
    if _OPT_OUT in checks and profile.get("opted_out") in _TRUE:
        return suppressed(Suppression.OPT_OUT), "profile opted out"
    if _OPT_OUT in checks and str(profile["customer_id"]) in unsubscribed:
        return suppressed(Suppression.OPT_OUT), "customer used an unsubscribe link (tf_unsubscribe)"
    raw = profile.get("email")
    if _INVALID_ADDRESS in checks:
        try:
            validate_address(raw if isinstance(raw, str) else "")
        except InvalidAddressError as exc:
            return suppressed(Suppression.INVALID_ADDRESS), str(exc)
    address = str(raw or "").strip().lower()
    domain = "@" + address.rsplit("@", 1)[1] if "@" in address else None
    for entry in (address, domain):
        source = suppressions.get(entry) if entry else None
        if source is None or entry is None:
            continue
        kind = Suppression.HARD_BOUNCE if source == Suppression.HARD_BOUNCE else Suppression.BLOCK_LIST
        if kind in checks:
            what = f"domain {entry[1:]}" if entry.startswith("@") else entry
            return suppressed(kind), f"{what} is on the suppression list ({source})"
    return None


def _duplicate_of(candidate: Candidate, history: Sequence[RecentSend], window_s: int) -> str | None:
    """The detail of a ``duplicate`` decision when an email of the same route to the customer was
    queued within the window around this trigger, else None."""
    trigger_ts = candidate.trigger_ts
    if trigger_ts is None:
        return None
    window_ms = window_s * 1000
    route = candidate.route.name
    for prior in history:
        if (prior.route == route and prior.event_id != candidate.event_id
                and prior.trigger_ts is not None and abs(int(prior.trigger_ts) - trigger_ts) < window_ms):
            if int(prior.trigger_ts) == trigger_ts:
                return f"same trigger message already queued for event {prior.event_id} of batch {prior.batch_id}"
            return (f"{route} already queued for this customer within {fmt_s(window_s)} "
                    f"(event {prior.event_id} of batch {prior.batch_id})")
    return None


def decide(
    candidate: Candidate, match: ProfileMatch, facts: Facts, content: EmailContent | None = None
) -> Decided:
    """The decision for one event whose profile was found (the reconcile module lists the order).

    ``content`` is what the email may show (:func:`content.email_content`): an event that named
    products of which none can be shown is decided ``no-products`` once the customer is known to
    be mailable; what was left out is added to the detail of a queued decision."""
    route = candidate.route
    profile = match.profile
    customer_id = match.customer_id
    now = facts.now

    def decided(decision: Decision, detail: str, not_before: datetime | None = None) -> Decided:
        return Decided(
            event_id=candidate.event_id, batch_id=candidate.batch_id, decision=decision, detail=detail,
            trigger_id=candidate.trigger_id, route=route.name, customer_key=match.customer_key,
            profile_id=customer_id, not_before=not_before,
        )

    via = f"matched by {match.rule}"
    if match.matches > 1:
        column, descending = route.profile_order
        if route.multiple_profiles == "skip":
            return decided(Decision.AMBIGUOUS, f"{match.matches} profiles matched by {match.rule}; multiple_profiles: skip")
        via += f"; {match.matches} profiles matched, took the first by {column} {'desc' if descending else 'asc'}"
    rules = route.rules
    trigger_ts = candidate.trigger_ts

    if rules.validity_s is not None and trigger_ts is not None:
        fired = datetime.fromtimestamp(trigger_ts / 1000, tz=UTC)
        age = (now - fired).total_seconds()
        if age > rules.validity_s:
            return decided(
                Decision.EXPIRED,
                f"triggered at {fired.isoformat()}, {age / 60:.0f} min before reconciliation; "
                f"validity {fmt_s(rules.validity_s)}",
            )

    reason = suppression_reason(route, profile, facts.suppressions, facts.unsubscribed)
    if reason is not None:
        return decided(*reason)

    if content is not None and content.no_products:
        return decided(Decision.NO_PRODUCTS, content.no_products_detail())
    left_out = content.note() if content is not None else ""

    history = facts.recent.get(customer_id, [])
    if rules.dedup_window_s:
        duplicate = _duplicate_of(candidate, history, rules.dedup_window_s)
        if duplicate is not None:
            return decided(Decision.DUPLICATE, duplicate)

    cap = rules.frequency_cap
    if cap is not None:
        start = now - timedelta(seconds=cap.per_s)
        count = sum(1 for prior in history if prior.created_at >= start)
        if count >= cap.max:
            return decided(
                Decision.CAPPED,
                f"{count} trigger emails queued for this customer in the last {fmt_s(cap.per_s)}; "
                f"cap {cap.max} per {fmt_s(cap.per_s)}",
            )

    if rules.quiet_hours is not None:
        quiet = rules.quiet_hours
        until = quiet.window_end(now, profile.get("timezone"))
        if until is not None:
            zone = profile.get("timezone") or quiet.default_timezone
            detail = f"quiet hours {quiet.start:%H:%M}-{quiet.end:%H:%M} {zone}; scheduled for {until.isoformat()}"
            return decided(Decision.DEFERRED, detail + (f"; {left_out}" if left_out else ""), until)

    return decided(Decision.MATCHED, f"{via}; {left_out}" if left_out else via)
