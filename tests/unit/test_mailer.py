"""Tests for include.triggerflow.mailer: MIME structure, encodings, and refusal of injected headers."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from include.triggerflow.mailer import (
    HeaderInjectionError,
    InvalidAddressError,
    build_message,
    check_header_value,
    list_unsubscribe_headers,
    message_id_for,
    validate_address,
)

DATE = datetime(2024, 3, 5, 14, 7, 9, tzinfo=UTC)


def build(**overrides: Any) -> bytes:
    kwargs: dict[str, Any] = {
        "from_addr": "shop@example.com",
        "from_name": "triggerflow shop",
        "to_addr": "ada@example.org",
        "subject": "Ada, you left something in your cart",
        "text": "Hi Ada,\nyour cart is waiting.\n",
        "html": "<p>Hi Ada,</p>\n<p>your cart is waiting.</p>\n",
        "message_id": "<key-1@triggerflow.local>",
        "date": DATE,
    }
    kwargs.update(overrides)
    return build_message(**kwargs)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def content(part: EmailMessage) -> str:
    """A part's decoded body with LF line endings (parsed CRLF bytes keep CRLF in the body)."""
    return part.get_content().replace("\r\n", "\n")


# -- structure ---------------------------------------------------------------------------------------
def test_multipart_alternative_text_then_html() -> None:
    msg = parse(build())
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [part.get_content_charset() for part in parts] == ["utf-8", "utf-8"]
    assert content(parts[0]) == "Hi Ada,\nyour cart is waiting.\n"
    assert content(parts[1]) == "<p>Hi Ada,</p>\n<p>your cart is waiting.</p>\n"
    assert msg.get_body(preferencelist=("html",)) is parts[1]


def test_headers() -> None:
    msg = parse(build(headers={"List-Unsubscribe": "<https://shop.example.com/u/1>", "X-Trigger": "cart"}))
    assert msg["From"] == "triggerflow shop <shop@example.com>"
    assert msg["To"] == "ada@example.org"
    assert msg["Subject"] == "Ada, you left something in your cart"
    assert msg["Date"] == "Tue, 05 Mar 2024 14:07:09 +0000"
    assert msg["Message-ID"] == "<key-1@triggerflow.local>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Unsubscribe"] == "<https://shop.example.com/u/1>"
    assert msg["X-Trigger"] == "cart"
    # only the top level carries MIME-Version
    assert [part["MIME-Version"] for part in msg.iter_parts()] == [None, None]


def test_from_without_name() -> None:
    assert parse(build(from_name=None))["From"] == "shop@example.com"
    assert parse(build(from_name="  "))["From"] == "shop@example.com"


def test_non_ascii_subject_and_name_round_trip_as_rfc2047() -> None:
    subject = "Zoë, ton panier t’attend — 50 € de réduction 🛒 " + "très long " * 8
    raw = build(subject=subject, from_name="Boutique Él, Inc.", text="Prix : 12,50 €\n", html="<p>Zoë</p>\n")
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"=?utf-8?" in head
    msg = parse(raw)
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].display_name == "Boutique Él, Inc."
    assert msg["From"].addresses[0].addr_spec == "shop@example.com"
    parts = list(msg.iter_parts())
    assert content(parts[0]) == "Prix : 12,50 €\n"
    assert content(parts[1]) == "<p>Zoë</p>\n"


def test_whole_message_is_7bit_with_crlf_line_endings() -> None:
    raw = build(text="ligne 1\nligne 2 é\r\nligne 3\n" + "x" * 1200 + "\n", html="<p>é</p>" * 300)
    assert raw.isascii()
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")  # no bare LF
    assert b"\r" not in raw.replace(b"\r\n", b"")  # no bare CR
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parts = list(parse(raw).iter_parts())
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(parts[0]) == "ligne 1\nligne 2 é\nligne 3\n" + "x" * 1200 + "\n"


def test_output_is_deterministic_for_the_same_inputs() -> None:
    assert build() == build()
    assert build(message_id="<key-2@triggerflow.local>") != build()


def test_default_date_is_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    msg = parse(build(date=None))
    after = datetime.now(UTC)
    assert before <= msg["Date"].datetime <= after


