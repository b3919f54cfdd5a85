"""The routing config: which triggers triggerflow processes, and how (Campaign's ``NmsPipeline_Config``).

Campaign keeps its routing in the ``NmsPipeline_Config`` option, a JSON map of trigger UID (or ``"*"``)
to a JS connector (reference/adobe-triggers.md §3.1). triggerflow keeps the same idea in a YAML file
edited by data engineers, and routes each trigger to an email template plus the rule that finds the
customer profile for the event::

    version: 1
    triggers:
      - name: cart_abandonment
        trigger_id: 5c2c6a3e-2b8f-4d6e-9a51-7f0d3c9b1a01      # or "*" (catch-all)
        template: cart_abandonment                          # folder under include/templates/
        subject: "{{ profile.first_name }}, you left something in your cart"
        identity:
          dimension: eVar01                                 # or `field: mcId`
          profile_column: shopper_id

The file is validated completely at load time: a typo must fail the DAG import or the CLI with a
message that names the file, the entry and the problem, not fail silently at send time. All problems
found are reported together so a data engineer can fix the file in one pass. As in Campaign, a trigger
that is not configured is not an error: :meth:`RoutingConfig.route_for` returns ``None`` and the caller
counts the event as ignored.

**Pasting Campaign's option.** An administrator moving from Campaign can paste the value of their
``NmsPipeline_Config`` option (reference/adobe-triggers.md §3.1) instead of, or beside, the
``triggers`` list, and say what each Campaign JS connector becomes in triggerflow::

    version: 1
    campaign:
      config: nms_pipeline_config.json      # the option value, in a file next to this one, OR
      # config_json: '{"topics": [...]}'    # the option value inline
      handlers:                             # jsConnector -> what triggerflow does instead
        "cus:triggers.js":
          template: cart_abandonment
          subject: "{{ profile.first_name }}, you left something in your cart"
          identity: {dimension: eVar01, profile_column: shopper_id}
    triggers: [...]                         # optional when `campaign` is given

The option is parsed as strict JSON, as Campaign does (Adobe's documented sample has comments and a
trailing comma: both are rejected with the line, the column and how to fix it). Each trigger of the
``triggers`` topic becomes a route named ``campaign_<first 8 characters of the UID>`` (``campaign_all``
for ``"*"``); an ``aliases`` topic is accepted and only shown in the status document. A trigger id routed
both by the YAML list and by the option is an error. :func:`load_campaign_json` parses an option value
on its own.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
import yaml

from include.triggerflow import DEFAULT_ROUTING_FILE, PROJECT_ROOT, TEMPLATES_DIR
from include.triggerflow.content import ProductSource
from include.triggerflow.links import NO_LINKS, LinkPolicy, parse_host_pattern

if TYPE_CHECKING:
    from include.triggerflow.events import TriggerEvent

__all__ = [
    "CATCH_ALL",
    "EVENT_FIELDS",
    "PROFILE_IDENTITY_COLUMNS",
    "ROUTING_FILE_ENV",
    "CampaignConfig",
    "CampaignConfigError",
    "CampaignTopic",
    "CampaignTrigger",
    "FrequencyCap",
    "IdentityRule",
    "QuietHours",
    "RouteRules",
    "RoutingConfig",
    "RoutingConfigError",
    "TriggerRoute",
    "load_campaign_json",
    "load_routing",
    "parse_duration",
]

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
#: Suppression checks a route applies (all by default).
SUPPRESSION_CHECKS = ("opt-out", "block-list", "hard-bounce", "invalid-address")
DEFAULT_DEDUP_WINDOW_S = 24 * 3600
#: Trigger fields usable as identity (``TriggerEvent.field_value`` names).
EVENT_FIELDS = ("mcId", "messageId")

TEMPLATE_FILES = ("email.html", "email.txt")

_TOP_KEYS = ("version", "triggers")
# `campaign` and `defaults` are accepted at the top level but optional; messages keep listing the
# two usual keys.
_ALL_TOP_KEYS = (*_TOP_KEYS, "campaign", "defaults")
_DEFAULTS_KEYS = ("rules",)
_RULE_KEYS = ("suppress", "dedup_window", "validity", "frequency_cap", "quiet_hours")
_CAP_KEYS = ("max", "per")
_QUIET_KEYS = ("start", "end", "default_timezone")
_DURATION_RE = re.compile(r"\s*(\d+)\s*(s|m|h|d)\s*")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_LOCALE_RE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_CAMPAIGN_KEYS = ("config", "config_json", "handlers")
_HANDLER_KEYS = ("template", "subject", "identity")
#: what a route's emails may show of an event (issue 11): optional on routes and Campaign handlers
_CONTENT_KEYS = ("products", "link_hosts", "allow_http", "links")
_ROUTE_KEYS = ("name", "trigger_id", "template", "subject", "identity")
_OPTIONAL_ROUTE_KEYS = ("multiple_profiles", "profile_order", "rules", *_CONTENT_KEYS)
_IDENTITY_KEYS = ("dimension", "field", "profile_column")
_NAME_RE = re.compile(r"[a-z0-9_]+")
# A template is one folder name: no separators, so a config value can never reach outside templates_dir.
_TEMPLATE_RE = re.compile(r"[A-Za-z0-9_-]+")


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
        zone = _zone(tz_name) or _zone(self.default_timezone) or UTC
        local = at.astimezone(zone)
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

    suppress: frozenset[str] = frozenset(SUPPRESSION_CHECKS)
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


def _zone(name: str | None) -> tzinfo | None:
    """A ZoneInfo for an IANA name, or None for a blank or unknown name (profile data is untrusted)."""
    if not name or not isinstance(name, str):
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def parse_duration(value: Any) -> int:
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

    def route_for(self, trigger_id: Any) -> TriggerRoute | None:
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


# -- Campaign's NmsPipeline_Config option ------------------------------------------------------------
CAMPAIGN_TRIGGERS_TOPIC = "triggers"
CAMPAIGN_ALIASES_TOPIC = "aliases"
_CAMPAIGN_TOPICS = (CAMPAIGN_TRIGGERS_TOPIC, CAMPAIGN_ALIASES_TOPIC)
_JSON_TOP_KEYS = ("topics",)
_JSON_TOPIC_KEYS = ("name", "consumer", "triggers")
_JSON_TRIGGER_KEYS = ("name", "jsConnector")
_STRICT_JSON_HINT = "remove comments: the option must be strict JSON"
_START_HINT = "the option should start with '[' or '{'"


class CampaignConfigError(RoutingConfigError):
    """The pasted ``NmsPipeline_Config`` value is not valid. Each problem names where: the file (or
    ``<routing file>: campaign.config_json``), then the line and column or the JSON path."""


@dataclass(frozen=True)
class CampaignTrigger:
    """One ``{"name", "jsConnector"}`` entry of a topic."""

    name: str  # the triggerType UID from Analytics, or "*"
    js_connector: str
    path: str  # where it is in the option, e.g. "topics[0].triggers[2]"


@dataclass(frozen=True)
class CampaignTopic:
    name: str  # "triggers" or "aliases"
    consumer: str | None
    triggers: tuple[CampaignTrigger, ...]
    path: str  # "topics[0]"


@dataclass(frozen=True)
class CampaignConfig:
    """A parsed ``NmsPipeline_Config`` value: ``{"topics": [{"name", "consumer", "triggers": [...]}]}``."""

    origin: str  # the file it was read from, or where it was written inline
    topics: tuple[CampaignTopic, ...]

    def topic(self, name: str) -> CampaignTopic | None:
        return next((topic for topic in self.topics if topic.name == name), None)

    @property
    def consumers(self) -> tuple[str, ...]:
        """Every consumer name of the option, in order, without repeats."""
        return tuple(dict.fromkeys(topic.consumer for topic in self.topics if topic.consumer))

    @property
    def consumer(self) -> str | None:
        """The consumer of the ``triggers`` topic: the name Pipeline tracks this instance's offsets for."""
        topic = self.topic(CAMPAIGN_TRIGGERS_TOPIC)
        return topic.consumer if topic is not None else None

    @property
    def triggers(self) -> tuple[CampaignTrigger, ...]:
        """The configured triggers (of the ``triggers`` topic): what triggerflow processes."""
        topic = self.topic(CAMPAIGN_TRIGGERS_TOPIC)
        return topic.triggers if topic is not None else ()

    @property
    def aliases(self) -> tuple[CampaignTrigger, ...] | None:
        """The ``aliases`` topic's entries (accepted and shown, not processed); None without that topic."""
        topic = self.topic(CAMPAIGN_ALIASES_TOPIC)
        return topic.triggers if topic is not None else None

    def routing_map(self) -> dict[str, dict[str, str]]:
        """The option as Campaign's status page shows it: ``{"triggers": {uid: jsConnector}, "aliases": ...}``."""
        shown = {"triggers": {t.name: t.js_connector for t in self.triggers}}
        if self.aliases is not None:
            shown["aliases"] = {t.name: t.js_connector for t in self.aliases}
        return shown


