"""Render a route's email (subject, text and HTML parts) from a profile and a trigger event.

One module per concern:

* :mod:`.filters` — the Jinja filters (``money`` through Babel/CLDR, dates, links) and
  :func:`locale_chain`, which picks a template variant for a profile's locale;
* :mod:`.context` — :func:`build_context`, the checked view of the profile and event templates see;
* :mod:`.renderer` — :class:`Renderer`: templates compiled once per (route, variant) and cached,
  the subject refused when it would break a header, errors named by template and line.

The names below are the package's public API (importers use ``include.triggerflow.render``).
"""

from __future__ import annotations

from include.triggerflow.locales import locale_chain, normalize_locale
from include.triggerflow.render.context import build_context
from include.triggerflow.render.filters import (
    DEFAULT_DATETIME_FORMAT,
    DEFAULT_LOCAL_DATETIME_FORMAT,
    FILTERS,
    datetime_format,
    http_url,
    last_page_ending,
    local_datetime,
    money,
)
from include.triggerflow.render.renderer import CompiledRoute, RenderedEmail, Renderer, TemplateRenderError

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
    "last_page_ending",
    "local_datetime",
    "locale_chain",
    "money",
    "normalize_locale",
]
