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
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
import yaml

from include.triggerflow import DEFAULT_ROUTING_FILE, PROJECT_ROOT, TEMPLATES_DIR

if TYPE_CHECKING:
    from include.triggerflow.events import TriggerEvent

__all__ = [
    "CATCH_ALL",
    "EVENT_FIELDS",
    "PROFILE_IDENTITY_COLUMNS",
    "ROUTING_FILE_ENV",
    "IdentityRule",
    "RoutingConfig",
    "RoutingConfigError",
    "TriggerRoute",
    "load_routing",
]

ROUTING_FILE_ENV = "TRIGGERFLOW_ROUTING_FILE"
CATCH_ALL = "*"
SUPPORTED_VERSION = 1

#: Profile columns an event may be matched on (the indexed identity columns of the profiles table).
PROFILE_IDENTITY_COLUMNS = ("customer_id", "email", "shopper_id", "ecid", "declared_id")
#: Trigger fields usable as identity (``TriggerEvent.field_value`` names).
EVENT_FIELDS = ("mcId", "messageId")

TEMPLATE_FILES = ("email.html", "email.txt")

_TOP_KEYS = ("version", "triggers")
_ROUTE_KEYS = ("name", "trigger_id", "template", "subject", "identity")
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
class TriggerRoute:
    """One configured trigger: which template to send and how to find the profile."""

    name: str
    trigger_id: str
    template: str
    subject: str
    identity: IdentityRule

    @property
    def is_catch_all(self) -> bool:
        return self.trigger_id == CATCH_ALL


@dataclass(frozen=True)
class RoutingConfig:
    """The loaded routing file. Look-ups are by dict: ``route_for`` runs once per event."""

    path: Path
    routes: tuple[TriggerRoute, ...]
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

    def describe(self) -> dict[str, str]:
        """``{trigger_id: template}``, the routing map as Campaign's ``pipelined`` status page shows it."""
        return {route.trigger_id: route.template for route in self.routes}


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
            return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
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

        for problem in _check_keys(data, _TOP_KEYS, _TOP_KEYS):
            self.fail(None, problem)
        if "version" in data:
            version = data["version"]
            if isinstance(version, bool) or version != SUPPORTED_VERSION:
                self.fail(None, f"version must be {SUPPORTED_VERSION}, got {version!r}")

        routes: list[TriggerRoute] = []
        if "triggers" in data:
            triggers = data["triggers"]
            if triggers is None or triggers == []:  # `triggers:` with nothing under it is null
                self.fail(None, "'triggers' is empty: configure at least one trigger")
            elif not isinstance(triggers, list):
                self.fail(None, f"'triggers' must be a list of trigger entries, got {_type_name(triggers)}")
            else:
                routes = self.load_routes(triggers)

        if self.problems:
            raise RoutingConfigError(self.problems)
        return RoutingConfig(path=self.path, routes=tuple(routes))

    def load_routes(self, triggers: list[Any]) -> list[TriggerRoute]:
        routes: list[TriggerRoute] = []
        names: dict[str, str] = {}
        ids: dict[str, str] = {}
        for index, entry in enumerate(triggers):
            where = f"triggers[{index}]"
            if not isinstance(entry, dict):
                self.fail(where, f"entry must be a mapping, got {_type_name(entry)}")
                continue
            name = entry.get("name")
            if isinstance(name, str) and name:
                where = f"{where} ({name})"
            before = len(self.problems)
            for problem in _check_keys(entry, _ROUTE_KEYS, _ROUTE_KEYS):
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
            if "subject" in entry:
                self.check_subject(where, entry["subject"])
            identity = self.load_identity(where, entry["identity"]) if "identity" in entry else None

            if len(self.problems) == before and identity is not None:
                routes.append(
                    TriggerRoute(
                        name=name,
                        trigger_id=trigger_id,
                        template=entry["template"],
                        subject=entry["subject"],
                        identity=identity,
                    )
                )
        return routes

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

    def load_identity(self, where: str, identity: Any) -> IdentityRule | None:
        where = f"{where}: identity"
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