class _JsonObject(dict):
    """A JSON object that remembers its repeated keys: ``json.loads`` would silently keep the last."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    repeated: list[str] = []
    for key, value in pairs:
        if key in obj and key not in repeated:
            repeated.append(key)
        obj[key] = value
    obj.duplicates = tuple(repeated)
    return obj


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number"


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _json_syntax_problem(origin: str, text: str, exc: json.JSONDecodeError) -> str:
    """``origin: line L, column C: invalid JSON (msg); hint`` for a JSONDecodeError."""
    hints: list[str] = []
    pos = exc.pos
    ahead = text[pos : pos + 2]
    before = text[:pos].rstrip()
    if ahead.startswith(("//", "/*", "#")):
        hints.append(_STRICT_JSON_HINT)
    elif before.endswith(",") and ahead[:1] in ("}", "]"):
        line, col = _line_col(text, len(before) - 1)
        hints.append(
            f"trailing comma: remove the ',' at line {line}, column {col} "
            f"(strict JSON allows no comma before '{ahead[:1]}')"
        )
    elif not before and ahead[:1] not in ("{", "["):
        # The very first character is not JSON: Campaign's own message for this case.
        hints.append(_START_HINT)
    message = f"{origin}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
    return message + ("; " + "; ".join(hints) if hints else "")


class _CampaignParser:
    """Walks a decoded option, collecting every structural problem with its JSON path."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.problems: list[str] = []

    def fail(self, where: str | None, problem: str) -> None:
        self.problems.append(f"{self.origin}: {where}: {problem}" if where else f"{self.origin}: {problem}")

    def keys(self, where: str | None, obj: _JsonObject, allowed: tuple[str, ...]) -> None:
        for key in getattr(obj, "duplicates", ()):
            self.fail(where, f"key {key!r} appears more than once in this object")
        for key in obj:
            if key not in allowed:
                problem = _unknown_key(key, allowed)
                if "did you mean" not in problem:
                    problem += "; triggerflow does not support it: remove it"
                self.fail(where, problem)

    def parse(self, data: Any) -> CampaignConfig | None:
        if not isinstance(data, dict):
            self.fail(None, f"top level must be an object with 'topics', got {_json_type(data)}")
            return None
        self.keys(None, data, _JSON_TOP_KEYS)
        if "topics" not in data:
            self.fail(None, "missing 'topics' (expected {\"topics\": [{\"name\": \"triggers\", ...}]})")
            return None
        raw_topics = data["topics"]
        if not isinstance(raw_topics, list):
            self.fail("topics", f"must be an array of topics, got {_json_type(raw_topics)}")
            return None
        topics: list[CampaignTopic] = []
        seen: dict[str, str] = {}
        for index, raw in enumerate(raw_topics):
            topic = self.topic(f"topics[{index}]", raw, seen)
            if topic is not None:
                topics.append(topic)
        if CAMPAIGN_TRIGGERS_TOPIC not in seen and not any(
            isinstance(t, dict) and t.get("name") == CAMPAIGN_TRIGGERS_TOPIC for t in raw_topics
        ):
            self.fail(
                "topics",
                f"no topic named {CAMPAIGN_TRIGGERS_TOPIC!r}: pipelined would process nothing "
                '(add {"name": "triggers", "consumer": "<instance>", "triggers": [...]})',
            )
        return CampaignConfig(origin=self.origin, topics=tuple(topics)) if not self.problems else None

    def topic(self, where: str, raw: Any, seen: dict[str, str]) -> CampaignTopic | None:
        if not isinstance(raw, dict):
            self.fail(where, f"a topic must be an object, got {_json_type(raw)}")
            return None
        before = len(self.problems)
        self.keys(where, raw, _JSON_TOPIC_KEYS)
        name = raw.get("name")
        if "name" not in raw:
            self.fail(where, f"missing 'name' (one of: {', '.join(_CAMPAIGN_TOPICS)})")
        elif name not in _CAMPAIGN_TOPICS:
            self.fail(where, f"unknown topic name {name!r}: pipelined reads {' and '.join(map(repr, _CAMPAIGN_TOPICS))}")
        elif name in seen:
            self.fail(where, f"topic {name!r} is already defined at {seen[name]}")
        else:
            seen[name] = where
        is_triggers = name == CAMPAIGN_TRIGGERS_TOPIC

        consumer = raw.get("consumer")
        if "consumer" not in raw:
            if is_triggers:
                self.fail(where, "missing 'consumer' (the instance name Pipeline keeps this reader's offsets under)")
        elif not isinstance(consumer, str) or not consumer.strip():
            self.fail(where, f"'consumer' must be a non-empty string, got {json.dumps(consumer)}")
            consumer = None
        else:
            consumer = consumer.strip()

        entries: list[CampaignTrigger] = []
        if "triggers" not in raw:
            if is_triggers:
                self.fail(where, "missing 'triggers' (an array of {\"name\": \"<trigger UID or *>\", \"jsConnector\": ...})")
        elif not isinstance(raw["triggers"], list):
            self.fail(f"{where}.triggers", f"must be an array, got {_json_type(raw['triggers'])}")
        elif not raw["triggers"] and is_triggers:
            self.fail(f"{where}.triggers", "is empty: list at least one trigger (or \"*\")")
        else:
            names: dict[str, str] = {}
            for index, entry in enumerate(raw["triggers"]):
                trigger = self.trigger(f"{where}.triggers[{index}]", entry, names)
                if trigger is not None:
                    entries.append(trigger)
        if len(self.problems) != before:
            return None
        return CampaignTopic(name=str(name), consumer=consumer, triggers=tuple(entries), path=where)

    def trigger(self, where: str, raw: Any, names: dict[str, str]) -> CampaignTrigger | None:
        if not isinstance(raw, dict):
            self.fail(where, f"a trigger must be an object with 'name' and 'jsConnector', got {_json_type(raw)}")
            return None
        before = len(self.problems)
        self.keys(where, raw, _JSON_TRIGGER_KEYS)
        name = raw.get("name")
        if "name" not in raw:
            self.fail(where, "missing 'name' (the trigger UID from Analytics, or \"*\")")
        elif not isinstance(name, str) or not name.strip():
            self.fail(where, f"'name' must be a non-empty string (the trigger UID, or \"*\"), got {json.dumps(name)}")
        else:
            name = name.strip()
            if name in names:
                what = "catch-all '*'" if name == CATCH_ALL else f"trigger {name!r}"
                self.fail(where, f"{what} is already listed at {names[name]}")
            else:
                names[name] = where
        connector = raw.get("jsConnector")
        if "jsConnector" not in raw:
            self.fail(where, "missing 'jsConnector'")
        elif not isinstance(connector, str):
            self.fail(where, f"'jsConnector' must be a string, got {json.dumps(connector)}")
        if len(self.problems) != before:
            return None
        return CampaignTrigger(name=name, js_connector=connector, path=where)


