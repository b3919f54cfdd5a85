"""build_message_fast (the send stage's builder) against build_message (the email package reference).

For many inputs, both must refuse the same inputs with the same error, or build messages that the
email package parses to the same headers (names, order, decoded values), the same parts, content
types, charsets, transfer encodings and decoded bodies. The header block is byte-identical; so is
the whole message when the bodies need no quoted-printable soft line break."""

from __future__ import annotations

import email
import random
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from include.triggerflow.mailer import (
    HeaderInjectionError,
    InvalidAddressError,
    build_message,
    build_message_fast,
    list_unsubscribe_headers,
    message_id_for,
)

DATE = datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)
KEY = "3f" * 32
UNSUB = "http://localhost:8080/triggerflow/unsubscribe/?token=v1.WyJDMDAwMDAwMSIsImNhcnQiLDE3NjQ2MzQ0MDBd.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def base(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "from_addr": "shop@example.com",
        "from_name": "triggerflow shop",
        "to_addr": "ada@example.org",
        "subject": "Ada, you left something in your cart",
        "text": "Hi Ada,\nyour cart is waiting.\n",
        "html": "<p>Hi Ada,</p>\n<p>your cart is waiting.</p>\n",
        "message_id": message_id_for(KEY, "triggerflow.local"),
        "headers": {"X-Triggerflow-Key": KEY, **list_unsubscribe_headers(UNSUB, "unsubscribe@shop.example")},
        "date": DATE,
    }
    kwargs.update(overrides)
    return kwargs


def outcome(builder: Any, kwargs: dict[str, Any]) -> bytes | tuple[type[BaseException], str]:
    try:
        return builder(**kwargs)
    except Exception as exc:
        return type(exc), str(exc)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def describe(raw: bytes) -> dict[str, Any]:
    """Everything a reader of the message sees, decoded."""
    msg = parse(raw)
    parts = list(msg.iter_parts())
    return {
        "headers": [(name, str(value)) for name, value in msg.items()],
        "defects": [type(d).__name__ for d in msg.defects],
        "content_type": msg.get_content_type(),
        "boundary": msg.get_boundary(),
        "parts": [
            {
                "headers": [(name, str(value)) for name, value in part.items()],
                "content_type": part.get_content_type(),
                "charset": part.get_content_charset(),
                "cte": part["Content-Transfer-Encoding"],
                "payload": part.get_payload(decode=True),
                "content": part.get_content(),
                "defects": [type(d).__name__ for d in part.defects],
            }
            for part in parts
        ],
    }


def assert_same(kwargs: dict[str, Any]) -> None:
    reference = outcome(build_message, kwargs)
    fast = outcome(build_message_fast, kwargs)
    if not isinstance(reference, bytes) or not isinstance(fast, bytes):
        assert fast == reference, kwargs
        return
    assert header_block(fast) == header_block(reference), kwargs
    assert describe(fast) == describe(reference), kwargs
    lines = fast.split(b"\r\n")
    assert fast.endswith(b"\r\n") and b"\n" not in fast.replace(b"\r\n", b"") and b"\r" not in fast.replace(b"\r\n", b"")
    assert all(line.isascii() for line in lines)  # 7-bit clean, like the reference
    body_lines = lines[len(header_block(fast).split(b"\r\n")):]
    assert max(len(line) for line in body_lines) <= 78


