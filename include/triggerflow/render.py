"""Render a route's email (subject, text and HTML parts) from a profile and a trigger event.

Everything in the context comes from Adobe events or customer profiles, so it is untrusted:

* HTML templates are autoescaped (by file extension); templates never mark data ``|safe``.
* The subject is a mail header, so it is rendered without HTML escaping and refused when it would
  contain CR, LF, NUL or another line separator (U+2028...): header injection is impossible by
  construction, whatever a profile holds.
* ``StrictUndefined`` turns a missing variable into an error. A template bug or a missing profile
  column raises :class:`TemplateRenderError`; it never produces a blank or half-filled email.

**Locale variants.** A route's folder holds the default pair ``email.html``/``email.txt`` and may
hold variants ``email.<tag>.html``/``email.<tag>.txt`` (``email.fr.html``, ``email.fr-CA.html``).
The profile's locale (``fr_CA``, ``FR-ca``...) is normalised by :func:`locale_chain` into the
candidates, most specific first (``["fr-CA", "fr"]``); the first candidate with *both* files wins,
else the default pair. A variant is chosen as a pair so the text and HTML parts of one email never
speak different languages. The subject follows the same choice through ``route.subjects``.

The send stage renders thousands of emails per task, so a :class:`Renderer` compiles the templates
of each (route, variant) once and keeps them; the variants present in a folder are listed once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from types import BuiltinMethodType, TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape

from include.triggerflow import TEMPLATES_DIR
from include.triggerflow.content import clean_display_text, email_content

if TYPE_CHECKING:
    from include.triggerflow.config import TriggerRoute
    from include.triggerflow.content import EmailContent
    from include.triggerflow.events import TriggerEvent

__all__ = [
    "DEFAULT_DATETIME_FORMAT",
    "DEFAULT_LOCAL_DATETIME_FORMAT",
    "FILTERS",
    "CompiledRoute",
    "RenderedEmail",
    "Renderer",
    "TemplateRenderError",
    "build_context",
    "datetime_format",
    "http_url",
    "local_datetime",
    "locale_chain",
    "money",
    "normalize_locale",
]

DEFAULT_DATETIME_FORMAT = "%d %b %Y %H:%M UTC"
#: ``%Z`` prints the zone's abbreviation (``CET``, ``EDT``) or ``UTC`` after the fallback.
DEFAULT_LOCAL_DATETIME_FORMAT = "%d %b %Y %H:%M %Z"
HTML_TEMPLATE = "email.html"
TEXT_TEMPLATE = "email.txt"
# CR, LF, NUL and every other character str.splitlines() breaks on (VT, FF, FS, GS, RS, NEL, U+2028/9).
_HEADER_BREAKS = ("\r", "\n", "\0", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")

# BCP 47-ish: a 2-3 letter language, then subtags of 2-8 letters or digits. Only such a tag is ever
# put into a template file name, so no profile value can name a path ("../", "/", "\\", ".").
_LOCALE_RE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
_MAX_LOCALE_CHARS = 35  # RFC 5646 advises supporting tags of at least 35 characters
_VARIANT_RE = re.compile(r"email\.(?P<tag>[^./\\]+)\.(?P<ext>html|txt)")


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
    #: the locale variant of the templates used (``"fr"``, ``"fr-CA"``); None: the default pair.
    #: The send stage records it (``tf_send.locale``) so a report can say who got which language.
    locale: str | None = None


@dataclass(frozen=True)
class CompiledRoute:
    """The compiled templates of one route in one variant, reused for every email of that kind."""

    subject: Template
    text: Template
    html: Template
    #: the variant of the text/HTML pair (None: ``email.html``/``email.txt``)
    locale: str | None = None
    #: the ``route.subjects`` tag the subject came from (None: ``route.subject``)
    subject_locale: str | None = None


# -- locales -----------------------------------------------------------------------------------------
def normalize_locale(locale: Any) -> str | None:
    """``fr_CA``, ``FR-ca``, `` fr-CA `` → ``fr-CA``; None for anything that is not a plain tag.

    Case follows BCP 47 conventions (language lower, 2-letter region upper, 4-letter script title)
    so that ``email.fr-CA.html`` is found on case-sensitive file systems whatever the profile holds.
    POSIX suffixes (``fr_FR.UTF-8``, ``de_DE@euro``) are refused, not guessed at.
    """
    if not isinstance(locale, str):
        return None
    text = locale.strip().replace("_", "-")
    if not text or len(text) > _MAX_LOCALE_CHARS or not _LOCALE_RE.fullmatch(text):
        return None
    first, *rest = text.split("-")
    parts = [first.lower()]
    for sub in rest:
        if len(sub) == 2 and sub.isalpha():
            parts.append(sub.upper())
        elif len(sub) == 4 and sub.isalpha():
            parts.append(sub.title())
        else:
            parts.append(sub.lower())
    return "-".join(parts)


def locale_chain(locale: str | None) -> list[str]:
    """The variant tags to try for a profile locale, most specific first: ``fr_CA`` →
    ``["fr-CA", "fr"]``; ``[]`` for None, blank or anything that is not a BCP 47-ish tag.

    Every tag returned matches ``[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*``: it is safe in a file name.
    """
    tag = normalize_locale(locale)
    if tag is None:
        return []
    parts = tag.split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _route_subjects(route: TriggerRoute) -> dict[str, str]:
    """``{normalised tag: subject template}`` from ``route.subjects``.

    Read with getattr: routes built before the field existed (or by tests) have none. A tag that
    does not normalise is skipped here; the routing loader is where config typos are reported.
    """
    subjects: dict[str, str] = {}
    for item in route.subjects:
        try:
            tag, text = item
        except (TypeError, ValueError):
            continue
        key = normalize_locale(tag)
        if key is not None and isinstance(text, str) and key not in subjects:
            subjects[key] = text
    return subjects


# -- filters -----------------------------------------------------------------------------------------
def _raise_if_undefined(value: Any) -> None:
    # str() on a StrictUndefined raises UndefinedError naming the missing variable, which is far more
    # useful than a filter complaining about a value of type "StrictUndefined".
    if isinstance(value, jinja2.Undefined):
        str(value)


# (thousands separator, decimal mark, symbol after the amount) by language; anything else: English.
_MONEY_STYLES: dict[str, tuple[str, str, bool]] = {
    "en": (",", ".", False),
    "fr": ("\u202f", ",", True),  # narrow no-break space, as French typography writes 1 234,50 €
    "de": (".", ",", True),
    "es": (".", ",", True),
    "it": (".", ",", True),
    "nl": (".", ",", False),
    "pt": (".", ",", True),
}


def money(value: Any, symbol: str = "$", locale: str | None = None) -> str:
    """``19.5`` → ``$19.50``: two decimals (half-up), thousands separators, the symbol before the amount.

    ``locale`` (a tag such as ``fr`` or ``fr-CA``; its language decides) switches to that language's
    separators and symbol position: ``money(1234.5, "$", "fr")`` → ``1 234,50 $``, so a translated
    template does not show English number formatting. The currency itself is the caller's choice.

    Accepts int, float, Decimal and numeric strings (event payloads carry prices either way); anything
    else raises ValueError so a garbled price fails the render instead of showing a wrong amount.
    """
    _raise_if_undefined(value)
    if type(value) in _CACHEABLE_AMOUNTS and type(symbol) is str and (locale is None or type(locale) is str):
        # Prices repeat (a catalog): remember the formatted amounts (bounded; errors are not cached).
        return _money_cached(value, symbol, locale)
    return _money(value, symbol, locale)


def _money(value: Any, symbol: str, locale: str | None) -> str:
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
    chain = locale_chain(locale)
    thousands, decimal_mark, after = _MONEY_STYLES.get(chain[-1] if chain else "en", _MONEY_STYLES["en"])
    digits = f"{abs(amount):,.2f}"
    if (thousands, decimal_mark) != (",", "."):
        digits = digits.replace(",", "\0").replace(".", decimal_mark).replace("\0", thousands)
    if after:
        return f"{sign}{digits}\u00a0{symbol}" if symbol else f"{sign}{digits}"
    return f"{sign}{symbol}{digits}"


# What JSON payloads carry. typed: 1 and 1.0 are different keys, as are "1" and 1; equal floats
# (0.0 and -0.0 too) format the same.
_CACHEABLE_AMOUNTS = frozenset({int, float, str})
_money_cached = lru_cache(maxsize=4096, typed=True)(_money)


def _aware(value: Any, filter_name: str) -> datetime:
    _raise_if_undefined(value)
    if not isinstance(value, datetime):
        raise TypeError(f"{filter_name}: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{filter_name}: naive datetime (no time zone)")
    return value


def datetime_format(value: Any, fmt: str = DEFAULT_DATETIME_FORMAT) -> str:
    """strftime on an aware datetime, converted to UTC first (the default format says "UTC").

    Naive datetimes are refused: their time zone is unknown, so printing them as UTC could be wrong.
    """
    return _aware(value, "datetime_format").astimezone(UTC).strftime(fmt)


@lru_cache(maxsize=512)
def _zone(name: str) -> tzinfo:
    """The zone called ``name``, or UTC when it is not a zone this machine knows.

    Cached (bounded) because the send stage converts one time per email; zoneinfo refuses keys that
    would leave its data directory (``../``, absolute paths) with ValueError, caught like a typo.
    """
    key = name.strip()
    if not key or len(key) > 64:
        return UTC
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError):
        return UTC


def local_datetime(value: Any, tz_name: Any = None, fmt: str = DEFAULT_LOCAL_DATETIME_FORMAT) -> str:
    """strftime of an aware datetime in the customer's time zone (an IANA name, ``Europe/Paris``).

    A blank, unknown or non-string zone falls back to UTC, and the default format's ``%Z`` then says
    ``UTC``: a profile with a bad ``timezone`` column still gets a correct (if less friendly) time,
    never a failed email. A naive datetime is refused as in :func:`datetime_format`; a *missing*
    variable (StrictUndefined) still raises, because that is a template or context bug.
    """
    moment = _aware(value, "local_datetime")
    _raise_if_undefined(tz_name)
    zone = _zone(tz_name) if isinstance(tz_name, str) else UTC
    return moment.astimezone(zone).strftime(fmt)


def http_url(value: Any, required: bool = False) -> str:
    """The value if it is an absolute http(s) URL, else ``""`` (or ValueError when ``required``).

    Autoescaping stops a URL from breaking out of an ``href`` attribute but not ``javascript:`` or
    ``data:`` URLs, so links built from event data go through this filter first. ``required=True`` is
    for links an email must not go out without (the unsubscribe link): an empty ``href`` there would
    be a silent compliance failure, so the render fails instead.
    """
    _raise_if_undefined(value)
    result = _http_url(value)
    if required and not result:
        shown = value if not isinstance(value, str) else (value if len(value) <= 80 else value[:80] + "...")
        raise ValueError(f"http_url: {shown!r} is not an absolute http(s) URL")
    return result


# Whitespace (exactly what str.isspace() matches: both use Py_UNICODE_ISSPACE), C0 controls and DEL.
_URL_REFUSED = re.compile(r"[\s\x00-\x1f\x7f]")


def _http_url(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    if type(value) is str and len(value) <= _URL_CACHE_MAX_CHARS:
        # Every email checks the same catalog and page URLs: remember the answers (bounded).
        return _http_url_cached(value)
    return _check_http_url(value)


_URL_CACHE_MAX_CHARS = 2048


def _check_http_url(value: str) -> str:
    text = value.strip()
    if not text or _URL_REFUSED.search(text) is not None:
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    return text


_http_url_cached = lru_cache(maxsize=4096)(_check_http_url)


def last_page_ending(pages: Any, suffix: str, default: str = "") -> str:
    """The last http(s) page URL of ``pages`` whose path ends with ``suffix`` (case-insensitive,
    trailing "/" ignored), else ``default``: e.g. the cart page a visitor left, for the button."""
    _raise_if_undefined(pages)
    found = default
    for page in pages or ():
        url = http_url(page)
        if url and url.rstrip("/").lower().endswith(suffix.lower()):
            found = url
    return found


FILTERS: dict[str, Callable[..., Any]] = {
    "money": money,
    "datetime_format": datetime_format,
    "local_datetime": local_datetime,
    "http_url": http_url,
    "last_page_ending": last_page_ending,
}


# -- context -----------------------------------------------------------------------------------------
def build_context(
    *,
    profile: Mapping[str, Any],
    event: TriggerEvent,
    route: TriggerRoute,
    content: EmailContent | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template context: ``profile``, ``event`` (a plain dict view of the trigger), ``links``
    (the route's configured URLs) and ``extra``.

    Nothing of the event's payload reaches the context except through ``content``
    (:func:`content.email_content`): its products, pages and dimensions, every URL checked against
    the route's link_hosts. The send stage passes the content it built with the chunk's catalogue;
    without one it is built here with an empty catalogue (a catalogue-mode route then shows no
    products). ``extra`` (e.g. ``unsubscribe_url``, which the base layouts require) is merged at
    the top level, last, so a caller can override.
    """
    if content is None:
        locale = profile.get("locale")
        content = email_content(event, route, {}, locale if isinstance(locale, str) else None)
    return {
        "profile": dict(profile),
        "event": {
            # a catch-all route takes any trigger id: then it is event text like any other
            "trigger_id": route.trigger_id if not route.is_catch_all else clean_display_text(event.trigger_id)[0],
            "name": route.name,
            "triggered_at": event.triggered_at,
            "pages": list(content.pages),
            "products": [product.as_context() for product in content.products],
            "dimensions": {name: list(values) for name, values in content.dimensions.items()},
        },
        "links": dict(content.links),
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


class _Context(jinja2.runtime.Context):
    """Jinja's template context with a direct path for calls of built-in methods.

    Templates call ``item.get("url")`` several times per product; ``Context.call`` first looks for
    ``pass_context``/``pass_environment`` markers, which a built-in method (C code) can never carry,
    so for those the call is made directly, with the same StopIteration handling."""

    def call(__self, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if type(__obj) is BuiltinMethodType:
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            try:
                return __obj(*args, **kwargs)
            except StopIteration:
                return __self.environment.undefined(
                    "value was undefined because a callable raised a StopIteration exception"
                )
        return super().call(__obj, *args, **kwargs)


class Renderer:
    """One Jinja environment per templates folder; each (route, variant) compiled once and cached.

    Thread-safe: compiled templates are immutable, and the caches are filled under a lock. The cache
    keys are the *chosen* variant and subject tag (bounded by the files and the routing config), not
    the profile's locale, so odd locales in the data cannot grow the cache.
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
        self.env.context_class = _Context
        self.env.filters.update(FILTERS)
        self._compiled: dict[tuple[TriggerRoute, str | None, str | None], CompiledRoute] = {}
        self._variants: dict[str, dict[str, tuple[str, str]]] = {}
        self._lock = threading.Lock()
        # (id(route), profile locale) -> (route, compiled): the per-email look-up of render(). Keyed
        # on the route's identity (hashing a route hashes every field of its config) and kept with
        # the route itself, so an id reused by another object never matches; cleared when large, so
        # odd locales in the data cannot grow it without bound.
        self._by_locale: dict[tuple[int, Any], tuple[TriggerRoute, CompiledRoute]] = {}

    # -- variants ------------------------------------------------------------------------------------
    def variants(self, template: str) -> dict[str, tuple[str, str]]:
        """``{tag: (html name, text name)}`` of the complete locale variants in a route's folder.

        Listed once per folder. A variant with only one of its two files is left out (the default
        pair is used instead), so a half-translated folder can never mix languages in one email.
        """
        cached = self._variants.get(template)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._variants.get(template)
            if cached is None:
                cached = self._list_variants(template)
                self._variants[template] = cached
            return cached

    def _list_variants(self, template: str) -> dict[str, tuple[str, str]]:
        folder = self.templates_dir / template
        found: dict[str, dict[str, str]] = {}
        try:
            names = sorted(entry.name for entry in folder.iterdir() if entry.is_file())
        except OSError:
            return {}  # a missing folder is reported when the default pair is loaded
        for name in names:
            match = _VARIANT_RE.fullmatch(name)
            tag = normalize_locale(match["tag"]) if match else None
            if match is None or tag is None:
                continue
            files = found.setdefault(tag, {})
            if match["ext"] in files:
                raise TemplateRenderError(
                    f"template folder {template!r}: {files[match['ext']]} and {name} are both the "
                    f"{tag!r} variant; keep one",
                    template=f"{template}/{name}",
                )
            files[match["ext"]] = name
        return {
            tag: (f"{template}/{files['html']}", f"{template}/{files['txt']}")
            for tag, files in found.items()
            if "html" in files and "txt" in files
        }

    def choose(self, route: TriggerRoute, locale: str | None) -> tuple[str | None, str | None]:
        """``(variant, subject tag)`` for a profile locale; None means the default of each.

        The subject is the one of the chosen variant when ``route.subjects`` has it, else the one of
        the first candidate in the locale chain that has one, else ``route.subject``.
        """
        chain = locale_chain(locale)
        if not chain:
            return None, None
        variants = self.variants(route.template)
        variant = next((tag for tag in chain if tag in variants), None)
        subjects = _route_subjects(route)
        if variant is not None and variant in subjects:
            return variant, variant
        return variant, next((tag for tag in chain if tag in subjects), None)

    # -- compiling -----------------------------------------------------------------------------------
    def compiled(self, route: TriggerRoute, locale: str | None = None) -> CompiledRoute:
        """The compiled templates of ``route`` for a profile ``locale`` (compiled on first use)."""
        variant, subject_tag = self.choose(route, locale)
        key = (route, variant, subject_tag)
        cached = self._compiled.get(key)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._compiled.get(key)
            if cached is None:
                cached = self._compile(route, variant, subject_tag)
                self._compiled[key] = cached
            return cached

    def _compile(self, route: TriggerRoute, variant: str | None, subject_tag: str | None) -> CompiledRoute:
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

        subject_source = route.subject if subject_tag is None else _route_subjects(route)[subject_tag]
        label = _subject_label(subject_tag)
        try:
            # from_string on this environment: no autoescape (default_for_string=False), as a header needs.
            subject = self.env.from_string(subject_source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateRenderError(
                f"route {route.name!r}: {label} is not a valid Jinja template: {exc.message}",
                route=route.name,
                template=label,
            ) from exc
        if variant is None:
            html_name, text_name = f"{route.template}/{HTML_TEMPLATE}", f"{route.template}/{TEXT_TEMPLATE}"
        else:
            html_name, text_name = self.variants(route.template)[variant]
        return CompiledRoute(
            subject=subject,
            text=load(text_name),
            html=load(html_name),
            locale=variant,
            subject_locale=subject_tag,
        )

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, route: TriggerRoute, context: Mapping[str, Any], locale: str | None = None) -> RenderedEmail:
        """Render the subject, text and HTML parts of ``route``'s email in the best variant for
        ``locale`` (the profile's locale; None: the default templates).

        :raises TemplateRenderError: a template is missing or invalid, a variable is undefined, a filter
            refused a value, or the subject would contain a line break.
        """
        compiled = self._compiled_for(route, locale)
        label = _subject_label(compiled.subject_locale)
        subject = self._render(route, compiled.subject, label, context).strip()
        if any(char in subject for char in _HEADER_BREAKS):
            raise TemplateRenderError(
                f"route {route.name!r}: {label} would contain a line break (CR, LF, NUL or another line separator) after "
                f"rendering; refusing to build a Subject header from it: {subject[:80]!r}",
                route=route.name,
                template=label,
            )
        if not subject:
            raise TemplateRenderError(f"route {route.name!r}: {label} rendered empty", route=route.name, template=label)
        return RenderedEmail(
            subject=subject,
            text=self._render(route, compiled.text, str(compiled.text.name), context),
            html=self._render(route, compiled.html, str(compiled.html.name), context),
            locale=compiled.locale,
        )

    def _compiled_for(self, route: TriggerRoute, locale: str | None) -> CompiledRoute:
        try:
            key = (id(route), locale)
            hit = self._by_locale.get(key)
        except TypeError:  # an unhashable locale value: not remembered
            return self.compiled(route, locale)
        if hit is not None and hit[0] is route:
            return hit[1]
        compiled = self.compiled(route, locale)
        if len(self._by_locale) >= _BY_LOCALE_MAX:
            self._by_locale.clear()
        self._by_locale[key] = (route, compiled)
        return compiled

    def _render(self, route: TriggerRoute, template: Template, label: str, context: Mapping[str, Any]) -> str:
        try:
            return _render_template(template, context)
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


_BY_LOCALE_MAX = 1024
# id(template) -> (template, its globals as a plain dict)
_TEMPLATE_GLOBALS: dict[int, tuple[Template, dict[str, Any]]] = {}


def _render_template(template: Template, context: Mapping[str, Any]) -> str:
    """``template.render(context)`` without re-reading the template's globals on every call.

    ``Template.render`` builds the context's variables as ``dict(template.globals, **context)``,
    where ``template.globals`` is a ChainMap (template globals over environment globals) that is
    iterated twice per render (a noticeable share of a small email's render). Here it is flattened
    once per template; the Context is built from the same values, and errors go through Jinja's
    own ``handle_exception`` (template file and line in the traceback), as in ``Template.render``."""
    hit = _TEMPLATE_GLOBALS.get(id(template))
    if hit is None or hit[0] is not template:
        hit = (template, dict(template.globals))
        if len(_TEMPLATE_GLOBALS) >= 4096:
            _TEMPLATE_GLOBALS.clear()
        _TEMPLATE_GLOBALS[id(template)] = hit
    flat = hit[1]
    environment = template.environment
    ctx = environment.context_class(environment, {**flat, **context}, template.name, template.blocks, globals=flat)
    try:
        return environment.concat(template.root_render_func(ctx))  # type: ignore[attr-defined]
    except Exception:
        environment.handle_exception()
        raise  # pragma: no cover - handle_exception always raises


def _subject_label(tag: str | None) -> str:
    return "subject" if tag is None else f"subject ({tag})"