def _parse_campaign_text(text: str, origin: str) -> tuple[CampaignConfig | None, list[str]]:
    """Parse an option value; returns the config or the list of problems (each prefixed by origin)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return None, [
            f"{origin}: the option is empty; {_START_HINT} (the JSON object with 'topics'; Campaign "
            "reports a JSON parse error, iRc=16384, for an unset option)"
        ]
    try:
        data = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        return None, [_json_syntax_problem(origin, text, exc)]
    except RecursionError:
        return None, [f"{origin}: invalid JSON: nested too deeply"]
    parser = _CampaignParser(origin)
    config = parser.parse(data)
    return config, parser.problems


def _read_campaign_file(path: Path) -> str:
    shown = _display_path(path)
    if not path.exists():
        raise CampaignConfigError(f"{shown}: NmsPipeline_Config file not found")
    if not path.is_file():
        raise CampaignConfigError(f"{shown}: NmsPipeline_Config path is not a regular file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CampaignConfigError(f"{shown}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise CampaignConfigError(f"{shown}: cannot read the file: {exc.strerror or exc}") from exc


def load_campaign_json(text_or_path: str | os.PathLike[str], *, origin: str | None = None) -> CampaignConfig:
    """Parse a ``NmsPipeline_Config`` option value: JSON text, or the path of a file holding it.

    A :class:`~os.PathLike` is always a file. A ``str`` is the JSON itself when it is empty or starts
    with ``{`` or ``[`` (after blanks), else a file path when such a file exists or it looks like one
    (ends with ``.json`` or has a directory separator); anything else is parsed, and fails, as JSON.

    Strict JSON, as in Campaign: comments and trailing commas are errors, reported with line and
    column and how to fix them; structural problems name their JSON path (``topics[0].triggers[2]``);
    repeated keys and keys triggerflow does not know are errors too. All problems are reported
    together.

    :param origin: how to name the value in messages (default: the file path, or ``NmsPipeline_Config``).
    :raises CampaignConfigError: the value is not a valid option.
    """
    if isinstance(text_or_path, os.PathLike):
        path = Path(text_or_path)
        text, shown = _read_campaign_file(path), _display_path(path)
    else:
        raw = str(text_or_path)
        stripped = raw.lstrip("\ufeff \t\r\n")
        looks_like_json = not stripped or stripped[0] in "{["
        candidate = None if looks_like_json or "\n" in raw else Path(raw)
        if candidate is not None and (
            candidate.exists() or candidate.suffix.lower() == ".json" or os.sep in raw or "/" in raw
        ):
            text, shown = _read_campaign_file(candidate), _display_path(candidate)
        else:
            text, shown = raw, "NmsPipeline_Config"
    config, problems = _parse_campaign_text(text, origin or shown)
    if problems or config is None:
        raise CampaignConfigError(problems)
    return config


def _campaign_route_name(trigger_id: str, taken: set[str]) -> str:
    """``campaign_<first 8 chars of the UID>`` (``campaign_all`` for ``*``), made unique: the whole
    UID, then a numeric suffix, when that name is already used."""
    if trigger_id == CATCH_ALL:
        candidates = ["campaign_all"]
    else:
        clean = re.sub(r"[^a-z0-9]+", "_", trigger_id.lower()).strip("_") or "trigger"
        short = re.sub(r"[^a-z0-9]+", "_", trigger_id[:8].lower()).strip("_") or "trigger"
        candidates = [f"campaign_{short}", f"campaign_{clean[:80]}"]
    for name in candidates:
        if name not in taken:
            return name
    number = 2
    while f"{candidates[0]}_{number}" in taken:
        number += 1
    return f"{candidates[0]}_{number}"


# -- loading -----------------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys: PyYAML would silently keep the last one, which
    hides a copy-pasted route or a second ``subject`` line."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: construct_mapping below reports it properly
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _display_path(path: Path) -> str:
    """A path as people see it in the repo (``include/routing.yaml``), absolute when outside it."""
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _unknown_key(key: Any, expected: tuple[str, ...]) -> str:
    message = f"unknown key {key!r} (expected one of: {', '.join(expected)})"
    if isinstance(key, str):
        close = difflib.get_close_matches(key, expected, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def _check_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> list[str]:
    problems = [_unknown_key(key, allowed) for key in data if key not in allowed]
    missing = [key for key in required if key not in data]
    if missing:
        problems.append(f"missing required key{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    return problems


def _subject_environment() -> jinja2.Environment:
    # Imported here, not at module top: render imports this module's types for its signatures.
    from include.triggerflow.render import FILTERS

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(FILTERS)
    return env


#: ``event`` attributes that hold no URL and no free text from the event's payload
_EVENT_SAFE_ATTRS = frozenset({"trigger_id", "name", "triggered_at"})
_ROUTE_TEMPLATE_FILE = re.compile(r"email(?:\.[^./\\]+)?\.(?:html|txt)")


def _event_references(tree: jinja2.nodes.Template) -> set[str]:
    """What of ``event`` a parsed template reads that may hold event URLs: ``event.pages``,
    ``event.products``, ``event.dimensions``, any other attribute or item, or ``event`` itself
    (passed to a macro, assigned to another name, printed whole)."""
    from jinja2 import nodes

    found: set[str] = set()
    consumed: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        base = getattr(node, "node", None)
        if not (isinstance(base, nodes.Name) and base.name == "event"):
            continue
        consumed.add(id(base))
        if isinstance(node, nodes.Getattr):
            key: Any = node.attr
        else:
            arg = getattr(node, "arg", None)
            key = arg.value if isinstance(arg, nodes.Const) else None
        if key not in _EVENT_SAFE_ATTRS:
            found.add(f"event.{key}" if isinstance(key, str) else "event[...]")
    for name in tree.find_all(nodes.Name):
        if name.name == "event" and name.ctx == "load" and id(name) not in consumed:
            found.add("event")
    return found


def event_url_references(templates_dir: Path, template: str) -> list[str]:
    """``["cart_abandonment/email.html: event.pages", ...]``: where the templates of a route's
    folder (the default pair and every locale variant), and the templates they extend, include or
    import, read event data that may hold URLs. Found by walking each template's Jinja syntax
    tree, not by searching text, so comments and strings do not count. Templates that do not
    parse are skipped (the renderer reports them)."""
    from jinja2 import meta

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir)))
    folder = templates_dir / template
    try:
        queue = sorted(f"{template}/{p.name}" for p in folder.iterdir() if p.is_file() and _ROUTE_TEMPLATE_FILE.fullmatch(p.name))
    except OSError:
        return []
    seen: set[str] = set()
    found: set[str] = set()
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
            tree = env.parse(source, name=name)
        except (jinja2.TemplateError, OSError, UnicodeError):
            continue
        found.update(f"{name}: {ref}" for ref in _event_references(tree))
        queue.extend(ref for ref in meta.find_referenced_templates(tree) if isinstance(ref, str) and ref not in seen)
    return sorted(found)


class _Loader:
    """Validation state for one file: collects every problem, then raises once."""

    def __init__(self, path: Path, templates_dir: Path) -> None:
        self.path = path
        self.shown = _display_path(path)
        self.templates_dir = templates_dir
        self.problems: list[str] = []
        self._subject_env: jinja2.Environment | None = None

    def fail(self, where: str | None, problem: str) -> None:
        self.problems.append(f"{self.shown}: {where}: {problem}" if where else f"{self.shown}: {problem}")

    def fatal(self, problem: str) -> RoutingConfigError:
        return RoutingConfigError(f"{self.shown}: {problem}")

    def read(self) -> Any:
        if not self.path.exists():
            hint = ""
            if not os.environ.get(ROUTING_FILE_ENV):
                hint = f" (set {ROUTING_FILE_ENV} to use another file)"
            raise self.fatal(f"routing file not found{hint}")
        if not self.path.is_file():
            raise self.fatal("routing file is not a regular file")
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise self.fatal(f"routing file is not UTF-8 text: {exc}") from exc
        except OSError as exc:
            raise self.fatal(f"cannot read routing file: {exc.strerror or exc}") from exc
        try:
            return yaml.load(text, Loader=_StrictLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            detail = "; ".join(part for part in (exc.context, exc.problem) if part)
            if exc.context == "while scanning an alias":
                detail += ' (a bare * starts a YAML alias: write trigger_id: "*" in quotes for the catch-all)'
            # Duplicate keys are reported by the constructor: valid syntax, invalid document.
            is_syntax = not isinstance(exc, yaml.constructor.ConstructorError)
            label = "YAML syntax error" if is_syntax else "YAML error"
            raise self.fatal(f"{label}{where}: {detail}") from exc
        except yaml.YAMLError as exc:
            raise self.fatal(f"YAML error: {exc}") from exc

    def load(self) -> RoutingConfig:
        data = self.read()
        if not isinstance(data, dict):
            got = "an empty document" if data is None else f"a {_type_name(data)}"
            raise self.fatal(f"top level must be a mapping with 'version' and 'triggers', got {got}")

        has_campaign = "campaign" in data
        for key in data:
            if key not in _ALL_TOP_KEYS:
                problem = _unknown_key(key, _TOP_KEYS)
                if "did you mean" not in problem and isinstance(key, str):
                    close = difflib.get_close_matches(key, _ALL_TOP_KEYS, n=1)
                    if close:
                        problem += f"; did you mean {close[0]!r}?"
                self.fail(None, problem)
        required = ("version",) if has_campaign else _TOP_KEYS
        missing = [key for key in required if key not in data]
        if missing:
            self.fail(None, f"missing required key{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
        if "version" in data:
            version = data["version"]
            if isinstance(version, bool) or version != SUPPORTED_VERSION:
                self.fail(None, f"version must be {SUPPORTED_VERSION}, got {version!r}")

        self.default_rules: dict[str, Any] = {}
        if "defaults" in data:
            self.load_defaults(data["defaults"])

        routes: list[TriggerRoute] = []
        names: dict[str, str] = {}
        ids: dict[str, str] = {}
        if "triggers" in data:
            triggers = data["triggers"]
            if (triggers is None or triggers == []) and not has_campaign:  # `triggers:` alone is null
                self.fail(None, "'triggers' is empty: configure at least one trigger")
            elif triggers is not None and not isinstance(triggers, list):
                self.fail(None, f"'triggers' must be a list of trigger entries, got {_type_name(triggers)}")
            elif triggers:
                routes = self.load_routes(triggers, names, ids)

        campaign: CampaignConfig | None = None
        if has_campaign:
            campaign, campaign_routes = self.load_campaign(data["campaign"], names, ids)
            routes.extend(campaign_routes)

        if self.problems:
            raise RoutingConfigError(self.problems)
        return RoutingConfig(path=self.path, routes=tuple(routes), campaign=campaign)

    def load_campaign(
        self, section: Any, names: dict[str, str], ids: dict[str, str]
    ) -> tuple[CampaignConfig | None, list[TriggerRoute]]:
        """The ``campaign`` section: the pasted option plus a handler per jsConnector, as routes."""
        where = "campaign"
        if not isinstance(section, dict):
            self.fail(
                where,
                "must be a mapping with 'config' (a file) or 'config_json' (inline) and 'handlers', "
                f"got {_type_name(section)}",
            )
            return None, []
        for problem in _check_keys(section, _CAMPAIGN_KEYS, ("handlers",)):
            self.fail(where, problem)

        handlers = self.load_handlers(section.get("handlers")) if "handlers" in section else None
        config = self.load_campaign_option(section)
        if config is None or handlers is None:
            return config, []

        routes: list[TriggerRoute] = []
        taken = set(names)
        for trigger in config.triggers:
            at = f"{config.origin}: {trigger.path}"
            if trigger.js_connector not in handlers:
                known = [key for key in handlers]
                defined = ", ".join(repr(key) for key in known) if known else "none"
                message = (
                    f"{at}: jsConnector {trigger.js_connector!r} has no handler in {self.shown}: "
                    f"campaign.handlers (defined: {defined})"
                )
                close = difflib.get_close_matches(trigger.js_connector, [k for k in known if isinstance(k, str)], n=1)
                if close:
                    message += f"; did you mean {close[0]!r}?"
                self.problems.append(message)
                continue
            handler = handlers[trigger.js_connector]
            if handler is None:  # the handler itself is invalid: already reported
                continue
            if trigger.name in ids:
                what = "catch-all '*'" if trigger.name == CATCH_ALL else f"trigger_id {trigger.name!r}"
                self.problems.append(
                    f"{at}: {what} is routed both here and by {self.shown}: {ids[trigger.name]}; keep one"
                )
                continue
            ids[trigger.name] = at
            name = _campaign_route_name(trigger.name, taken)
            taken.add(name)
            names[name] = at
            template, subject, identity, content = handler
            rules = self.load_rules(f"{at}: rules (defaults)", {}) or RouteRules()
            routes.append(
                TriggerRoute(
                    name=name,
                    trigger_id=trigger.name,
                    template=template,
                    subject=subject,
                    identities=(identity,),
                    handler=trigger.js_connector,
                    rules=rules,
                    **content,
                )
            )
        return config, routes

    def load_campaign_option(self, section: Mapping[str, Any]) -> CampaignConfig | None:
        where = "campaign"
        if "config" in section and "config_json" in section:
            self.fail(where, "has both 'config' and 'config_json': give exactly one")
            return None
        if "config" in section:
            value = section["config"]
            if not isinstance(value, str) or not value.strip():
                self.fail(
                    f"{where}.config",
                    f"must be the path of the file holding the NmsPipeline_Config value, got {value!r}",
                )
                return None
            path = Path(value.strip())
            if not path.is_absolute():
                path = self.path.parent / path  # relative to the routing file, not the cwd
            try:
                text = _read_campaign_file(path)
            except CampaignConfigError as exc:
                self.fail(f"{where}.config", str(exc))
                return None
            origin = _display_path(path)
        elif "config_json" in section:
            text = section["config_json"]
            if text is None:
                text = ""
            if not isinstance(text, str):
                self.fail(
                    f"{where}.config_json",
                    "must be the option value as a string (quote it, or use a '|' block), "
                    f"got {_type_name(text)}",
                )
                return None
            origin = f"{self.shown}: {where}.config_json"
        else:
            self.fail(
                where,
                "needs 'config' (a file holding the NmsPipeline_Config value) or 'config_json' (the value inline)",
            )
            return None
        config, problems = _parse_campaign_text(text, origin)
        self.problems.extend(problems)
        return config

    def load_handlers(self, handlers: Any) -> dict[str, tuple[str, str, IdentityRule, dict[str, Any]] | None] | None:
        """jsConnector -> (template, subject, identity, content options), or None for a handler
        with problems. A handler takes the routes' optional content keys too (products, link_hosts,
        allow_http, links)."""
        where = "campaign.handlers"
        if not isinstance(handlers, dict) or not handlers:
            got = "an empty mapping" if handlers == {} else _type_name(handlers)
            self.fail(
                where,
                "must map each Campaign jsConnector (e.g. \"cus:triggers.js\") to "
                f"template, subject and identity, got {got}",
            )
            return None
        loaded: dict[str, tuple[str, str, IdentityRule, dict[str, Any]] | None] = {}
        for connector, spec in handlers.items():
            at = f"{where}[{connector!r}]"
            if not isinstance(connector, str):
                self.fail(at, f"the jsConnector must be a string, got {_type_name(connector)}")
                continue
            if not isinstance(spec, dict):
                self.fail(at, f"must be a mapping with {', '.join(_HANDLER_KEYS)}, got {_type_name(spec)}")
                loaded[connector] = None
                continue
            before = len(self.problems)
            for problem in _check_keys(spec, (*_HANDLER_KEYS, *_CONTENT_KEYS), _HANDLER_KEYS):
                self.fail(at, problem)
            if "template" in spec:
                self.check_template(at, spec["template"])
            if "subject" in spec:
                self.check_subject(at, spec["subject"])
            identity = self.load_identity(at, spec["identity"]) if "identity" in spec else None
            content = self.load_content(at, spec) if len(self.problems) == before else None
            ok = len(self.problems) == before and identity is not None and content is not None
            loaded[connector] = (
                (spec["template"], spec["subject"], identity, content) if ok and identity is not None and content is not None else None
            )
        return loaded

    def load_routes(
        self, triggers: list[Any], names: dict[str, str] | None = None, ids: dict[str, str] | None = None
    ) -> list[TriggerRoute]:
        routes: list[TriggerRoute] = []
        names = {} if names is None else names
        ids = {} if ids is None else ids
        for index, entry in enumerate(triggers):
            where = f"triggers[{index}]"
            if not isinstance(entry, dict):
                self.fail(where, f"entry must be a mapping, got {_type_name(entry)}")
                continue
            name = entry.get("name")
            if isinstance(name, str) and name:
                where = f"{where} ({name})"
            before = len(self.problems)
            for problem in _check_keys(entry, (*_ROUTE_KEYS, *_OPTIONAL_ROUTE_KEYS), _ROUTE_KEYS):
                self.fail(where, problem)

            if "name" in entry:
                if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                    self.fail(where, f"name {name!r} must match [a-z0-9_]+ (lower-case letters, digits, '_')")
                elif name in names:
                    self.fail(where, f"name {name!r} is already used by {names[name]}")
                else:
                    names[name] = where

            trigger_id = entry.get("trigger_id")
            if "trigger_id" in entry:
                if not isinstance(trigger_id, str) or not trigger_id.strip():
                    self.fail(
                        where,
                        f"trigger_id must be a non-empty string (the triggerType UID, or \"*\"), "
                        f"got {trigger_id!r}",
                    )
                else:
                    trigger_id = trigger_id.strip()
                    if trigger_id in ids:
                        what = "catch-all '*'" if trigger_id == CATCH_ALL else f"trigger_id {trigger_id!r}"
                        self.fail(where, f"{what} is already routed by {ids[trigger_id]}")
                    else:
                        ids[trigger_id] = where

            if "template" in entry:
                self.check_template(where, entry["template"])
            subject, subjects = self.load_subjects(where, entry["subject"]) if "subject" in entry else (None, ())
            identities = self.load_identities(where, entry["identity"]) if "identity" in entry else None
            policy = entry.get("multiple_profiles", "first")
            if policy not in MULTIPLE_PROFILE_POLICIES:
                self.fail(where, f"multiple_profiles {policy!r} is not one of: {', '.join(MULTIPLE_PROFILE_POLICIES)}")
            order = self.load_profile_order(where, entry.get("profile_order", "customer_id"))
            rules = self.load_rules(f"{where}: rules", entry.get("rules") if "rules" in entry else {})
            content = self.load_content(where, entry) if len(self.problems) == before else None

            if len(self.problems) == before and identities and subject is not None and order and rules and content is not None:
                routes.append(
                    TriggerRoute(
                        name=name,
                        trigger_id=trigger_id,
                        template=entry["template"],
                        subject=subject,
                        identities=identities,
                        subjects=subjects,
                        multiple_profiles=policy,
                        profile_order=order,
                        rules=rules,
                        **content,
                    )
                )
        return routes

    def load_content(self, where: str, spec: Mapping[str, Any]) -> dict[str, Any] | None:
        """The content keys of a route or handler (``products``, ``link_hosts``, ``allow_http``,
        ``links``) as TriggerRoute keyword arguments, or None when one is wrong.

        Called once the template is known to be valid. A route whose templates render event URLs
        (they reference ``event.pages``, ``event.products``, ``event.dimensions`` or the whole
        ``event``) must say which hosts its emails may link to: without ``link_hosts`` it fails
        here, naming the templates and references found."""
        before = len(self.problems)
        products = spec.get("products", ProductSource.CATALOG.value)
        if products not in tuple(ProductSource):
            self.fail(
                where,
                f"products {products!r} must be one of: catalog (names, prices, URLs and images from the "
                f"catalogue by SKU; the default) or event (from the event itself, names cut at 80 characters)",
            )
        allow_http = spec.get("allow_http", False)
        if not isinstance(allow_http, bool):
            self.fail(where, f"allow_http must be true or false, got {allow_http!r}")
            allow_http = False
        policy: LinkPolicy | None = None
        if "link_hosts" in spec:
            hosts = spec["link_hosts"]
            if not isinstance(hosts, list):
                self.fail(
                    where,
                    "link_hosts must be a list of hosts such as [shop.example.com, '*.cdn.example.com'], "
                    f"got {_type_name(hosts)}",
                )
            else:
                patterns = []
                for index, host in enumerate(hosts):
                    try:
                        patterns.append(parse_host_pattern(host))
                    except ValueError as exc:
                        self.fail(f"{where}: link_hosts[{index}]", str(exc))
                policy = LinkPolicy(hosts=tuple(dict.fromkeys(patterns)), allow_http=allow_http)
        links: list[tuple[str, str]] = []
        if "links" in spec:
            raw = spec["links"]
            if not isinstance(raw, dict):
                self.fail(where, f"links must be a mapping of name -> URL such as {{cart: 'https://shop.example.com/cart'}}, got {_type_name(raw)}")
            elif "link_hosts" not in spec:
                self.fail(
                    where,
                    "links need link_hosts: list the hosts of these URLs (link_hosts: [shop.example.com]); "
                    "every URL of an email must be on one of the route's link_hosts",
                )
            else:
                for name, url in raw.items():
                    at = f"{where}: links[{name!r}]"
                    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                        self.fail(at, "a link name must match [a-z0-9_]+ (templates use it as links.<name>)")
                        continue
                    if policy is None:
                        continue  # link_hosts itself is wrong: reported above
                    verdict = policy.check(url)
                    if verdict.url is None:
                        self.fail(
                            at,
                            f"{url!r} is refused by the route's link_hosts ({policy.describe()}): {verdict.refusal}; "
                            "give an absolute URL on one of those hosts",
                        )
                    else:
                        links.append((name, verdict.url))
        template = spec.get("template")
        if "link_hosts" not in spec and len(self.problems) == before and isinstance(template, str):
            found = event_url_references(self.templates_dir, template)
            if found:
                shown = "; ".join(found[:6]) + ("; ..." if len(found) > 6 else "")
                self.fail(
                    where,
                    f"template {template!r} renders URLs taken from the event ({shown}) but the route has no "
                    "link_hosts: event data is unauthenticated, so every page, product and image URL must be "
                    "on an allowed host. Add link_hosts: [your.shop.host] (exact hosts or '*.domain'), "
                    "or link_hosts: [] to show none of them",
                )
        if len(self.problems) != before:
            return None
        return {
            "products": ProductSource(products),
            "link_policy": policy if policy is not None else LinkPolicy(allow_http=allow_http),
            "links": tuple(links),
        }

    def load_subjects(self, where: str, value: Any) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """``subject`` is one template, or a mapping of locale tag -> template with a ``default``."""
        if not isinstance(value, dict):
            before = len(self.problems)
            self.check_subject(where, value)
            return (value if len(self.problems) == before else None), ()
        if "default" not in value:
            self.fail(where, "subject: a per-locale mapping needs a 'default' entry (used when no locale matches)")
        variants: list[tuple[str, str]] = []
        default: str | None = None
        before = len(self.problems)
        for tag, text in value.items():
            at = f"{where}: subject[{tag!r}]"
            if tag != "default" and (not isinstance(tag, str) or not _LOCALE_RE.fullmatch(tag)):
                self.fail(at, "locale must be a tag such as fr, fr-CA or pt-BR")
                continue
            self.check_subject(at, text)
            if tag == "default":
                default = text
            else:
                variants.append((tag, text))
        if len(self.problems) != before:
            return None, ()
        return default, tuple(variants)

    def load_identities(self, where: str, value: Any) -> tuple[IdentityRule, ...] | None:
        """One identity rule, or a list of them tried in order (the first that finds a profile wins)."""
        if isinstance(value, list):
            if not value:
                self.fail(f"{where}: identity", "the list is empty: give at least one rule")
                return None
            rules = [self.load_identity(f"{where}: identity[{i}]", item, nested=True) for i, item in enumerate(value)]
            if any(rule is None for rule in rules):
                return None
            seen: set[IdentityRule] = set()
            for i, rule in enumerate(rules):
                if rule in seen:
                    self.fail(f"{where}: identity[{i}]", "repeats an earlier rule of the list")
                seen.add(rule)
            return tuple(r for r in rules if r is not None)
        rule = self.load_identity(where, value)
        return (rule,) if rule is not None else None

    def load_profile_order(self, where: str, value: Any) -> tuple[str, bool] | None:
        parts = value.split() if isinstance(value, str) else []
        if (
            not parts
            or len(parts) > 2
            or parts[0] not in PROFILE_ORDER_COLUMNS
            or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc"))
        ):
            self.fail(
                where,
                f"profile_order {value!r} must be a profiles column ({', '.join(PROFILE_ORDER_COLUMNS)}) "
                "optionally followed by asc or desc, e.g. 'updated_at desc'",
            )
            return None
        return parts[0], len(parts) == 2 and parts[1].lower() == "desc"

    def load_defaults(self, value: Any) -> None:
        where = "defaults"
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping with 'rules', got {_type_name(value)}")
            return
        for problem in _check_keys(value, _DEFAULTS_KEYS, ()):
            self.fail(where, problem)
        rules = value.get("rules", {})
        if self.load_rules("defaults: rules", rules, merge_defaults=False) is not None and isinstance(rules, dict):
            self.default_rules = dict(rules)

    def load_rules(self, where: str, value: Any, *, merge_defaults: bool = True) -> RouteRules | None:
        """A route's ``rules`` mapping over the file's ``defaults.rules`` (the route wins per key)."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping of rules ({', '.join(_RULE_KEYS)}), got {_type_name(value)}")
            return None
        before = len(self.problems)
        for problem in _check_keys(value, _RULE_KEYS, ()):
            self.fail(where, problem)
        merged = {**(getattr(self, "default_rules", {}) if merge_defaults else {}), **value}
        rules = RouteRules()

        if "suppress" in merged:
            checks = merged["suppress"]
            if not isinstance(checks, list) or any(c not in SUPPRESSION_CHECKS for c in checks):
                self.fail(
                    where,
                    f"suppress must be a list of: {', '.join(SUPPRESSION_CHECKS)} ([] turns suppression off), got {checks!r}",
                )
            else:
                rules = replace(rules, suppress=frozenset(checks))
        for key, attr in (("dedup_window", "dedup_window_s"), ("validity", "validity_s")):
            if key in merged:
                raw = merged[key]
                if raw is None or raw == 0 or raw == "0":
                    rules = replace(rules, **{attr: None})
                    continue
                try:
                    rules = replace(rules, **{attr: parse_duration(raw)})
                except ValueError as exc:
                    self.fail(where, f"{key}: {exc}")
        if merged.get("frequency_cap") is not None:
            cap = merged["frequency_cap"]
            if not isinstance(cap, dict):
                self.fail(where, f"frequency_cap must be a mapping like {{max: 3, per: 24h}}, got {_type_name(cap)}")
            else:
                for problem in _check_keys(cap, _CAP_KEYS, _CAP_KEYS):
                    self.fail(f"{where}: frequency_cap", problem)
                count = cap.get("max")
                if "max" in cap and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
                    self.fail(f"{where}: frequency_cap", f"max must be a whole number >= 1, got {count!r}")
                per = None
                if "per" in cap:
                    try:
                        per = parse_duration(cap["per"])
                        if per == 0:
                            raise ValueError("the period is zero")
                    except ValueError as exc:
                        self.fail(f"{where}: frequency_cap", f"per: {exc}")
                        per = None
                if per is not None and isinstance(count, int) and not isinstance(count, bool) and count >= 1:
                    rules = replace(rules, frequency_cap=FrequencyCap(max=count, per_s=per))
        if merged.get("quiet_hours") is not None:
            quiet = merged["quiet_hours"]
            if not isinstance(quiet, dict):
                self.fail(where, f"quiet_hours must be a mapping like {{start: '21:00', end: '08:00'}}, got {_type_name(quiet)}")
            else:
                for problem in _check_keys(quiet, _QUIET_KEYS, ("start", "end")):
                    self.fail(f"{where}: quiet_hours", problem)
                clocks = {}
                for key in ("start", "end"):
                    raw = quiet.get(key)
                    match = _CLOCK_RE.fullmatch(raw) if isinstance(raw, str) else None
                    if key in quiet and match is None:
                        self.fail(f"{where}: quiet_hours", f"{key} must be a quoted 24-hour time such as '21:00', got {raw!r}")
                    elif match:
                        clocks[key] = time(int(match.group(1)), int(match.group(2)))
                tz_name = quiet.get("default_timezone", "UTC")
                if _zone(tz_name) is None:
                    self.fail(f"{where}: quiet_hours", f"default_timezone {tz_name!r} is not an IANA time zone such as Europe/Paris")
                if len(clocks) == 2 and clocks["start"] == clocks["end"]:
                    self.fail(f"{where}: quiet_hours", "start and end are equal: the window would be empty")
                elif len(clocks) == 2 and _zone(tz_name) is not None:
                    rules = replace(rules, quiet_hours=QuietHours(start=clocks["start"], end=clocks["end"], default_timezone=tz_name))
        return rules if len(self.problems) == before else None

    def check_template(self, where: str, template: Any) -> None:
        shown_dir = _display_path(self.templates_dir)
        if not isinstance(template, str) or not _TEMPLATE_RE.fullmatch(template):
            self.fail(
                where,
                f"template {template!r} must be a folder name under {shown_dir} "
                "(letters, digits, '_' or '-')",
            )
            return
        folder = self.templates_dir / template
        if not folder.is_dir():
            self.fail(where, f"template {template!r} has no folder {_display_path(folder)}")
            return
        missing = [name for name in TEMPLATE_FILES if not (folder / name).is_file()]
        if missing:
            shown_folder = _display_path(folder)
            self.fail(where, f"template {template!r}: folder {shown_folder} has no {' or '.join(missing)}")

    def check_subject(self, where: str, subject: Any) -> None:
        if not isinstance(subject, str) or not subject.strip():
            self.fail(where, f"subject must be a non-empty string, got {subject!r}")
            return
        if any(char in subject for char in "\r\n\0"):
            # It would be refused at render time for every email; say so now.
            self.fail(where, "subject must be a single line (it becomes the Subject header)")
            return
        if self._subject_env is None:
            self._subject_env = _subject_environment()
        try:
            self._subject_env.from_string(subject)
        except jinja2.TemplateSyntaxError as exc:
            self.fail(where, f"subject is not a valid Jinja template: {exc.message}")

    def load_identity(self, where: str, identity: Any, *, nested: bool = False) -> IdentityRule | None:
        where = where if nested else f"{where}: identity"
        if not isinstance(identity, dict):
            self.fail(
                where,
                "must be a mapping with 'dimension' or 'field' and 'profile_column', "
                f"got {_type_name(identity)}",
            )
            return None
        before = len(self.problems)
        for problem in _check_keys(identity, _IDENTITY_KEYS, ("profile_column",)):
            self.fail(where, problem)

        kind: Literal["dimension", "field"] | None = None
        key: str | None = None
        if "dimension" in identity and "field" in identity:
            self.fail(where, "has both 'dimension' and 'field': give exactly one")
        elif "dimension" in identity:
            value = identity["dimension"]
            if not isinstance(value, str) or not value.strip():
                self.fail(
                    where, f"dimension must be a non-empty dimension name such as eVar01, got {value!r}"
                )
            else:
                kind, key = "dimension", value.strip()
        elif "field" in identity:
            value = identity["field"]
            if value not in EVENT_FIELDS:
                self.fail(where, f"field {value!r} is not one of: {', '.join(EVENT_FIELDS)}")
            else:
                kind, key = "field", value
        else:
            self.fail(where, "needs exactly one of 'dimension' (e.g. eVar01) or 'field' (e.g. mcId)")

        column = identity.get("profile_column")
        if "profile_column" in identity and column not in PROFILE_IDENTITY_COLUMNS:
            allowed = ", ".join(PROFILE_IDENTITY_COLUMNS)
            self.fail(where, f"profile_column {column!r} is not one of: {allowed}")

        if len(self.problems) != before or kind is None or key is None:
            return None
        return IdentityRule(kind=kind, key=key, profile_column=column)


def load_routing(
    path: str | os.PathLike[str] | None = None, *, templates_dir: Path = TEMPLATES_DIR
) -> RoutingConfig:
    """Load and validate the routing file.

    :param path: the YAML file; default ``$TRIGGERFLOW_ROUTING_FILE``, else ``include/routing.yaml``.
    :param templates_dir: where template folders are looked up.
    :raises RoutingConfigError: the file is missing or invalid; the message lists every problem.
    """
    if path is None:
        path = os.environ.get(ROUTING_FILE_ENV) or DEFAULT_ROUTING_FILE
    return _Loader(Path(path), Path(templates_dir)).load()
