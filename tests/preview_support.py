"""What the preview tests share, unit and integration: the sample profiles, the sender, the
sample cart event, and reading an email's parts."""

from __future__ import annotations

import email
import json
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from include.triggerflow.preview import SAMPLES_DIR

PROFILE = {
    "customer_id": "C0003",
    "email": "grace.hopper@example.com",
    "first_name": "Grace",
    "locale": "en_US",
    "timezone": "America/New_York",
}
FRENCH = {**PROFILE, "customer_id": "C0004", "email": "marie@example.fr", "first_name": "Marie", "locale": "fr_FR", "timezone": "Europe/Paris"}
SENDER = "shop@triggerflow.test"


def cart_event() -> dict[str, Any]:
    return json.loads((SAMPLES_DIR / "cart_abandonment.event.json").read_text())


def parse_eml(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body(msg: EmailMessage, kind: str) -> str:
    part = msg.get_body(preferencelist=(kind,))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")