def test_date_with_offset() -> None:
    paris = datetime(2024, 3, 5, 15, 7, 9, tzinfo=timezone(timedelta(hours=1)))
    assert parse(build(date=paris))["Date"] == "Tue, 05 Mar 2024 15:07:09 +0100"


def test_naive_date_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build(date=datetime(2024, 3, 5, 14, 7))


# -- header injection --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad", ["Hi\nBcc: victim@example.com", "Hi\r\nBcc: victim@example.com", "Hi\rthere", "Hi\0"]
)
def test_subject_with_line_break_raises(bad: str) -> None:
    with pytest.raises(HeaderInjectionError, match="header Subject: value contains CR, LF or NUL"):
        build(subject=bad)


def test_from_name_with_line_break_raises() -> None:
    with pytest.raises(HeaderInjectionError, match="header From"):
        build(from_name="Shop\r\nBcc: victim@example.com")


def test_extra_header_value_with_line_break_raises() -> None:
    with pytest.raises(HeaderInjectionError, match="header X-Trigger: value contains CR, LF or NUL"):
        build(headers={"X-Trigger": "cart\r\nBcc: victim@example.com"})


@pytest.mark.parametrize("name", ["X-Bad\r\nBcc", "X Bad", "X-Bad:", ""])
def test_extra_header_name_must_be_a_field_name(name: str) -> None:
    with pytest.raises(HeaderInjectionError, match="is not a valid field name"):
        build(headers={name: "v"})


@pytest.mark.parametrize("name", ["Bcc", "to", "Subject", "Message-ID", "Content-Type"])
def test_extra_headers_cannot_replace_structural_ones(name: str) -> None:
    with pytest.raises(ValueError, match=f"header {name} is set by build_message"):
        build(headers={name: "x@example.com"})


@pytest.mark.parametrize(
    "to_addr",
    [
        "ada@example.org\r\nBcc: victim@example.com",
        "ada@example.org\nX: y",
        "ada@example.org\r",
        "\nada@example.org",
    ],
)
def test_to_with_line_break_raises(to_addr: str) -> None:
    with pytest.raises(HeaderInjectionError, match="header To: value contains CR, LF or NUL"):
        build(to_addr=to_addr)


def test_from_addr_with_line_break_raises() -> None:
    with pytest.raises(HeaderInjectionError, match="header From: value contains CR, LF or NUL"):
        build(from_addr="shop@example.com\nBcc: victim@example.com")


def test_check_header_value() -> None:
    assert check_header_value("Subject", "fine: value") == "fine: value"
    with pytest.raises(HeaderInjectionError) as info:
        check_header_value("X-Test", "a\nb")
    assert str(info.value) == "header X-Test: value contains CR, LF or NUL: 'a\\nb'"
    assert isinstance(info.value, ValueError)
    with pytest.raises(TypeError):
        check_header_value("X-Test", 5)  # type: ignore[arg-type]


def test_message_id_must_be_well_formed() -> None:
    with pytest.raises(HeaderInjectionError, match="header Message-ID"):
        build(message_id="<a@b.c>\r\nBcc: victim@example.com")
    with pytest.raises(ValueError, match="must look like <id@domain>"):
        build(message_id="no-brackets@example.com")


# -- addresses ---------------------------------------------------------------------------------------
def test_validate_address_strips() -> None:
    assert validate_address("  ada@example.org \n") == "ada@example.org"
    assert validate_address("first.last+tag@mail.example.co.uk") == "first.last+tag@mail.example.co.uk"


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ada@exa\r\nmple.org", "contains CR, LF or NUL"),
        ("ada@example.org\0", "contains CR, LF or NUL"),
        ("ada example@example.org", "contains whitespace"),
        ("ada@exam\tple.org", "contains whitespace"),
        ("ada.example.org", "must contain exactly one '@'"),
        ("ada@@example.org", "must contain exactly one '@'"),
        ("a@b@example.org", "must contain exactly one '@'"),
        ("ada@localhost", "domain has no dot"),
        ("@example.org", "empty local part"),
        ("ada@example..org", "domain has an empty label"),
        ("ada@.org", "domain has an empty label"),
        ("ada@example.org>,<victim@example.com", "must contain exactly one '@'"),
        ("Ada <ada@example.org>", "contains whitespace"),
        ("<ada@example.org>", "not allowed in a plain address"),
        ("ada,x@example.org", "not allowed in a plain address"),
        ("zoë@example.org", "non-ASCII"),
    ],
)
def test_bad_addresses(addr: str, reason: str) -> None:
    with pytest.raises(InvalidAddressError) as info:
        validate_address(addr)
    assert str(info.value).startswith(f"invalid email address {addr.strip()!r}: ")
    assert reason in str(info.value)


