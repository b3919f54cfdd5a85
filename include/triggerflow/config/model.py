"""The routing config's model: what the rest of triggerflow reads once the file is loaded.

Frozen dataclasses, not the pydantic models of :mod:`.schema`: every stage, the renderer and the
status page read these on hot paths (``route_for`` runs once per event) and compare them in tests,
and several fields are derived (``identities`` from ``identity``, ``subjects`` from a per-locale
``subject`` mapping, ``link_policy`` from ``link_hosts`` + ``allow_http``), so the YAML's shape and
the model's shape differ on purpose. pydantic checks the file's shape; the loader builds these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from include.triggerflow.content import ProductSource
from include.triggerflow.links import NO_LINKS, LinkPolicy
from include.triggerflow.locales import find_zone
from include.triggerflow.states import Suppression
from include.triggerflow.timeutil import as_utc

if TYPE_CHECKING:
    from include.triggerflow.config.campaign import CampaignConfig
    from include.triggerflow.events import TriggerEvent

ROUTING_FILE_ENV = "TRIGGERFLOW_ROUTING_FILE"
CATCH_ALL = "*"
SUPPORTED_VERSION = 1

#: Profile columns an event may be matched on (the indexed identity columns of the profiles table),
#: plus ``visitor_id``: any ECID stored for the customer (profiles.ecid or profile_visitor_ids).
PROFILE_IDENTITY_COLUMNS = ("customer_id", "email", "shopper_id", "ecid", "declared_id", "visitor_id")
#: What reconciliation does when several profiles carry the event's identity.
MULTIPLE_PROFILE_POLICIES = ("first", "skip")
#: Profile columns ``profile_order`` may sort on to pick the first of several matching profiles.
PROFILE_ORDER_COLUMNS = ("customer_id", "updated_at", "email", "shopper_id", "declared_id")
#: Suppression checks a route applies (all by default), in the order reconciliation applies them.
SUPPRESSION_CHECKS: tuple[Suppression, ...] = tuple(Suppression)
DEFAULT_DEDUP_WINDOW_S = 24 * 3600
#: Trigger fields usable as identity (``TriggerEvent.field_value`` names).
EVENT_FIELDS = ("mcId", "messageId")

_DURATION_RE = re.compile(r"\s*(\d+)\s*(s|m|h|d)\s*")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RoutingConfigError(ValueError):
    """The routing file is missing or invalid. ``problems`` holds one line per problem found."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: tuple[str, ...] = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class IdentityRule:
    """How to find the customer for an event: a value from the event, matched to a profile column."""

    kind: Literal["dimension", "field"]
    key: str
    profile_column: str

    def extract(self, event: TriggerEvent) -> str | None:
        """The identity value carried by ``event``, or None when the event does not carry it."""
        if self.kind == "dimension":
            return event.dimension_first(self.key)
        return event.field_value(self.key)


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``max`` trigger emails per customer per ``per_s`` seconds, across all triggers."""

    max: int
    per_s: int


@dataclass(frozen=True)
class QuietHours:
    """A daily window, in the customer's time zone, in which nothing is sent; emails due inside it
    are deferred to its end. ``start > end`` spans midnight (21:00-08:00)."""

    start: time
    end: time
    #: used for profiles without a (valid) time zone
    default_timezone: str = "UTC"

    def window_end(self, at: datetime, tz_name: str | None) -> datetime | None:
        """The end of the quiet window ``at`` falls in (an aware datetime), or None when ``at`` is
        outside the window."""
        # Profile zones are untrusted: an unknown one falls back to the rule's default zone (checked
        # at load time), and UTC only if that zone vanished from this machine's tz database.
        zone = find_zone(tz_name) or find_zone(self.default_timezone) or UTC
        local = as_utc(at).astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        if self.start == self.end:
            return None
        if self.start < self.end:
            inside = self.start <= clock < self.end
            end_day = local.date()
        else:  # spans midnight
            inside = clock >= self.start or clock < self.end
            end_day = local.date() + timedelta(days=1) if clock >= self.start else local.date()
        if not inside:
            return None
        end_local = datetime.combine(end_day, self.end, tzinfo=zone)
        return end_local.astimezone(UTC)


@dataclass(frozen=True)
class RouteRules:
    """The eligibility rules of a route (reconciliation applies them in this order: staleness,
    suppression, deduplication, frequency cap, quiet hours)."""

    suppress: frozenset[Suppression] = frozenset(SUPPRESSION_CHECKS)
    #: the same trigger for the same customer inside this window sends once (None: only the exact
    #: same trigger message is deduplicated, by the ledger's idempotency key)
    dedup_window_s: int | None = DEFAULT_DEDUP_WINDOW_S
    #: a trigger older than this when reconciled is expired, not sent (None: never expires)
    validity_s: int | None = None
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True)
class TriggerRoute:
    """One configured trigger: which template to send, how to find the profile, and the rules."""

    name: str
    trigger_id: str
    template: str
    subject: str
    #: the first identity rule (give this or ``identities``)
    identity: IdentityRule | None = None
    #: identity rules tried in order until one finds a profile (ordered fallback)
    identities: tuple[IdentityRule, ...] = ()
    #: the Campaign ``jsConnector`` this route was made from (None: a route of the YAML list)
    handler: str | None = None
    #: locale tag -> subject template, for locale variants (the default is ``subject``)
    subjects: tuple[tuple[str, str], ...] = ()
    #: several profiles match: ``first`` takes the first by ``profile_order``; ``skip`` sends nothing
    multiple_profiles: str = "first"
    #: (profiles column, descending) that orders several matching profiles
    profile_order: tuple[str, bool] = ("customer_id", False)
    rules: RouteRules = RouteRules()
    #: where product names, prices, URLs and images come from: the catalogue by SKU (default), or
    #: the event itself (names capped, text only); see content.py
    products: ProductSource = ProductSource.CATALOG
    #: the hosts (``link_hosts``) and schemes (``allow_http``) its emails may link to and load
    #: images from; the default allows nothing, so an unconfigured route shows no event URL
    link_policy: LinkPolicy = NO_LINKS
    #: ``(name, url)`` of the route-configured links the templates use for buttons (``cart``,
    #: ``shop``); each passes ``link_policy``. Never built from event data.
    links: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.identities and self.identity is None:
            raise ValueError(f"route {self.name!r} needs at least one identity rule")
        if not self.identities:
            object.__setattr__(self, "identities", (self.identity,))
        elif self.identity is None:
            object.__setattr__(self, "identity", self.identities[0])

    @property
    def is_catch_all(self) -> bool:
        return self.trigger_id == CATCH_ALL


def parse_duration(value: object) -> int:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"90s"`` or a number of seconds -> seconds.

    :raises ValueError: with what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return value
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration such as 90s, 30m, 6h or 7d")


@dataclass(frozen=True)
class RoutingConfig:
    """The loaded routing file. Look-ups are by dict: ``route_for`` runs once per event."""

    path: Path
    routes: tuple[TriggerRoute, ...]
    #: the pasted ``NmsPipeline_Config`` option, when the file has a ``campaign`` section
    campaign: CampaignConfig | None = None
    _by_id: Mapping[str, TriggerRoute] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {route.trigger_id: route for route in self.routes})

    def route_for(self, trigger_id: object) -> TriggerRoute | None:
        """The route for a trigger id: the exact id first, then the ``"*"`` catch-all.

        Event data is untrusted, so a missing or non-string id gives None rather than an error.
        """
        if not isinstance(trigger_id, str):
            return None
        return self._by_id.get(trigger_id) or self._by_id.get(CATCH_ALL)

    @property
    def campaign_consumer(self) -> str | None:
        """The consumer of the Campaign option's ``triggers`` topic (the instance name), or None."""
        return self.campaign.consumer if self.campaign is not None else None

    def describe(self) -> dict[str, str]:
        """``{trigger_id: handler}``: the routes as Campaign's ``pipelined`` status page lists them.

        The handler is the route's Campaign ``jsConnector`` when it came from the pasted option, else
        its template. Flat on purpose (existing callers); :meth:`routing_map` gives the full
        ``routing`` object of the status document.
        """
        return {route.trigger_id: route.handler if route.handler is not None else route.template for route in self.routes}

    def routing_map(self) -> dict[str, dict[str, str]]:
        """The ``routing`` object of the status document, in Campaign's shape:
        ``{"triggers": {uid or "*": jsConnector or template}}``, plus ``"aliases": {...}`` when the
        pasted option has an ``aliases`` topic (accepted, not processed)."""
        shown: dict[str, dict[str, str]] = {"triggers": self.describe()}
        if self.campaign is not None and self.campaign.aliases is not None:
            shown["aliases"] = {alias.name: alias.js_connector for alias in self.campaign.aliases}
        return shown