# -- hand-picked cases -------------------------------------------------------------------------------
LONG_URL = "https://airflow.example.com/triggerflow/unsubscribe/?token=v1." + "A" * 180 + "." + "B" * 43
CASES: list[tuple[str, dict[str, Any]]] = [
    ("typical", {}),
    ("no-from-name", {"from_name": None}),
    ("blank-from-name", {"from_name": "   "}),
    ("from-name-with-specials", {"from_name": 'Shop, Inc. "Outdoor" (EU)'}),
    ("non-ascii-from-name", {"from_name": "Boutique Zoë & Søren"}),
    ("non-ascii-subject", {"subject": "Zoë, vous avez oublié quelque chose dans votre panier — à bientôt"}),
    ("emoji-subject", {"subject": "🛒 Ada, your cart misses you 😀"}),
    ("cjk-subject", {"subject": "カートに商品が残っています、アダさん"}),
    ("rtl-subject", {"subject": "مرحبا Ada، سلتك بانتظارك"}),
    ("long-ascii-subject", {"subject": "Ada, " + " ".join(["something"] * 30)}),
    ("long-unbreakable-subject", {"subject": "x" * 200}),
    ("subject-with-double-spaces", {"subject": "Ada,  you   left"}),
    ("subject-with-encoded-word-lookalike", {"subject": "Deal =?utf-8?q?caf=C3=A9?= now"}),
    ("subject-with-specials", {"subject": 'Re: "cart" (2 items) <now> [sale]; a\\b, 100% off: #1'}),
    ("tab-in-subject", {"subject": "Ada\tcart"}),
    ("long-recipient", {"to_addr": "a" * 70 + "@example.org"}),
    ("odd-but-valid-recipients", {"to_addr": "a..b@example.org"}),
    ("trailing-dot-local", {"to_addr": "ada.@example.org"}),
    ("plus-recipient", {"to_addr": "ada+cart@mail.example.co.uk"}),
    ("recipient-with-spaces-around", {"to_addr": "  ada@example.org  "}),
    ("resend-message-id", {"message_id": message_id_for(KEY + ".resend2", "mail.shop.example")}),
    ("odd-message-id", {"message_id": "<a..b@x.example>"}),
    ("non-ascii-message-id", {"message_id": "<zoë@x.example>"}),
    ("long-domain-message-id", {"message_id": message_id_for(KEY, "m." + "sub." * 20 + "example.com")}),
    ("date-with-offset", {"date": datetime(2024, 3, 5, 14, 7, 9, tzinfo=timezone(timedelta(hours=5, minutes=30)))}),
    ("date-negative-offset", {"date": datetime(2024, 3, 5, 14, 7, 9, tzinfo=timezone(timedelta(hours=-8)))}),
    ("date-seconds-offset", {"date": datetime(2024, 3, 5, 14, 7, 9, tzinfo=timezone(timedelta(seconds=3661)))}),
    ("no-extra-headers", {"headers": None}),
    ("long-unsubscribe-url", {"headers": list_unsubscribe_headers(LONG_URL, "unsubscribe@example.com")}),
    ("non-ascii-extra-header", {"headers": {"X-Note": "café crème"}}),
    ("verbatim-odd-spacing", {"headers": {"X-Data": "a  " + "b" * 90 + "  c"}}),
    ("verbatim-trailing-space", {"headers": {"X-Data": "x " * 60 + " "}}),
    ("verbatim-too-long", {"headers": list_unsubscribe_headers("https://x.example/?t=" + "A" * 1000)}),
    ("non-ascii-bodies", {"text": "Hallo Zoë,\nGrüße aus Köln — 1 234,50 €\n", "html": "<p>Zoë 😀 &eacute;</p>\n"}),
    ("long-body-lines", {"text": "word " * 200 + "\n" + "x" * 500, "html": "<td>" + "y" * 300 + "</td>"}),
    ("qp-specials", {"text": "a=b\n.leading dot\n.\nFrom here\ntrailing space \ntrailing tab\t\n\tlead tab",
                     "html": "=3D\n=\n==\n<a href=\"x\">=</a>  "}),
    ("line-endings", {"text": "a\r\nb\rc\nd\r\n\r\n", "html": "\r\n"}),
    ("control-characters", {"text": "nul\x00 vt\x0b ff\x0c fs\x1c nel\x85 ls\u2028 del\x7f", "html": "\x1b[31m"}),
    ("empty-bodies", {"text": "", "html": ""}),
    ("no-final-newline", {"text": "Hi", "html": "<p>Hi</p>"}),
    ("lone-surrogate-body", {"text": "bad \ud800 surrogate"}),
    # the refusals must be the same
    ("subject-crlf", {"subject": "x\r\nBcc: victim@example.com"}),
    ("subject-u2028", {"subject": "x\u2028Bcc: victim@example.com"}),
    ("from-name-lf", {"from_name": "Shop\nBcc: x@evil.test"}),
    ("to-injection", {"to_addr": "ada@example.org\r\nBcc: victim@example.com"}),
    ("to-two-recipients", {"to_addr": "ada@example.org, victim@example.com"}),
    ("to-non-ascii", {"to_addr": "zoë@example.org"}),
    ("bad-message-id", {"message_id": "key@domain"}),
    ("reserved-extra", {"headers": {"Bcc": "x@example.com"}}),
    ("duplicate-extra", {"headers": {"X-A": "1", "x-a": "2"}}),
    ("bad-extra-name", {"headers": {"X A": "1"}}),
    ("extra-crlf", {"headers": {"X-A": "1\r\nBcc: x@example.com"}}),
    ("naive-date", {"date": datetime(2024, 3, 5, 14, 7, 9)}),
]


