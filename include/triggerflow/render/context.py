"""The template context of one email: what a route's templates may read, all of it checked."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from include.triggerflow.content import clean_display_text, email_content

if TYPE_CHECKING:
    from include.triggerflow.config import TriggerRoute
    from include.triggerflow.content import EmailContent
    from include.triggerflow.events import TriggerEvent

__all__ = ["build_context"]


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
            "trigger_id": route.trigger_id if not route.is_catch_all else clean_display_text(event.raw("triggerId"))[0],
            "name": route.name,
            "triggered_at": event.triggered_at,
            "pages": list(content.pages),
            "products": [product.as_context() for product in content.products],
            "dimensions": _DimensionLists(content.dimensions),
        },
        "links": dict(content.links),
        **(extra or {}),
    }


class _DimensionLists(Mapping[str, list[str]]):
    """The content's dimensions with list values, as templates have always seen them; converted on
    access, so dimensions worked out lazily (content.LazyDimensions) stay unworked when no template
    reads them."""

    __slots__ = ("_dimensions",)

    def __init__(self, dimensions: Mapping[str, tuple[str, ...]]) -> None:
        self._dimensions = dimensions

    def __getitem__(self, name: str) -> list[str]:
        return list(self._dimensions[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._dimensions)

    def __len__(self) -> int:
        return len(self._dimensions)
