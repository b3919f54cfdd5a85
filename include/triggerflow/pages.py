"""The HTML pages of the Airflow plugins, rendered by Jinja2 from include/templates/ui/.

The plugins (``plugins/pipelined_status.py``, ``plugins/unsubscribe.py``) keep the routes; what a
page shows is prepared here and written by a template, never by string formatting. Autoescape is
on for every ``.html`` template, so a value from a connection, the store or a request (a source
key, an error text, a token) can never become markup. ``finalize`` spells the escapes the way
:func:`html.escape` does (``&quot;``, ``&#x27;``) rather than markupsafe's numeric forms, so the
pages stay byte-for-byte what they were when the plugins built them with ``html.escape``.

Imported on a plugin's first request, not when the plugin loads (plugins load in every Airflow
process).
"""

from __future__ import annotations

import html
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from include.triggerflow import TEMPLATES_DIR

UI_TEMPLATES_DIR = TEMPLATES_DIR / "ui"

_lock = threading.Lock()
_environment: Environment | None = None


def _escape(value: Any) -> Any:
    """Autoescape's input: every value escaped as :func:`html.escape` does (Markup passes as is)."""
    if value is None or isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def environment() -> Environment:
    """The pages' Jinja2 environment (built once per process)."""
    global _environment
    with _lock:
        if _environment is None:
            _environment = Environment(
                loader=FileSystemLoader(UI_TEMPLATES_DIR),
                autoescape=select_autoescape(["html"]),
                finalize=_escape,
                trim_blocks=True,
                keep_trailing_newline=True,
            )
        return _environment


def render(template: str, **values: Any) -> str:
    return environment().get_template(template).render(**values)


# -- the pipelined status page -----------------------------------------------------------------------
def shown(value: Any) -> str:
    """An indicator as the page shows it: null as an em dash, integers with thousands separators."""
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def chart(per_hour: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Geometry of the messages-per-hour SVG bar chart (oldest left), day boundaries labelled."""
    width, height, left, bottom, top = 960, 220, 48, 28, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max((int(h["messages"]) for h in per_hour), default=0)
    scale = peak or 1
    step = plot_w / max(len(per_hour), 1)
    marks = []
    for index, hour in enumerate(per_hour):
        x = left + index * step
        stamp = str(hour["hour"])
        messages = int(hour["messages"])
        mark: dict[str, Any] = {"day": stamp[11:13] == "00", "bar": bool(messages), "stamp": stamp, "messages": messages}
        if mark["day"]:  # midnight UTC: a day boundary
            mark.update(x=f"{x:.1f}", label_x=f"{x + 3:.1f}", label=stamp[:10])
        if messages:
            bar_h = max(1.0, plot_h * messages / scale)
            mark.update(
                bar_x=f"{x + 0.5:.1f}", bar_y=f"{top + plot_h - bar_h:.1f}", bar_width=f"{max(step - 1, 1):.1f}", bar_height=f"{bar_h:.1f}"
            )
        if mark["day"] or mark["bar"]:
            marks.append(mark)
    return {
        "width": width, "height": height, "left": left, "right": width - 8, "top": top, "base": top + plot_h,
        "label_y": height - 8, "peak": peak, "marks": marks,
    }


def _indicator_rows(prefix: str, values: Any) -> list[tuple[str, str]]:
    if isinstance(values, dict):
        rows: list[tuple[str, str]] = []
        for key, value in values.items():
            rows.extend(_indicator_rows(f"{prefix}.{key}" if prefix else str(key), value))
        return rows
    return [(prefix, shown(values))]


#: the document's blocks listed in the page's indicator table, in this order
INDICATOR_BLOCKS = ("consumer", "source", "generated-at", "http-request", "pointer", "stats", "settings")


def status_page(document: Mapping[str, Any], *, watched: Sequence[str], json_href: str = "status", refresh_s: int = 60) -> str:
    """The status as an HTML page: warnings, the ``watched`` indicators as cards, the 5-day chart,
    then every indicator and the routing."""
    stats = document.get("stats", {})
    routing = document.get("routing", {})
    per_hour = document.get("messages-per-hour", [])
    return render(
        "status.html",
        refresh_s=refresh_s,
        consumer=shown(document.get("consumer")),
        source=shown(document.get("source")),
        generated_at=shown(document.get("generated-at")),
        json_href=json_href,
        warnings=[
            {"code": str(w.get("code", "")), "detail": str(w.get("detail", ""))}
            for w in document.get("warnings") or []
            if isinstance(w, dict)
        ],
        cards=[{"name": name, "alert": bool(stats.get(name)), "value": shown(stats.get(name))} for name in watched],
        total=sum(int(h["messages"]) for h in per_hour),
        chart=chart(per_hour),
        indicators=_indicator_rows("", {key: document[key] for key in INDICATOR_BLOCKS if key in document}),
        routes=[
            (f"{section}: {trigger}", str(handler))
            for section, mapping in routing.items()
            if isinstance(mapping, dict)
            for trigger, handler in mapping.items()
        ],
        routing_error=str(routing["error"]) if routing.get("error") else None,
    )


def status_error_page(message: str, *, refresh_s: int = 60) -> str:
    return render("status_error.html", message=message, refresh_s=refresh_s)


# -- the unsubscribe pages ---------------------------------------------------------------------------
def unsubscribe_page(
    title: str, message: str, *, element_id: str = "message", form_action: str | None = None, fields: Mapping[str, str] | None = None
) -> str:
    """A small self-contained page; with ``form_action``, the "Unsubscribe" button (a form POSTing
    there with the hidden ``fields``: one_click, one_click_value, via, via_page)."""
    return render("unsubscribe.html", title=title, message=message, element_id=element_id, form_action=form_action, fields=fields or {})
