"""Campaign's ``NmsPipeline_Config`` option, pasted into the routing file or parsed on its own.

Campaign keeps its routing in this option, a JSON map of trigger UID (or ``"*"``) to a JS connector
(reference/adobe-triggers.md §3.1). The option is parsed as strict JSON, as Campaign does (Adobe's
documented sample has comments and a trailing comma: both are rejected with the line, the column
and how to fix it). Each trigger of the ``triggers`` topic becomes a route named ``campaign_<first 8
characters of the UID>`` (``campaign_all`` for ``"*"``, see :func:`campaign_route_name`); an
``aliases`` topic is accepted and only shown in the status document.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from include.triggerflow.config.model import CATCH_ALL, RoutingConfigError
from include.triggerflow.config.schema import (
    OptionShape,
    OptionTriggerShape,
    TopicShape,
    display_path,
    field_names,
    shape_errors,
    unknown_key,
)

CAMPAIGN_TRIGGERS_TOPIC = "triggers"
CAMPAIGN_ALIASES_TOPIC = "aliases"
_CAMPAIGN_TOPICS = (CAMPAIGN_TRIGGERS_TOPIC, CAMPAIGN_ALIASES_TOPIC)
_STRICT_JSON_HINT = "remove comments: the option must be strict JSON"
_START_HINT = "the option should start with '[' or '{'"

#: what ``json.loads`` gives: the option is untrusted text until the parser has walked it
JsonValue = object

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


class _JsonObject(dict[str, JsonValue]):
    """A JSON object that remembers its repeated keys: ``json.loads`` would silently keep the last."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, JsonValue]]) -> _JsonObject:
    obj = _JsonObject()
    repeated: list[str] = []
    for key, value in pairs:
        if key in obj and key not in repeated:
            repeated.append(key)
        obj[key] = value
    obj.duplicates = tuple(repeated)
    return obj


def _json_type(value: JsonValue) -> str:
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

    def keys(self, where: str | None, obj: Mapping[object, JsonValue], shape: type[BaseModel]) -> None:
        """Repeated keys, then keys the option's ``shape`` does not take (missing keys get their own
        messages below: each says what the key is for)."""
        for key in getattr(obj, "duplicates", ()):
            self.fail(where, f"key {key!r} appears more than once in this object")
        allowed = field_names(shape)
        for key in shape_errors(shape, obj)[0]:
            problem = unknown_key(key, allowed)
            if "did you mean" not in problem:
                problem += "; triggerflow does not support it: remove it"
            self.fail(where, problem)

    def parse(self, data: JsonValue) -> CampaignConfig | None:
        if not isinstance(data, dict):
            self.fail(None, f"top level must be an object with 'topics', got {_json_type(data)}")
            return None
        self.keys(None, data, OptionShape)
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

    def topic(self, where: str, raw: JsonValue, seen: dict[str, str]) -> CampaignTopic | None:
        if not isinstance(raw, dict):
            self.fail(where, f"a topic must be an object, got {_json_type(raw)}")
            return None
        before = len(self.problems)
        self.keys(where, raw, TopicShape)
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

    def trigger(self, where: str, raw: JsonValue, names: dict[str, str]) -> CampaignTrigger | None:
        if not isinstance(raw, dict):
            self.fail(where, f"a trigger must be an object with 'name' and 'jsConnector', got {_json_type(raw)}")
            return None
        before = len(self.problems)
        self.keys(where, raw, OptionTriggerShape)
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
        if len(self.problems) != before or not isinstance(name, str) or not isinstance(connector, str):
            return None
        return CampaignTrigger(name=name, js_connector=connector, path=where)


def parse_campaign_text(text: str, origin: str) -> tuple[CampaignConfig | None, list[str]]:
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


def read_campaign_file(path: Path) -> str:
    shown = display_path(path)
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
        text, shown = read_campaign_file(path), display_path(path)
    else:
        raw = str(text_or_path)
        stripped = raw.lstrip("\ufeff \t\r\n")
        looks_like_json = not stripped or stripped[0] in "{["
        candidate = None if looks_like_json or "\n" in raw else Path(raw)
        if candidate is not None and (
            candidate.exists() or candidate.suffix.lower() == ".json" or os.sep in raw or "/" in raw
        ):
            text, shown = read_campaign_file(candidate), display_path(candidate)
        else:
            text, shown = raw, "NmsPipeline_Config"
    config, problems = parse_campaign_text(text, origin or shown)
    if problems or config is None:
        raise CampaignConfigError(problems)
    return config


def campaign_route_name(trigger_id: str, taken: set[str]) -> str:
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


