"""RFC 2369 ``List-Unsubscribe`` and RFC 8058 ``List-Unsubscribe-Post`` headers for one email.

The URL is signed per recipient, so it is data-derived: anything that could end its ``<...>`` list
item or the header line is refused. The headers are written verbatim (see ``mailer.message``),
never RFC 2047-encoded: mailbox providers do not decode encoded words in this header.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from include.triggerflow.addresses import InvalidAddressError, validate_address
from include.triggerflow.addresses import shown as _shown
from include.triggerflow.mailer.message import _HEADER_BREAKS_RE, _WHITESPACE_RE, HeaderInjectionError

# Characters that would end a URI inside List-Unsubscribe's "<uri>, <uri>" list or start a new header.
_LIST_URI_BREAKERS_RE = re.compile("[<>,]")
_ASCII_CONTROLS_RE = re.compile("[\x00-\x1f\x7f]")
_LOOPBACK_NAMES = ("localhost",)
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_list_uri(kind: str, value: str) -> None:
    """Refuse what could break out of ``<...>`` in the header or out of the header line."""
    if not isinstance(value, str):
        raise TypeError(f"List-Unsubscribe {kind} must be a str, got {type(value).__name__}")
    if _HEADER_BREAKS_RE.search(value) is not None:
        raise HeaderInjectionError(f"List-Unsubscribe {kind} contains CR, LF or NUL: {_shown(value)}")
    if _WHITESPACE_RE.search(value) is not None:
        raise HeaderInjectionError(f"List-Unsubscribe {kind} contains whitespace: {_shown(value)}")
    if _LIST_URI_BREAKERS_RE.search(value) is not None:
        raise HeaderInjectionError(
            f"List-Unsubscribe {kind} contains '<', '>' or ',' (they delimit the header's URI list): {_shown(value)}"
        )
    if not value.isascii() or _ASCII_CONTROLS_RE.search(value) is not None:
        raise ValueError(f"List-Unsubscribe {kind} must be ASCII (percent-encode it): {_shown(value)}")


def list_unsubscribe_headers(url: str, mailto: str | None = None) -> dict[str, str]:
    """The RFC 2369 / RFC 8058 one-click unsubscribe headers for one email::

        {"List-Unsubscribe": "<https://...>" (+ ", <mailto:...>"),
         "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}

    ``url`` must be an absolute ``https://`` URL with a host: RFC 8058 requires HTTPS for one-click,
    and mailbox providers ignore the header otherwise. ``http://`` is accepted only for a loopback
    host (``localhost``, ``127.0.0.1``, ``::1``), so local tests and the demo can use the dev server;
    it is refused everywhere else. ``mailto`` (``unsubscribe@example.com`` or ``mailto:...``) is an
    optional second method for clients without one-click support.

    The URL is signed per recipient and therefore data-derived: anything that could end the ``<...>``
    list item or the header line (CR, LF, NUL, whitespace, ``<``, ``>``, ``,``) is refused with
    :class:`HeaderInjectionError`; a non-http(s), relative or non-ASCII URL with ValueError.
    """
    _check_list_uri("URL", url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"List-Unsubscribe URL {_shown(url)} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ValueError(f"List-Unsubscribe URL {_shown(url)} must be an absolute https:// URL with a host")
    if scheme == "http" and not _is_loopback(host):
        raise ValueError(
            f"List-Unsubscribe URL {_shown(url)} must use https (RFC 8058); http is allowed only for "
            "localhost / loopback addresses in local tests"
        )
    targets = [f"<{url}>"]
    if mailto is not None:
        _check_list_uri("mailto", mailto)
        target = mailto if mailto.lower().startswith("mailto:") else f"mailto:{mailto}"
        address = target[len("mailto:"):].split("?", 1)[0]
        try:
            validate_address(address)
        except InvalidAddressError as exc:
            raise InvalidAddressError(f"List-Unsubscribe mailto: {exc}") from None
        targets.append(f"<{target}>")
    return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": LIST_UNSUBSCRIBE_POST}
