"""The link allow-list: which URLs may reach an email (issue 11, "Your links only").

Analytics hits are unauthenticated, so every URL a trigger carries (page URLs, product URLs and
images) may be an attacker's. A URL reaches an email only when it passes the route's
:class:`LinkPolicy`: its scheme is ``https`` (or ``http`` where the route allows it) and its host
is one of the route's ``link_hosts``, either exactly or under a ``*.domain`` pattern.

The check is made on the URL *as a browser would read it*, not as text:

* the host is parsed, lower-cased, stripped of one trailing dot (``shop.example.com.`` is the same
  DNS name) and converted to its IDNA (``xn--``) form; only then is it compared, whole, with the
  allowed hosts, so ``shop.example.com.evil.example`` and ``shop-example.com`` never match
  ``shop.example.com``;
* anything browsers read differently from Python's parser is refused outright: userinfo
  (``https://shop.example.com@evil.example``), backslashes (WHATWG treats ``\\`` as ``/``),
  whitespace and control characters anywhere (browsers drop tabs and newlines, so
  ``java\\tscript:`` is ``javascript:``), percent-escapes in the host, IP addresses that are not
  listed, an explicit port other than the scheme's default unless the pattern names it;
* the URL put into the email is *rebuilt* from the parsed parts (scheme and host normalised, path,
  query and fragment percent-encoded where needed), so what was checked is what is emitted.

Refusals carry a :class:`LinkRefusal` reason so callers can count dropped links by cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote, urlsplit

__all__ = [
    "DEFAULT_PORTS",
    "MAX_URL_CHARS",
    "NO_LINKS",
    "HostPattern",
    "LinkPolicy",
    "LinkRefusal",
    "LinkVerdict",
    "normalize_host",
    "parse_host_pattern",
]

#: URLs longer than this are refused (the catalogue's url columns hold 2,048 characters)
MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"https": 443, "http": 80}
# Whitespace, C0/C1 controls, DEL, backslash, and the invisible format characters a URL never needs
# (bidi overrides, zero-width joiners, BOM): all refused anywhere in the URL.
_REFUSED_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\\\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# What may stay as is in a path, query or fragment (RFC 3986 pchar, plus "/" "?" and "%" of escapes
# already present); everything else (non-ASCII, quotes, "<", ">", spaces...) is percent-encoded.
_SAFE_PATH = "/:@!$&'()*+,;=-._~%"
_SAFE_QUERY = _SAFE_PATH + "?"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class LinkRefusal(StrEnum):
    """Why a URL was kept out of an email (counted per cause in the decision detail)."""

    NOT_TEXT = "not-text"
    TOO_LONG = "too-long"
    BAD_CHARACTER = "bad-character"
    UNPARSABLE = "unparsable"
    SCHEME = "scheme"
    USERINFO = "userinfo"
    BAD_HOST = "bad-host"
    BAD_PORT = "bad-port"
    HOST_NOT_ALLOWED = "host-not-allowed"


@dataclass(frozen=True)
class LinkVerdict:
    """The URL to put into the email (None when refused) and, when refused, why."""

    url: str | None
    refusal: LinkRefusal | None = None

    @property
    def allowed(self) -> bool:
        return self.url is not None


def normalize_host(host: str) -> str | None:
    """``Shop.Example.COM.`` -> ``shop.example.com``; ``bücher.example`` -> ``xn--bcher-kva.example``.

    None when the text is not a DNS host name: empty labels (``a..b``), a label over 63 characters,
    characters outside ``[a-z0-9-]`` after IDNA (``%``, ``_``, ``*``), a name over 253 characters,
    or text IDNA refuses. IP addresses are returned as written (lower-cased) when they are plain
    dotted IPv4; IPv6 literals are refused (no route needs them).
    """
    if not host or not isinstance(host, str):
        return None
    text = host.strip()
    text = text.removesuffix(".")
    if not text or text.startswith(".") or len(text) > 253:
        return None
    try:
        ascii_host = text.encode("idna").decode("ascii").lower() if not text.isascii() else text.lower()
    except (UnicodeError, ValueError):
        return None
    labels = ascii_host.split(".")
    if any(not _LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_host


@dataclass(frozen=True)
class HostPattern:
    """One ``link_hosts`` entry: an exact host, or ``*.domain`` (any host *under* ``domain``, not
    ``domain`` itself: list it too when it is wanted), optionally with a ``:port``."""

    host: str
    wildcard: bool = False
    port: int | None = None

    def matches(self, host: str, port: int | None, scheme: str) -> bool:
        if port is not None and port != DEFAULT_PORTS.get(scheme) and port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def __str__(self) -> str:
        text = f"*.{self.host}" if self.wildcard else self.host
        return f"{text}:{self.port}" if self.port is not None else text


def parse_host_pattern(value: object) -> HostPattern:
    """A ``link_hosts`` entry as a :class:`HostPattern`.

    :raises ValueError: with what is wrong (a URL instead of a host, a ``*`` that is not the whole
        first label, a bare ``*``, a port out of range, characters a host cannot have).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a host name such as shop.example.com or *.example.com")
    text = value.strip()
    if "://" in text or "/" in text or "@" in text:
        raise ValueError(f"{text!r} is not a host name: give the host only (shop.example.com), without scheme, path or user")
    port: int | None = None
    if ":" in text:
        text, _, port_text = text.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if text == "*":
        raise ValueError("'*' alone would allow every host: list the hosts (shop.example.com) or a domain's subdomains (*.example.com)")
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    if "*" in text:
        raise ValueError(f"{value!r}: '*' may only be the whole first label, as in *.example.com")
    host = normalize_host(text)
    if host is None:
        raise ValueError(f"{value!r} is not a valid host name")
    if wildcard and "." not in host:
        raise ValueError(f"{value!r} would allow every host under a top-level domain; name a registered domain (*.example.com)")
    return HostPattern(host=host, wildcard=wildcard, port=port)


