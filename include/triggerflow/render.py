"""Render a route's email (subject, text and HTML parts) from a profile and a trigger event.

Everything in the context comes from Adobe events or customer profiles, so it is untrusted:

* HTML templates are autoescaped (by file extension); templates never mark data ``|safe``.
* The subject is a mail header, so it is rendered without HTML escaping and refused when it would
  contain CR, LF or NUL: header injection is impossible by construction, whatever a profile holds.
* ``StrictUndefined`` turns a missing variable into an error. A template bug or a missing profile
  column raises :class:`TemplateRenderError`; it never produces a blank or half-filled email.

The send stage renders thousands of emails per task, so a :class:`Renderer` compiles each route's
three templates once and keeps them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jinja2
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape

from include.triggerflow import TEMPLATES_DIR

if TYPE_CHECKING:
    from include.triggerflow.config import TriggerRoute
    from include.triggerflow.events import TriggerEvent

__all__ = [
    "DEFAULT_DATETIME_FORMAT",
    "FILTERS",
    "CompiledRoute",
    "RenderedEmail",
    "Renderer",
    "TemplateRenderError",
    "build_context",
    "datetime_format",
    "http_url",
    "money",
]

DEFAULT_DATETIME_FORMAT = "%d %b %Y %H:%M UTC"
HTML_TEMPLATE = "email.html"
TEXT_TEMPLATE = "email.txt"
_HEADER_BREAKS = ("\r", "\n", "\0")


class TemplateRenderError(Exception):
    """A route's email could not be rendered; the message names the route, the template and why."""

    def __init__(self, message: str, *, route: str | None = None, template: str | None = None) -> None:
        super().__init__(message)
        self.route = route
        self.template = template


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class CompiledRoute:
    """The compiled templates of one route, reused for every email of that route."""

    subject: Template
    text: Template
    html: Template


# -- filters -----------------------------------------------------------------------------------------
def _raise_if_undefined(value: Any) -> None:
    # str() on a StrictUndefined raises UndefinedError naming the missing variable, which is far more
    # useful than a filter complaining about a value of type "StrictUndefined".
    if isinstance(value, jinja2.Undefined):
        str(value)


def money(value: Any, symbol: str = "$") -> str:
    """``19.5`` → ``$19.50``: two decimals (half-up), thousands separators, the symbol before the amount.

    Accepts int, float, Decimal and numeric strings (event payloads carry prices either way); anything
    else raises ValueError so a garbled price fails the render instead of showing a wrong amount.
    """
    _raise_if_undefined(value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"money: {value!r} is not a number")
    try:
        # str() first so a float such as 2.675 rounds as written, not as its binary approximation.
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"money: {str(value)[:40]!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"money: {value!r} is not a finite number")
    amount = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{abs(amount):,.2f}"


def datetime_format(value: Any, fmt: str = DEFAULT_DATETIME_FORMAT) -> str:
    """strftime on an aware datetime, converted to UTC first (the default format says "UTC").

    Naive datetimes are refused: their time zone is unknown, so printing them as UTC could be wrong.
    """
    _raise_if_undefined(value)
    if not isinstance(value, datetime):
        raise TypeError(f"datetime_format: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime_format: naive datetime (no time zone)")
    return value.astimezone(timezone.utc).strftime(fmt)


def http_url(value: Any) -> str:
    """The value if it is an absolute http(s) URL, else ``""``.

    Autoescaping stops a URL from breaking out of an ``href`` attribute but not ``javascript:`` or
    ``data:`` URLs, so links built from event data go through this filter first.
    """
    _raise_if_undefined(value)
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if not text or any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    return text


FILTERS: dict[str, Callable[..., Any]] = {
    "money": money,
    "datetime_format": datetime_format,
    "http_url": http_url,
}


