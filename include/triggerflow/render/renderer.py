"""The renderer: a route's templates compiled once per (route, variant) and rendered per email.

Everything in the context comes from Adobe events or customer profiles, so it is untrusted:

* HTML templates are autoescaped (by file extension); templates never mark data ``|safe``.
* The subject is a mail header, so it is rendered without HTML escaping and refused when it would
  contain CR, LF, NUL or another line separator (``headers.LINE_BREAKS``, U+2028...): header
  injection is impossible by construction, whatever a profile holds.
* ``StrictUndefined`` turns a missing variable into an error. A template bug or a missing profile
  column raises :class:`TemplateRenderError`; it never produces a blank or half-filled email.

**Locale variants.** A route's folder holds the default pair ``email.html``/``email.txt`` and may
hold variants ``email.<tag>.html``/``email.<tag>.txt`` (``email.fr.html``, ``email.fr-CA.html``).
The profile's locale (``fr_CA``, ``FR-ca``...) is turned by :func:`locales.locale_chain` into the
candidates, most specific first (``["fr-CA", "fr"]``); the first candidate with *both* files wins,
else the default pair. A variant is chosen as a pair so the text and HTML parts of one email never
speak different languages. The subject follows the same choice through ``route.subjects``.

The send stage renders thousands of emails per task (its hot path), so a :class:`Renderer`
compiles the templates of each (route, variant) once and keeps them, lists the variants of a
folder once, and remembers the compiled route per (route, profile locale).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import BuiltinMethodType, TracebackType
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape

from include.triggerflow import TEMPLATES_DIR
from include.triggerflow.headers import has_line_break
from include.triggerflow.locales import locale_chain, normalize_locale
from include.triggerflow.render.filters import FILTERS

if TYPE_CHECKING:
    from include.triggerflow.config import TriggerRoute

__all__ = ["CompiledRoute", "RenderedEmail", "Renderer", "TemplateRenderError"]

HTML_TEMPLATE = "email.html"
TEXT_TEMPLATE = "email.txt"
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


def _route_subjects(route: TriggerRoute) -> dict[str, str]:
    """``{normalised tag: subject template}`` from ``route.subjects``.

    A malformed item or a tag that does not normalise is skipped here; the routing loader is where
    config typos are reported.
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


#: the names ``d.name`` finds on a dict itself (``items``, ``get``...): Jinja prefers them to a key
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Environment(Environment):
    """Jinja's environment with a direct path for ``d.name`` on a plain dict.

    Templates read the context's dicts by attribute (``profile.first_name``, ``item.name``: ~50
    per email); Jinja's ``getattr`` tries the attribute first and takes the key when that raises,
    ~1 µs per look-up on the exception. A dict instance has no attributes of its own, so unless the
    name is one of the dict class's, the key is the answer: the same result, without the raise."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


class Renderer:
    """One Jinja environment per templates folder; each (route, variant) compiled once and cached.

    Thread-safe: compiled templates are immutable, and the caches are filled under a lock. The cache
    keys are the *chosen* variant and subject tag (bounded by the files and the routing config), not
    the profile's locale, so odd locales in the data cannot grow the cache.
    """

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.templates_dir = Path(templates_dir)
        self.env = _Environment(
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
        if has_line_break(subject):
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
        return environment.concat(template.root_render_func(ctx))
    except Exception:
        environment.handle_exception()
        raise  # pragma: no cover - handle_exception always raises


def _subject_label(tag: str | None) -> str:
    return "subject" if tag is None else f"subject ({tag})"
