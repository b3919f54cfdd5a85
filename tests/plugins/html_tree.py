"""A small HTML reader for the plugin page tests (standard library only: no lxml in the project).

:func:`parse` builds an ElementTree from a page with ``html.parser`` (void elements closed, entities
decoded as a browser shows them), so tests read what a user would see: :func:`text` of an element,
:func:`by_id`, the body :func:`rows` of a table and a row's :func:`cell` by class.
"""

from __future__ import annotations

from html.parser import HTMLParser
from xml.etree.ElementTree import Element, TreeBuilder

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tree = TreeBuilder()
        self.tree.start("document", {})
        self.open: list[str] = ["document"]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tree.start(tag, {name: value or "" for name, value in attrs})
        if tag in VOID:
            self.tree.end(tag)
        else:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tree.start(tag, {name: value or "" for name, value in attrs})
        self.tree.end(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or tag not in self.open:
            return
        while self.open[-1] != tag:  # an element left open (HTML allows some): close it here
            self.tree.end(self.open.pop())
        self.tree.end(self.open.pop())

    def handle_data(self, data: str) -> None:
        self.tree.data(data)

    def result(self) -> Element:
        self.close()
        while len(self.open) > 1:
            self.tree.end(self.open.pop())
        self.tree.end("document")
        return self.tree.close()


def parse(page: str) -> Element:
    builder = _Builder()
    builder.feed(page)
    return builder.result()


def text(element: Element | None) -> str:
    return "" if element is None else "".join(element.itertext())


def classes(element: Element) -> set[str]:
    return set((element.get("class") or "").split())


def by_id(root: Element, element_id: str) -> Element | None:
    return next((e for e in root.iter() if e.get("id") == element_id), None)


def all_by_class(root: Element, name: str, tag: str | None = None) -> list[Element]:
    return [e for e in root.iter(tag) if name in classes(e)]


def rows(root: Element, table_id: str) -> list[Element]:
    """The rows of a table's body."""
    table = by_id(root, table_id)
    assert table is not None, f"no table#{table_id}"
    return [tr for body in table.iter("tbody") for tr in body.iter("tr")]


def cell(row: Element, name: str) -> str:
    found = [td for td in row.iter("td") if name in classes(td)]
    assert len(found) == 1, f"{len(found)} td.{name} in the row"
    return text(found[0])


def inputs(form: Element | None) -> dict[str, str]:
    assert form is not None, "no form"
    return {i.get("name", ""): i.get("value", "") for i in form.iter("input")}