def test_bad_address_message_is_truncated() -> None:
    addr = "a" * 200 + "@localhost"
    with pytest.raises(InvalidAddressError) as info:
        validate_address(addr)
    assert str(info.value) == f"invalid email address {'a' * 80 + '...'!r}: domain has no dot"


def test_bad_addresses_in_build_message() -> None:
    with pytest.raises(InvalidAddressError, match="'not-an-address'"):
        build(to_addr="not-an-address")
    with pytest.raises(InvalidAddressError, match="'shop@localhost'"):
        build(from_addr="shop@localhost")
    with pytest.raises(InvalidAddressError, match="must be a str"):
        build(to_addr=None)


# -- Message-ID --------------------------------------------------------------------------------------
def test_message_id_for() -> None:
    assert message_id_for("run-1.evt_42") == "<run-1.evt_42@triggerflow.local>"
    assert message_id_for("abc", domain="mail.example.com") == "<abc@mail.example.com>"
    assert parse(build(message_id=message_id_for("k.1")))["Message-ID"] == "<k.1@triggerflow.local>"


@pytest.mark.parametrize("key", ["", "a b", "a@b", "a>b", "a\r\nb", "clé"])
def test_message_id_for_rejects_bad_keys(key: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        message_id_for(key)


def test_message_id_for_rejects_bad_domain() -> None:
    with pytest.raises(ValueError, match="not a dotted domain name"):
        message_id_for("abc", domain="local host")


# -- List-Unsubscribe (RFC 2369 / RFC 8058) -----------------------------------------------------------
UNSUB = "https://airflow.example.com/triggerflow/unsubscribe/?t=v1.eyJjIjoiQzAwMDEifQ.c2lnbmF0dXJl"
BASE_HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"}


def header_block(raw: bytes) -> list[bytes]:
    """The raw header lines of the top-level header block (continuation lines start with a space)."""
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def field_names(raw: bytes) -> list[str]:
    """Names of the header fields in the raw bytes, in order, one per field (not per line)."""
    return [line.split(b":", 1)[0].decode() for line in header_block(raw) if not line[:1].isspace()]


def test_list_unsubscribe_headers() -> None:
    assert list_unsubscribe_headers(UNSUB) == {
        "List-Unsubscribe": f"<{UNSUB}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    both = list_unsubscribe_headers(UNSUB, "unsubscribe@example.com")
    assert both["List-Unsubscribe"] == f"<{UNSUB}>, <mailto:unsubscribe@example.com>"
    already = list_unsubscribe_headers(UNSUB, mailto="mailto:unsubscribe@example.com?subject=stop")
    assert already["List-Unsubscribe"] == f"<{UNSUB}>, <mailto:unsubscribe@example.com?subject=stop>"


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080/triggerflow/unsubscribe/?t=x", "http://127.0.0.1:8080/u", "http://[::1]/u", "http://demo.localhost/u"],
)
def test_http_is_allowed_for_loopback_hosts_only(url: str) -> None:
    assert list_unsubscribe_headers(url)["List-Unsubscribe"] == f"<{url}>"


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("http://shop.example.com/u?t=1", ValueError, "must use https \\(RFC 8058\\)"),
        ("http://10.0.0.5/u", ValueError, "must use https"),
        ("ftp://shop.example.com/u", ValueError, "absolute https:// URL with a host"),
        ("javascript:alert(1)", ValueError, "absolute https:// URL with a host"),
        ("mailto:u@example.com", ValueError, "absolute https:// URL with a host"),
        ("/triggerflow/unsubscribe/?t=1", ValueError, "absolute https:// URL with a host"),
        ("https://", ValueError, "absolute https:// URL with a host"),
        ("", ValueError, "absolute https:// URL with a host"),
        ("https://shop.example.com:99999/u", ValueError, "not a valid URL"),
        ("https://shop.example.com/dé", ValueError, "must be ASCII"),
        (UNSUB + "\r\nBcc: victim@example.com", HeaderInjectionError, "contains CR, LF or NUL"),
        (UNSUB + "\nBcc: victim@example.com", HeaderInjectionError, "contains CR, LF or NUL"),
        (UNSUB + "\r", HeaderInjectionError, "contains CR, LF or NUL"),
        (UNSUB + "\0", HeaderInjectionError, "contains CR, LF or NUL"),
        (UNSUB + " x", HeaderInjectionError, "contains whitespace"),
        (UNSUB + "\tx", HeaderInjectionError, "contains whitespace"),
        (UNSUB + "\u2028x", HeaderInjectionError, "contains whitespace"),
        (UNSUB + "><https://evil.example/u", HeaderInjectionError, "contains '<', '>' or ','"),
        (UNSUB + ",https://evil.example/u", HeaderInjectionError, "contains '<', '>' or ','"),
        ("<" + UNSUB, HeaderInjectionError, "contains '<', '>' or ','"),
    ],
)
def test_list_unsubscribe_refuses_bad_urls(url: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        list_unsubscribe_headers(url)


@pytest.mark.parametrize(
    ("mailto", "error"),
    [
        ("u@example.com\r\nBcc: victim@example.com", HeaderInjectionError),
        ("u@example.com>, <mailto:victim@example.com", HeaderInjectionError),
        ("not-an-address", InvalidAddressError),
        ("mailto:", InvalidAddressError),
    ],
)
def test_list_unsubscribe_refuses_bad_mailto(mailto: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        list_unsubscribe_headers(UNSUB, mailto)


def test_list_unsubscribe_headers_pass_build_message_checks_and_survive_a_round_trip() -> None:
    headers = list_unsubscribe_headers(UNSUB, "unsubscribe@example.com")
    raw = build(headers=headers)
    msg = parse(raw)
    assert set(msg.keys()) == BASE_HEADERS | {"List-Unsubscribe", "List-Unsubscribe-Post"}
    assert msg["List-Unsubscribe"] == headers["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert field_names(raw).count("List-Unsubscribe") == 1


def test_long_unsubscribe_url_is_written_verbatim_not_rfc2047_encoded() -> None:
    """Mailbox providers read List-Unsubscribe literally: a long signed URL must not become
    ``=?utf-8?q?...?=`` encoded-words (what the email package does to long unbreakable words)."""
    url = "https://airflow.example.com/triggerflow/unsubscribe/?t=v1." + "A" * 180 + "." + "B" * 43
    headers = list_unsubscribe_headers(url, "unsubscribe@example.com")
    raw = build(headers=headers)
    lines = header_block(raw)
    start = next(i for i, line in enumerate(lines) if line.startswith(b"List-Unsubscribe:"))
    assert lines[start] == f"List-Unsubscribe: <{url}>,".encode()
    assert lines[start + 1] == b" <mailto:unsubscribe@example.com>"  # folded at the list's own space
    assert b"=?" not in b"".join(lines[start:start + 2])
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert parse(raw)["List-Unsubscribe"] == headers["List-Unsubscribe"]


@pytest.mark.parametrize("value", ["a  " + "b" * 90 + "  c", "x " * 60 + " ", "w" * 200, "w" * 80 + " ", "w" * 80 + "  z", "one two"])
def test_verbatim_headers_round_trip_and_never_fold_into_blank_lines(value: str) -> None:
    raw = build(headers={"X-Data": value})
    lines = header_block(raw)
    start = next(i for i, line in enumerate(lines) if line.startswith(b"X-Data:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i][:1].isspace())
    assert all(line.strip() for line in lines[start + 1:end])
    assert b"=?" not in b"".join(lines[start:end])
    assert parse(raw)["X-Data"] == value


def test_extra_header_longer_than_the_smtp_line_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="would exceed 998 characters"):
        build(headers=list_unsubscribe_headers("https://x.example/?t=" + "A" * 1000))


def test_non_ascii_extra_header_is_still_encoded() -> None:
    raw = build(headers={"X-Note": "café crème"})
    assert b"X-Note: =?utf-8?" in raw
    assert parse(raw)["X-Note"] == "café crème"


def test_extra_header_names_are_case_insensitive_duplicates() -> None:
    with pytest.raises(ValueError, match="given twice"):
        build(headers={"List-Unsubscribe": "<https://a.example/u>", "list-unsubscribe": "<https://b.example/u>"})


# -- header injection from event or profile data: never a second header line ------------------------
INJECTIONS = [
    "x\r\nBcc: victim@example.com",
    "x\nBcc: victim@example.com",
    "x\rBcc: victim@example.com",
    "x\0Bcc: victim@example.com",
    "x\u2028Bcc: victim@example.com",
    "x\x85Bcc: victim@example.com",
    "x\x0bBcc: victim@example.com",
    "x\x0cBcc: victim@example.com",
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["subject", "from_name"])
def test_line_breaks_in_subject_or_display_name_are_refused(field: str, payload: str) -> None:
    with pytest.raises(HeaderInjectionError):
        build(**{field: payload})


@pytest.mark.parametrize(
    "to_addr",
    [
        *("ada@example.org" + payload[1:] for payload in INJECTIONS),
        "ada@example.org, victim@example.com",
        "ada@example.org>, <victim@example.com",
        "Ada <ada@example.org>, victim@example.com",
    ],
)
def test_injection_through_the_recipient_is_refused(to_addr: str) -> None:
    with pytest.raises((HeaderInjectionError, InvalidAddressError)):
        build(to_addr=to_addr)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_through_the_unsubscribe_url_is_refused(payload: str) -> None:
    url = UNSUB + payload.replace("x", "", 1)
    with pytest.raises(HeaderInjectionError):
        list_unsubscribe_headers(url)
    with pytest.raises(HeaderInjectionError):
        build(headers={"List-Unsubscribe": f"<{url}>"})


def test_profile_data_in_the_subject_cannot_add_a_header() -> None:
    """End to end through the real renderer: a first_name with a line break fails the render;
    one without stays inside the Subject, and the message has exactly the expected headers."""
    import dataclasses

    from include.triggerflow import DEFAULT_ROUTING_FILE
    from include.triggerflow.config import load_routing
    from include.triggerflow.content import ProductSource
    from include.triggerflow.events import parse_envelope
    from include.triggerflow.render import Renderer, TemplateRenderError, build_context
    from tests.unit.test_render import CART_ID, envelope

    route = load_routing(DEFAULT_ROUTING_FILE).route_for(CART_ID)
    assert route is not None
    # event-only mode: the event's product name reaches the email (as capped text)
    route = dataclasses.replace(route, products=ProductSource.EVENT)
    renderer = Renderer()
    event = parse_envelope(envelope(products={"S": {"name": "Shoe\r\nBcc: victim@example.com", "price": 1}}))

    def render(first_name: str):
        profile = {"first_name": first_name, "timezone": None, "locale": None}
        context = build_context(profile=profile, event=event, route=route, extra={"unsubscribe_url": UNSUB})
        return renderer.render(route, context)

    for payload in INJECTIONS:
        with pytest.raises(TemplateRenderError, match="would contain a line break"):
            render(payload)

    email_ = render("Ada Bcc: victim@example.com <victim@example.com>")
    raw = build(subject=email_.subject, text=email_.text, html=email_.html, headers=list_unsubscribe_headers(UNSUB))
    msg = parse(raw)
    assert set(msg.keys()) == BASE_HEADERS | {"List-Unsubscribe", "List-Unsubscribe-Post"}
    assert sorted(field_names(raw)) == sorted(msg.keys())
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Ada Bcc: victim@example.com <victim@example.com>, you left something in your cart"
    assert [a.addr_spec for a in msg["To"].addresses] == ["ada@example.org"]
    # the product name with CRLF is body text, never a header
    assert "Shoe" in msg.get_body(preferencelist=("plain",)).get_content()