@dataclass(frozen=True)
class LinkPolicy:
    """The hosts and schemes a route's emails may link to and load images from.

    The empty policy (the default) allows nothing: a route without ``link_hosts`` shows no URL
    taken from an event or the catalogue. Hashable (routes are cache keys of the renderer).
    """

    hosts: tuple[HostPattern, ...] = ()
    allow_http: bool = False
    #: value -> verdict: catalogue and page URLs repeat across a chunk's emails. Per policy, so a
    #: look-up hashes the value only (a cache keyed by (policy, value) hashed every host pattern
    #: of the policy on each of the ~10 look-ups per event); emptied when it reaches its bound.
    _verdicts: dict[str, LinkVerdict] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, hosts: Iterable[str], *, allow_http: bool = False) -> LinkPolicy:
        """A policy from ``link_hosts`` entries. :raises ValueError: on the first bad entry."""
        return cls(hosts=tuple(parse_host_pattern(h) for h in hosts), allow_http=allow_http)

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.allow_http else ("https",)

    def check(self, value: object) -> LinkVerdict:
        """The verdict on ``value``: the rebuilt URL when allowed, else the refusal."""
        if not isinstance(value, str):
            return LinkVerdict(None, LinkRefusal.NOT_TEXT)
        if len(value) > MAX_URL_CHARS:
            return LinkVerdict(None, LinkRefusal.TOO_LONG)
        verdict = self._verdicts.get(value)
        if verdict is None:
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            verdict = self._verdicts[value] = _check(self, value)
        return verdict

    def url(self, value: object) -> str | None:
        """The URL to emit for ``value``, or None when the policy refuses it."""
        return self.check(value).url

    def allows_host(self, host: str, port: int | None = None, scheme: str = "https") -> bool:
        return any(pattern.matches(host, port, scheme) for pattern in self.hosts)

    def describe(self) -> str:
        shown = ", ".join(str(p) for p in self.hosts) or "(none)"
        return f"{'/'.join(self.schemes)} to {shown}"


#: allows nothing: the policy of a route without ``link_hosts``
NO_LINKS = LinkPolicy()


#: verdicts a policy remembers
_VERDICTS_KEPT = 8192


def _check(policy: LinkPolicy, value: str) -> LinkVerdict:
    text = value.strip(" ")
    if not text or _REFUSED_CHARS.search(text) is not None:
        return LinkVerdict(None, LinkRefusal.BAD_CHARACTER)
    try:
        parts = urlsplit(text)
    except ValueError:
        return LinkVerdict(None, LinkRefusal.UNPARSABLE)
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        return LinkVerdict(None, LinkRefusal.SCHEME)
    # "https:evil.example" and "https:/evil.example" have no authority: browsers would still find a
    # host in them, Python does not. Only scheme://host is accepted.
    if not text[len(parts.scheme) :].startswith("://"):
        return LinkVerdict(None, LinkRefusal.UNPARSABLE)
    netloc = parts.netloc
    if "@" in netloc:
        return LinkVerdict(None, LinkRefusal.USERINFO)
    if "[" in netloc or "]" in netloc or "%" in netloc:
        return LinkVerdict(None, LinkRefusal.BAD_HOST)
    raw_host, colon, port_text = netloc.partition(":")
    port: int | None = None
    if colon:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return LinkVerdict(None, LinkRefusal.BAD_PORT)
        port = int(port_text)
    host = normalize_host(raw_host)
    if host is None:
        return LinkVerdict(None, LinkRefusal.BAD_HOST)
    if port is not None and port != DEFAULT_PORTS[scheme] and not any(p.port == port for p in policy.hosts):
        return LinkVerdict(None, LinkRefusal.BAD_PORT)
    if not policy.allows_host(host, port, scheme):
        return LinkVerdict(None, LinkRefusal.HOST_NOT_ALLOWED)
    authority = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _encode(parts.path, _SAFE_PATH) or "/"
    rebuilt = f"{scheme}://{authority}{path}"
    if parts.query:
        rebuilt += "?" + _encode(parts.query, _SAFE_QUERY)
    if parts.fragment:
        rebuilt += "#" + _encode(parts.fragment, _SAFE_QUERY)
    if len(rebuilt) > MAX_URL_CHARS:
        return LinkVerdict(None, LinkRefusal.TOO_LONG)
    return LinkVerdict(rebuilt)


def _encode(part: str, safe: str) -> str:
    """Percent-encode what must not stay literal; a ``%`` not starting an escape is encoded too."""
    return quote(_BAD_ESCAPE.sub("%25", part), safe=safe)
