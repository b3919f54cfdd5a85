"""The link allow-list (include/triggerflow/links.py): a URL reaches an email only when its parsed,
lower-cased, IDNA host is on the route's link_hosts, over https (or http where allowed), with no
trick a browser would read differently from the check."""

from __future__ import annotations

import re

import pytest

from include.triggerflow.links import (
    NO_LINKS,
    HostPattern,
    LinkPolicy,
    LinkRefusal,
    normalize_host,
    parse_host_pattern,
)

POLICY = LinkPolicy.of(["shop.example.com", "*.cdn.example.com", "bücher.example"])


@pytest.mark.parametrize(
    ("url", "emitted"),
    [
        ("https://shop.example.com/p/TRL-RUN-42", "https://shop.example.com/p/TRL-RUN-42"),
        ("https://shop.example.com", "https://shop.example.com/"),
        ("https://SHOP.Example.COM/cart?x=1#top", "https://shop.example.com/cart?x=1#top"),
        # a trailing dot is the same DNS name; the emitted URL has none
        ("https://shop.example.com./cart", "https://shop.example.com/cart"),
        # the scheme's own port is the same origin
        ("https://shop.example.com:443/a", "https://shop.example.com/a"),
        ("https://img.cdn.example.com/x.jpg", "https://img.cdn.example.com/x.jpg"),
        ("https://a.b.cdn.example.com/x.jpg", "https://a.b.cdn.example.com/x.jpg"),
        # an IDN host is compared and emitted in its ASCII (xn--) form
        ("https://BÜCHER.example/kauf", "https://xn--bcher-kva.example/kauf"),
        ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example/"),
        # the path is percent-encoded where it must be; existing escapes stay; a lone % is escaped
        ("https://shop.example.com/p/caf\u00e9", "https://shop.example.com/p/caf%C3%A9"),
        ("https://shop.example.com/a%20b", "https://shop.example.com/a%20b"),
        ("https://shop.example.com/100%", "https://shop.example.com/100%25"),
        ('https://shop.example.com/"><script>', "https://shop.example.com/%22%3E%3Cscript%3E"),
    ],
)
def test_allowed_urls_are_emitted_rebuilt(url: str, emitted: str) -> None:
    verdict = POLICY.check(url)
    assert verdict.refusal is None
    assert verdict.url == emitted
    assert verdict.allowed


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        # the reproduction
        ("https://evil.example/login", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://evil.example/pixel.gif", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://shop-example.com.evil.example/cart", LinkRefusal.HOST_NOT_ALLOWED),
        # look-alikes: a suffix, a prefix, a sibling, a homoglyph (Cyrillic a), the bare wildcard domain
        ("https://shop.example.com.evil.example/cart", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://evilshop.example.com/", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://xshop.example.com/", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://shop.ex\u0430mple.com/", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://cdn.example.com/x.jpg", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://cdn.example.com.evil.example/x.jpg", LinkRefusal.HOST_NOT_ALLOWED),
        ("https://127.0.0.1/", LinkRefusal.HOST_NOT_ALLOWED),
        # userinfo: the host is what follows the @
        ("https://shop.example.com@evil.example/", LinkRefusal.USERINFO),
        ("https://shop.example.com:pw@evil.example/", LinkRefusal.USERINFO),
        ("https://user@shop.example.com/", LinkRefusal.USERINFO),
        # backslash: WHATWG reads it as "/", Python's parser does not
        ("https://shop.example.com\\@evil.example/", LinkRefusal.BAD_CHARACTER),
        ("https://evil.example\\shop.example.com/", LinkRefusal.BAD_CHARACTER),
        # whitespace and controls: browsers drop tabs and newlines (java\tscript: is javascript:)
        ("java\tscript:alert(1)", LinkRefusal.BAD_CHARACTER),
        ("https://shop.example.com/\nx", LinkRefusal.BAD_CHARACTER),
        ("https://shop.example.com/ x", LinkRefusal.BAD_CHARACTER),
        ("https://shop.example.com/\x00", LinkRefusal.BAD_CHARACTER),
        ("https://shop.example.com/\u202egnp", LinkRefusal.BAD_CHARACTER),
        ("https://shop.example.com\u200b/", LinkRefusal.BAD_CHARACTER),
        ("", LinkRefusal.BAD_CHARACTER),
        # schemes
        ("javascript:alert(document.cookie)", LinkRefusal.SCHEME),
        ("JAVASCRIPT:alert(1)", LinkRefusal.SCHEME),
        ("data:text/html,<script>x</script>", LinkRefusal.SCHEME),
        ("http://shop.example.com/", LinkRefusal.SCHEME),
        ("ftp://shop.example.com/", LinkRefusal.SCHEME),
        ("//evil.example/x", LinkRefusal.SCHEME),
        ("/relative/path", LinkRefusal.SCHEME),
        # no authority: browsers still find a host in these
        ("https:evil.example", LinkRefusal.UNPARSABLE),
        ("https:/evil.example", LinkRefusal.UNPARSABLE),
        ("https:///evil.example", LinkRefusal.BAD_HOST),
        # hosts that are not DNS names
        ("https://shop.example.com%2eevil.example/", LinkRefusal.BAD_HOST),
        ("https://shop..example.com/", LinkRefusal.BAD_HOST),
        ("https://shop.example.com../", LinkRefusal.BAD_HOST),
        ("https://[::1]/", LinkRefusal.BAD_HOST),
        ("https://sh_op.example.com/", LinkRefusal.BAD_HOST),
        # ports
        ("https://shop.example.com:8443/", LinkRefusal.BAD_PORT),
        ("https://shop.example.com:0/", LinkRefusal.BAD_PORT),
        ("https://shop.example.com:99999/", LinkRefusal.BAD_PORT),
        ("https://shop.example.com:x/", LinkRefusal.BAD_PORT),
        ("https://shop.example.com:\u0663/", LinkRefusal.BAD_PORT),
        ("https://shop.example.com:80/", LinkRefusal.BAD_PORT),
        # not text, too long
        (None, LinkRefusal.NOT_TEXT),
        (42, LinkRefusal.NOT_TEXT),
        (["https://shop.example.com/"], LinkRefusal.NOT_TEXT),
        ("https://shop.example.com/" + "a" * 3000, LinkRefusal.TOO_LONG),
    ],
)
def test_refused_urls_say_why(url: object, refusal: LinkRefusal) -> None:
    verdict = POLICY.check(url)
    assert verdict.url is None
    assert verdict.refusal is refusal
    assert POLICY.url(url) is None