# -- context -----------------------------------------------------------------------------------------
def build_context(
    *,
    profile: Mapping[str, Any],
    event: TriggerEvent,
    route: TriggerRoute,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template context: ``profile``, ``event`` (a plain dict view of the trigger) and ``extra``.

    ``extra`` (e.g. ``unsubscribe_url``) is merged at the top level, last, so a caller can override.
    """
    return {
        "profile": dict(profile),
        "event": {
            "trigger_id": event.trigger_id,
            "name": route.name,
            "triggered_at": event.triggered_at,
            "pages": event.pages(),
            "products": event.product_list(),
            "dimensions": {name: list(event.dimension_values(name)) for name in event.dimensions},
        },
        **(extra or {}),
    }


# -- renderer ----------------------------------------------------------------------------------------
def _error_location(exc: BaseException, templates_dir: Path) -> tuple[str, int] | None:
    """Where in a template an error was raised: ``("cart_abandonment/email.html", 12)``.

    Jinja rewrites tracebacks so that frames of compiled templates carry the template's file name and
    source line. The innermost such frame is kept because the failing line may be in an extended
    template (base.html) rather than the one rendered.
    """
    found: tuple[str, int] | None = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename == "<template>":
            found = (filename, tb.tb_lineno)
        else:
            try:
                found = (Path(filename).relative_to(templates_dir).as_posix(), tb.tb_lineno)
            except ValueError:
                pass
        tb = tb.tb_next
    return found


class Renderer:
    """One Jinja environment per templates folder; each route's templates compiled once and cached.

    Thread-safe: compiled templates are immutable, and the cache is filled under a lock.
    """

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.templates_dir = Path(templates_dir)
        self.env = Environment(
            loader=FileSystemLoader(str(self.templates_dir)),
            autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"), default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            # Templates do not change during a task; skip the mtime check Jinja does on each lookup.
            auto_reload=False,
        )
        self.env.filters.update(FILTERS)
        self._compiled: dict[TriggerRoute, CompiledRoute] = {}
        self._lock = threading.Lock()

    def compiled(self, route: TriggerRoute) -> CompiledRoute:
        """The compiled templates of ``route`` (compiled on first use)."""
        cached = self._compiled.get(route)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._compiled.get(route)
            if cached is None:
                cached = self._compile(route)
                self._compiled[route] = cached
            return cached

    def _compile(self, route: TriggerRoute) -> CompiledRoute:
        def load(name: str) -> Template:
            try:
                return self.env.get_template(name)
            except jinja2.TemplateNotFound as exc:
                raise TemplateRenderError(
                    f"route {route.name!r}: template {exc.name!r} not found in {self.templates_dir}",
                    route=route.name,
                    template=name,
                ) from exc
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateRenderError(
                    f"route {route.name!r}: template {exc.name or name}, line {exc.lineno}: {exc.message}",
                    route=route.name,
                    template=exc.name or name,
                ) from exc

        try:
            # from_string on this environment: no autoescape (default_for_string=False), as a header needs.
            subject = self.env.from_string(route.subject)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateRenderError(
                f"route {route.name!r}: subject is not a valid Jinja template: {exc.message}",
                route=route.name,
                template="subject",
            ) from exc
        return CompiledRoute(
            subject=subject,
            text=load(f"{route.template}/{TEXT_TEMPLATE}"),
            html=load(f"{route.template}/{HTML_TEMPLATE}"),
        )

    def render(self, route: TriggerRoute, context: Mapping[str, Any]) -> RenderedEmail:
        """Render the subject, text and HTML parts of ``route``'s email.

        :raises TemplateRenderError: a template is missing or invalid, a variable is undefined, a filter
            refused a value, or the subject would contain a line break.
        """
        compiled = self.compiled(route)
        subject = self._render(route, compiled.subject, "subject", context).strip()
        if any(char in subject for char in _HEADER_BREAKS):
            raise TemplateRenderError(
                f"route {route.name!r}: subject would contain a line break (CR, LF or NUL) after "
                f"rendering; refusing to build a Subject header from it: {subject[:80]!r}",
                route=route.name,
                template="subject",
            )
        if not subject:
            raise TemplateRenderError(
                f"route {route.name!r}: subject rendered empty", route=route.name, template="subject"
            )
        return RenderedEmail(
            subject=subject,
            text=self._render(route, compiled.text, f"{route.template}/{TEXT_TEMPLATE}", context),
            html=self._render(route, compiled.html, f"{route.template}/{HTML_TEMPLATE}", context),
        )

    def _render(self, route: TriggerRoute, template: Template, label: str, context: Mapping[str, Any]) -> str:
        try:
            return template.render(context)
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            location = _error_location(exc, self.templates_dir)
            if location is None:
                where = label
            elif location[0] == "<template>":
                where = f"{label}, line {location[1]}"
            else:
                where = f"{location[0]}, line {location[1]}"
            kind = "undefined variable" if isinstance(exc, jinja2.UndefinedError) else type(exc).__name__
            message = getattr(exc, "message", None) or str(exc)
            raise TemplateRenderError(
                f"route {route.name!r}: {where}: {kind}: {message}", route=route.name, template=label
            ) from exc
