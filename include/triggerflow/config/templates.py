"""Template checks of the routing file: the folder a route names, its subject, and the event URLs
its templates render.

A route names a template folder (``email.html`` + ``email.txt``, plus locale variants) and a
subject template; both are checked at load time so a typo fails the DAG import, not every send.
A route whose templates read event data that may hold URLs (``event.pages``, ``event.products``,
``event.dimensions``, or the whole ``event``) must list its ``link_hosts``: found by walking each
template's Jinja syntax tree (:func:`event_url_references`), not by searching text.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2 import meta, nodes

from include.triggerflow.config.schema import display_path

TEMPLATE_FILES = ("email.html", "email.txt")
# A template is one folder name: no separators, so a config value can never reach outside templates_dir.
_TEMPLATE_RE = re.compile(r"[A-Za-z0-9_-]+")
#: ``event`` attributes that hold no URL and no free text from the event's payload
_EVENT_SAFE_ATTRS = frozenset({"trigger_id", "name", "triggered_at"})
_ROUTE_TEMPLATE_FILE = re.compile(r"email(?:\.[^./\\]+)?\.(?:html|txt)")


def template_problem(templates_dir: Path, template: object) -> str | None:
    """What is wrong with a route's ``template`` value, or None when its folder is complete."""
    if not isinstance(template, str) or not _TEMPLATE_RE.fullmatch(template):
        return (
            f"template {template!r} must be a folder name under {display_path(templates_dir)} "
            "(letters, digits, '_' or '-')"
        )
    folder = templates_dir / template
    if not folder.is_dir():
        return f"template {template!r} has no folder {display_path(folder)}"
    missing = [name for name in TEMPLATE_FILES if not (folder / name).is_file()]
    if missing:
        return f"template {template!r}: folder {display_path(folder)} has no {' or '.join(missing)}"
    return None


@lru_cache(maxsize=1)
def _subject_environment() -> jinja2.Environment:
    # Imported here, not at module top: render imports the config's types for its signatures.
    from include.triggerflow.render import FILTERS

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(FILTERS)
    return env


def subject_problem(subject: object) -> str | None:
    """What is wrong with a subject template, or None. Parsed with the renderer's filters, so an
    unknown filter fails here rather than on every email."""
    if not isinstance(subject, str) or not subject.strip():
        return f"subject must be a non-empty string, got {subject!r}"
    if any(char in subject for char in "\r\n\0"):
        # It would be refused at render time for every email; say so now.
        return "subject must be a single line (it becomes the Subject header)"
    try:
        _subject_environment().from_string(subject)
    except jinja2.TemplateSyntaxError as exc:
        return f"subject is not a valid Jinja template: {exc.message}"
    return None


def _event_references(tree: nodes.Template) -> set[str]:
    """What of ``event`` a parsed template reads that may hold event URLs: ``event.pages``,
    ``event.products``, ``event.dimensions``, any other attribute or item, or ``event`` itself
    (passed to a macro, assigned to another name, printed whole)."""
    found: set[str] = set()
    consumed: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        base = getattr(node, "node", None)
        if not (isinstance(base, nodes.Name) and base.name == "event"):
            continue
        consumed.add(id(base))
        key: object
        if isinstance(node, nodes.Getattr):
            key = node.attr
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
    loader = jinja2.FileSystemLoader(str(templates_dir))
    env = jinja2.Environment(loader=loader)
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
            source = loader.get_source(env, name)[0]
            tree = env.parse(source, name=name)
        except (jinja2.TemplateError, OSError, UnicodeError):
            continue
        found.update(f"{name}: {ref}" for ref in _event_references(tree))
        queue.extend(ref for ref in meta.find_referenced_templates(tree) if isinstance(ref, str) and ref not in seen)
    return sorted(found)