def test_the_empty_policy_allows_nothing() -> None:
    assert NO_LINKS.check("https://shop.example.com/").refusal is LinkRefusal.HOST_NOT_ALLOWED
    assert LinkPolicy().hosts == ()


def test_http_only_where_the_route_allows_it() -> None:
    policy = LinkPolicy.of(["shop.example.com"], allow_http=True)
    assert policy.url("http://shop.example.com/a") == "http://shop.example.com/a"
    assert policy.url("http://shop.example.com:80/a") == "http://shop.example.com/a"
    assert policy.url("https://shop.example.com/a") == "https://shop.example.com/a"
    assert policy.check("http://shop.example.com:443/a").refusal is LinkRefusal.BAD_PORT
    assert policy.schemes == ("https", "http")
    assert POLICY.schemes == ("https",)


def test_a_port_is_allowed_only_where_a_pattern_names_it() -> None:
    policy = LinkPolicy.of(["shop.example.com:8443", "static.example.com"])
    assert policy.url("https://shop.example.com:8443/x") == "https://shop.example.com:8443/x"
    assert policy.url("https://shop.example.com/x") == "https://shop.example.com/x"
    assert policy.check("https://static.example.com:8443/x").refusal is LinkRefusal.HOST_NOT_ALLOWED


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ("shop.example.com", HostPattern("shop.example.com")),
        ("  Shop.Example.com. ", HostPattern("shop.example.com")),
        ("*.cdn.example.com", HostPattern("cdn.example.com", wildcard=True)),
        ("shop.example.com:8443", HostPattern("shop.example.com", port=8443)),
        ("bücher.example", HostPattern("xn--bcher-kva.example")),
    ],
)
def test_host_patterns(entry: str, pattern: HostPattern) -> None:
    assert parse_host_pattern(entry) == pattern


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("https://shop.example.com", "give the host only"),
        ("shop.example.com/cart", "give the host only"),
        ("user@shop.example.com", "give the host only"),
        ("*", "alone would allow every host"),
        ("*.com", "every host under a top-level domain"),
        ("shop.*.example.com", "'*' may only be the whole first label"),
        ("*shop.example.com", "'*' may only be the whole first label"),
        ("shop.example.com:0", "the port must be a number from 1 to 65535"),
        ("shop.example.com:https", "the port must be a number from 1 to 65535"),
        ("sh op.example.com", "not a valid host name"),
        ("", "is not a host name"),
        (7, "is not a host name"),
    ],
)
def test_bad_host_patterns_say_what_is_wrong(entry: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_host_pattern(entry)


def test_normalize_host() -> None:
    assert normalize_host("Shop.Example.com.") == "shop.example.com"
    assert normalize_host("a" * 64 + ".example") is None
    assert normalize_host(".example.com") is None
    assert normalize_host("-a.example.com") is None
    assert normalize_host("") is None


def test_policies_are_hashable_route_fields() -> None:
    # routes are cache keys of the renderer: a policy must hash, and equal policies hash equal
    assert hash(LinkPolicy.of(["shop.example.com"])) == hash(LinkPolicy.of(["SHOP.example.com."]))
    assert POLICY.describe() == "https to shop.example.com, *.cdn.example.com, xn--bcher-kva.example"


def test_a_policy_remembers_a_bounded_number_of_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.triggerflow import links

    monkeypatch.setattr(links, "_VERDICTS_KEPT", 3)
    policy = LinkPolicy.of(["shop.example"])
    urls = [f"https://shop.example/p/{i}" for i in range(5)] + ["javascript:alert(1)", "https://evil.example/"] * 2
    verdicts = [policy.check(u) for u in urls]
    assert verdicts == [links._check(policy, u) for u in urls]
    assert [v.url is not None for v in verdicts] == [True] * 5 + [False] * 4
    assert 0 < len(policy._verdicts) <= 3
    # what a policy remembers is no part of what it is: routes use policies as cache keys
    fresh = LinkPolicy.of(["shop.example"])
    assert fresh == policy and hash(fresh) == hash(policy) and "_verdicts" not in repr(policy)