@pytest.mark.parametrize("overrides", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_fast_builder_matches_the_reference(overrides: dict[str, Any]) -> None:
    assert_same(base(**overrides))


def test_refusals_are_the_same_errors() -> None:
    for overrides in ({"subject": "x\r\ny"}, {"to_addr": "a@b"}, {"message_id": "<x>"}):
        with pytest.raises((HeaderInjectionError, InvalidAddressError, ValueError)) as reference:
            build_message(**base(**overrides))
        with pytest.raises(type(reference.value), match=None) as fast:
            build_message_fast(**base(**overrides))
        assert str(fast.value) == str(reference.value)


def test_plain_bodies_give_byte_identical_messages() -> None:
    kwargs = base(text="Hi Ada,\n\nyour cart is waiting.\n-- \nshop\n", html="<p>Hi Ada,</p>\n<p>cart</p>\n")
    assert build_message_fast(**kwargs) == build_message(**kwargs)


def test_default_date_is_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    msg = parse(build_message_fast(**base(date=None)))
    assert before <= msg["Date"].datetime <= datetime.now(UTC)


# -- many generated inputs ---------------------------------------------------------------------------
WORDS = ["Ada", "cart", "you", "left", "something", "Zoë", "François", "Müller", "José", "Ødegaard",
         "😀", "🛒", "カート", "مرحبا", "—", "€", "1 234,50", "100%", "=?", "?=", '"q"', "(c)", "<x>", "a,b",
         "\\", ";", ":", "#", "   ", "\t", "=", ".", "x" * 40, "é" * 30, "line"]
ADDRESSES = ["ada@example.org", "a.b.c@example.org", "A+tag@Example.ORG", "o'brien@example.ie", "x=y@a.example",
             "a%b@c.example", "a/b@c.example", "-@x.example", "_@x.example", "a..b@x.example", ".a@x.example",
             "a.@x.example", "user@sub-domain.example.co.uk", "u" * 64 + "@" + "d" * 60 + ".example",
             "a{b}|c~d@x.example", "a!b#c$d&e*f@x.example"]
NAMES = [None, "", "triggerflow shop", "Zoë's shop", "Shop, Inc.", 'The "Best" Shop', "ショップ", "A" * 90,
         "Shop (EU)", "  padded  ", "shop@example.com", "a;b", "Søren & Co"]


def random_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def random_body(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.random()
        if kind < 0.5:
            pieces.append(random_text(rng, rng.randint(0, 25)))
        elif kind < 0.6:
            pieces.append("".join(rng.choice("abc =.\t ") for _ in range(rng.randint(70, 200))))
        elif kind < 0.7:
            pieces.append(rng.choice([".", ".x", "From x", "=", "=3D", " ", "\t", "\x00", "\x0c", "\u2028", "<p>&amp;</p>"]))
        else:
            pieces.append(rng.choice(["", "€uro", "😀" * rng.randint(1, 40), "é" * rng.randint(1, 80)]))
        pieces.append(rng.choice(["\n", "\r\n", "\r", "", "\n\n"]))
    return "".join(pieces)


@pytest.mark.parametrize("seed", range(12))
def test_generated_inputs_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        headers: dict[str, str] = {"X-Triggerflow-Key": KEY}
        if rng.random() < 0.8:
            url = UNSUB + "".join(rng.choice("abcXYZ019-_.") for _ in range(rng.randint(0, 400)))
            headers.update(list_unsubscribe_headers(url, rng.choice([None, "unsubscribe@shop.example"])))
        if rng.random() < 0.2:
            headers["X-Note"] = random_text(rng, rng.randint(1, 12)).replace("\t", " ")
        offset = timedelta(minutes=rng.choice([0, 0, 60, -300, 330, 765, -720]))
        assert_same(
            base(
                from_name=rng.choice(NAMES),
                to_addr=rng.choice(ADDRESSES),
                subject=random_text(rng, rng.randint(1, 20)).strip() or "x",
                text=random_body(rng),
                html=random_body(rng),
                message_id=message_id_for(f"{rng.getrandbits(256):064x}" + rng.choice(["", ".resend1"]),
                                          rng.choice(["triggerflow.local", "mail.shop.example", "x" * 50 + ".example"])),
                headers=headers,
                date=datetime(2026, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59),
                              rng.randint(0, 59), tzinfo=timezone(offset)),
            )
        )


@pytest.mark.parametrize("seed", range(4))
def test_quoted_printable_line_by_line_is_the_whole_body_encoding(seed: int) -> None:
    import binascii

    from include.triggerflow.mailer.fast import _qp_body

    rng = random.Random(seed)
    for _ in range(500):
        text = random_body(rng) + rng.choice(["", " ", "\t", "x" * 80 + " ", "=" * 30])
        whole = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
        expected = binascii.b2a_qp(whole, istext=True).replace(b"\n", b"\r\n")
        assert _qp_body(text) == expected, text
