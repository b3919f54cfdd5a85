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
from include.triggerflow.states import Decision

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


def status_page(
    document: Mapping[str, Any], *, watched: Sequence[str], json_href: str = "status", refresh_s: int = 60,
    active_alerts: int | None = None,
) -> str:
    """The status as an HTML page: warnings, the ``watched`` indicators as cards, the 5-day chart,
    then every indicator and the routing; with ``active_alerts``, their count linking to the alerts view."""
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
        here="status",
        active_alerts=active_alerts,
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


# -- the Triggers console (plugins/pipelined_status.py, include/triggerflow/console) -----------------
# Rows arrive as the store holds them; the pages get display strings (times in UTC to the second,
# no value as an empty cell) and hrefs built with urlencode: a value from an event or a reply only
# ever reaches a URL as an encoded query value, and autoescape writes it into the attribute.
def when(value: Any) -> str:
    """A time as the console shows it: UTC, to the second (None: "")."""
    if value is None:
        return ""
    from include.triggerflow.timeutil import as_utc

    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S")


def iso(value: Any) -> str:
    """A time as an ISO 8601 form value (UTC, microseconds kept: ranges are exact)."""
    from include.triggerflow.timeutil import as_utc

    return as_utc(value).isoformat() if value is not None else ""


def number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def href(path: str, **query: Any) -> str:
    from urllib.parse import urlencode

    values = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    return f"{path}?{urlencode(values)}" if values else path


def _display(row: Any, **extra: Any) -> dict[str, Any]:
    """A dataclass row as display strings: times via :func:`when`, numbers via :func:`number`."""
    from dataclasses import fields
    from datetime import datetime

    shown_row: dict[str, Any] = {}
    for f in fields(row):
        value = getattr(row, f.name)
        if isinstance(value, datetime):
            value = when(value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, int | float) or value is None:
            value = number(value)
        shown_row[f.name] = value
    shown_row.update(extra)
    return shown_row


def _pager(path: str, offset: int, count: int, total: int, page_rows: int, **query: Any) -> dict[str, Any]:
    return {
        "first": offset + 1 if count else 0,
        "last": offset + count,
        "page_rows": page_rows,
        "prev_href": href(path, **query, offset=max(0, offset - page_rows) or None) if offset > 0 else None,
        "next_href": href(path, **query, offset=offset + page_rows) if offset + count < total else None,
    }


def runs_page(rows: Sequence[Any], *, limit: int) -> str:
    shown_rows = []
    for r in rows:
        row = _display(
            r,
            ledger_href=href("run", batch_id=r.batch_id),
            quarantine_href=href("quarantine", batch_id=r.batch_id),
        )
        row["balanced"] = "not reported" if r.balanced is None else ("yes" if r.balanced else "no")
        row["latency_p95"] = "—" if r.latency_p95_s is None else f"{r.latency_p95_s:.1f}"
        shown_rows.append(row)
    return render("runs.html", title="Runs", here="runs", rows=shown_rows, limit=limit)


def run_page(info: Any, total: int, rows: Sequence[Any], *, offset: int, page_rows: int) -> str:
    return render(
        "run.html",
        title=f"Ledger of run {info.run_id}",
        here="runs",
        info=_display(info),
        total=total,
        rows=[_display(r) for r in rows],
        quarantine_href=href("quarantine", batch_id=info.batch_id),
        **_pager("run", offset, len(rows), total, page_rows, batch_id=info.batch_id),
    )


def quarantine_page(
    *,
    batch: Any = None,
    since: str = "",
    until: str = "",
    total: int = 0,
    rows: Sequence[Any] = (),
    offset: int = 0,
    page_rows: int = 200,
    clip_chars: int = 300,
    form: Mapping[str, str] | None = None,
    error: str | None = None,
) -> str:
    """The quarantine of one batch (``batch``) or of a receive-time range (``since``/``until``),
    with the reprocess form (``form``: since, until, csrf) when there is something to reprocess."""
    if batch is not None:
        scope: str | None = f"in run {batch.run_id}"
        query: dict[str, Any] = {"batch_id": batch.batch_id}
    elif since and until and error is None:
        scope = f"received {since} – {until}"
        query = {"since": since, "until": until}
    else:
        scope, query = None, {}
    return render(
        "quarantine.html",
        title="Quarantine",
        here="quarantine",
        batch=_display(batch) if batch is not None else None,
        ledger_href=href("run", batch_id=batch.batch_id) if batch is not None else None,
        since=since,
        until=until,
        scope=scope,
        total=total,
        rows=[_display(r) for r in rows],
        clip_chars=clip_chars,
        form=form,
        error=error,
        **_pager("quarantine", offset, len(rows), total, page_rows, **query),
    )


#: what a decision means, shown when the store's row carries no detail of its own
DECISION_NOTES: dict[str, str] = {
    Decision.MATCHED: "an email was queued: see the ledger below",
    Decision.UNMATCHED: "no profile matched the event's identity (load the profile, then reprocess: unmatched)",
    Decision.AMBIGUOUS: "several profiles matched and the route skips ambiguous identities",
    Decision.IGNORED: "no route handles this trigger",
    Decision.EXPIRED: "the trigger was older than its route's validity when reconciled",
    Decision.NO_PRODUCTS: "none of the event's products can be shown",
    Decision.DUPLICATE: "an email of the same route went to this customer within the dedup window",
    Decision.CAPPED: "the customer reached the route's frequency cap",
    Decision.DEFERRED: "held for later (quiet hours)",
    Decision.SUPPRESSED_OPT_OUT: "the customer opted out",
    Decision.SUPPRESSED_INVALID_ADDRESS: "the profile's address is not deliverable",
    Decision.SUPPRESSED_BLOCK_LIST: "the address is on the block list",
    Decision.SUPPRESSED_HARD_BOUNCE: "the address hard-bounced before",
}


def search_page(q: str, result: Any = None, *, error: str | None = None) -> str:
    shown_result = None
    if result is not None:
        shown_result = {
            "profiles": list(result.profiles),
            "suppressions": [_display(s) for s in result.suppressions],
            "decisions": [
                _display(d, ledger_href=href("run", batch_id=d.batch_id), detail=d.detail or DECISION_NOTES.get(d.decision, ""))
                for d in result.decisions
            ],
            "decision_total": result.decision_total,
            "sends": [_display(r) for r in result.sends],
        }
    return render("search.html", title="Why did this customer not get the email?", here="search", q=q, result=shown_result, error=error)


def alerts_page(total: int, active: Sequence[Any], resolved: Sequence[Any]) -> str:
    return render(
        "alerts.html", title="Alerts", here="alerts", total=total,
        active=[_display(a) for a in active], resolved=[_display(a) for a in resolved],
    )


def reprocess_page(*, started: Any = None, error: str | None = None, since: str = "", until: str = "", what: str = "", back_href: str | None = None) -> str:
    return render(
        "reprocess.html", title="Reprocess", here="quarantine", started=started, error=error,
        since=since, until=until, what=what, back_href=back_href,
    )


def console_message_page(title: str, message: str, *, here: str = "") -> str:
    """A console page that only says something (an unknown batch, a refused input)."""
    return render("console_message.html", title=title, here=here, message=message)
