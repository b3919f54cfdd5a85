"""The routing file's shape, as pydantic v2 models: which keys each section takes, which it needs.

Every section of the file (the top level, ``defaults``, a trigger route, its ``identity``,
``rules``, ``frequency_cap`` and ``quiet_hours``, the ``campaign`` section and its handlers) and of
a pasted ``NmsPipeline_Config`` option has a model with ``extra="forbid"``. :func:`shape_problems`
validates a raw mapping against one and turns pydantic's ``extra_forbidden`` / ``invalid_key`` and
``missing`` errors into the messages data engineers know: ``unknown key 'subjet' (expected one of:
...); did you mean 'subject'?`` (difflib over the model's field names) and ``missing required keys:
subject, identity``.

Why the fields are ``object``: the loader's value checks carry messages that name the value and how
to fix it (``got 42``, ``a quoted 24-hour time such as '21:00'``), depend on other keys (``links``
need ``link_hosts``), on the file as a whole (unique names and trigger ids, ``defaults.rules``
merged under each route) and on disk (template folders). Those stay in the typed checks of
:mod:`.sections`, which build the frozen dataclasses of :mod:`.model`; pydantic owns the keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from include.triggerflow import PROJECT_ROOT


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- the routing file ----------------------------------------------------------------------------
class RoutingFileShape(_Section):
    """The top level. ``triggers`` is required unless a ``campaign`` section gives the routes."""

    version: object
    triggers: object = None
    campaign: object = None
    defaults: object = None


#: the top-level keys messages list: ``campaign`` and ``defaults`` are optional and rarer
USUAL_TOP_KEYS = ("version", "triggers")


class DefaultsShape(_Section):
    rules: object = None


class RulesShape(_Section):
    suppress: object = None
    dedup_window: object = None
    validity: object = None
    frequency_cap: object = None
    quiet_hours: object = None


class FrequencyCapShape(_Section):
    max: object
    per: object


class QuietHoursShape(_Section):
    start: object
    end: object
    default_timezone: object = None


class IdentityShape(_Section):
    dimension: object = None
    field: object = None
    profile_column: object


class RouteShape(_Section):
    """A trigger of the ``triggers`` list: the five keys every route needs, then optional ones."""

    name: object
    trigger_id: object
    template: object
    subject: object
    identity: object
    multiple_profiles: object = None
    profile_order: object = None
    rules: object = None
    # what a route's emails may show of an event (issue 11)
    products: object = None
    link_hosts: object = None
    allow_http: object = None
    links: object = None


#: the content keys a route and a Campaign handler both take
CONTENT_KEYS = ("products", "link_hosts", "allow_http", "links")


class CampaignShape(_Section):
    config: object = None
    config_json: object = None
    handlers: object


class HandlerShape(_Section):
    """What a Campaign ``jsConnector`` becomes: a route without name, trigger id and rules."""

    template: object
    subject: object
    identity: object
    products: object = None
    link_hosts: object = None
    allow_http: object = None
    links: object = None


HANDLER_KEYS = ("template", "subject", "identity")


# -- a pasted NmsPipeline_Config option (Campaign's JSON) ------------------------------------------
class OptionShape(_Section):
    topics: object = None


class TopicShape(_Section):
    name: object = None
    consumer: object = None
    triggers: object = None


class OptionTriggerShape(_Section):
    name: object = None
    js_connector: object = Field(default=None, alias="jsConnector")


# -- turning pydantic's errors into the file's messages ---------------------------------------------
def field_names(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys a section takes, as written in the file (aliases), in the model's order."""
    return tuple(info.alias or name for name, info in model.model_fields.items())


def unknown_key(key: object, expected: tuple[str, ...], also: tuple[str, ...] = ()) -> str:
    """``unknown key 'x' (expected one of: ...)``, with a "did you mean" from ``expected``, else from
    ``also`` (keys accepted but not listed, such as the top level's ``campaign``)."""
    message = f"unknown key {key!r} (expected one of: {', '.join(expected)})"
    if isinstance(key, str):
        close = difflib.get_close_matches(key, expected, n=1) or difflib.get_close_matches(key, also, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    return message


def missing_keys(missing: list[str]) -> str:
    return f"missing required key{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"


def shape_errors(model: type[BaseModel], data: Mapping[object, object]) -> tuple[list[object], list[str]]:
    """``(unknown keys in the file's order, missing required keys in the model's order)``."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        unknown: list[object] = []
        missing: list[str] = []
        for error in exc.errors():
            key = error["loc"][-1] if error["loc"] else None
            if error["type"] in ("extra_forbidden", "invalid_key"):
                unknown.append(key)
            elif error["type"] == "missing" and isinstance(key, str):
                missing.append(key)
        order = {key: index for index, key in enumerate(data)}
        return sorted(unknown, key=lambda key: order.get(key, len(order))), missing
    return [], []


def shape_problems(
    model: type[BaseModel], data: Mapping[object, object], *, shown: tuple[str, ...] | None = None
) -> list[str]:
    """Every unknown key, then the missing required keys (one line), of ``data`` as a ``model``.

    :param shown: the keys messages list as expected (default: all of the model's keys)."""
    names = field_names(model)
    unknown, missing = shape_errors(model, data)
    problems = [unknown_key(key, shown or names, names) for key in unknown]
    if missing:
        problems.append(missing_keys(missing))
    return problems


# -- small wording helpers shared by the loader and the Campaign parser -----------------------------
def display_path(path: Path) -> str:
    """A path as people see it in the repo (``include/routing.yaml``), absolute when outside it."""
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path)


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__
