"""The extras of connections ``adobe_ims`` and ``adobe_triggers``, validated with pydantic v2.

Every key either has a field here or is refused (``extra="forbid"``) with a "did you mean" hint,
so a typo such as ``page_limt`` is an error naming the connection and the key instead of a
silently ignored setting. Values keep the messages users know ("extra.page_size must be a
positive integer, got 2.5"). A key left out is not in ``model_fields_set``: :meth:`value` gives the
hook's default then, while an explicit ``null`` stays None (``idle_stop_s: null`` disables it).
Checks that combine keys with the connection's host or the environment stay in the hooks.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

T = TypeVar("T")


class AuthType(StrEnum):
    """How AdobeImsHook obtains a token (extra.auth_type)."""

    OAUTH = "oauth"  # OAuth Server-to-Server: POST /ims/token/v3
    JWT = "jwt"  # the deprecated service account: a signed JWT to POST /ims/exchange/jwt


AUTH_TYPES: tuple[str, ...] = tuple(kind.value for kind in AuthType)


def _fail(text: str) -> PydanticCustomError:
    # "{text}" keeps braces in the user's value from being read as a template
    return PydanticCustomError("extra_value", "{text}", {"text": text})


def _positive(*, integer: bool, wording: str | None = None) -> Callable[[object], object]:
    kind = wording or ("a positive integer" if integer else "a positive number")

    def check(value: object) -> object:
        if value is None and not integer:
            return None
        number: float | None
        try:
            number = int(value) if integer else float(value)  # type: ignore[call-overload,arg-type]
        except (TypeError, ValueError, OverflowError):
            number = None
        ok = (
            number is not None and not isinstance(value, bool) and number > 0
            and number == number and number != float("inf")  # noqa: PLR0124 - NaN is the one value unequal to itself
            and (not integer or number == float(value))  # type: ignore[arg-type]
        )
        if not ok:
            raise _fail(f"must be {kind}, got {value!r}")
        return number

    return check


def _one_of(choices: tuple[str, ...], *, lower: bool = False) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = str(value).strip()
        text = text.lower() if lower else text
        if text not in choices:
            raise _fail(f"{value!r} is not one of {choices}")
        return text

    return check


def _reset(value: object) -> str:
    text = str(value)
    if text not in ("earliest", "latest"):
        raise _fail(f"must be 'earliest' or 'latest', not {text!r}")
    return text


def _auth_type(value: object) -> str:
    if value is None or not str(value).strip():
        return "oauth"  # unset or blank: the default mode
    return _one_of(AUTH_TYPES, lower=True)(value)


def _text(value: object) -> str:
    return "" if value is None else str(value)


Text = Annotated[str, BeforeValidator(_text)]
PositiveInt = Annotated[int, BeforeValidator(_positive(integer=True))]
PositiveFloat = Annotated[float | None, BeforeValidator(_positive(integer=False))]
WholeCount = Annotated[int, BeforeValidator(_positive(integer=True, wording="a positive whole number"))]


class ExtrasError(ValueError):
    """One unusable extra; the message starts with ``extra.<key>``."""


class _Extras(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    #: what the connection is called in messages
    role: ClassVar[str] = "this connection"

    @classmethod
    def parse(cls: type[_E], extra: Mapping[str, object]) -> _E:
        """The validated extras, or ExtrasError naming the first unusable key."""
        try:
            return cls.model_validate(dict(extra))
        except ValidationError as exc:
            raise ExtrasError(cls._message(exc)) from None

    @classmethod
    def _message(cls, exc: ValidationError) -> str:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "?"
        if error["type"] == "extra_forbidden":
            text = f"extra.{key} is not a setting of {cls.role}"
            close = difflib.get_close_matches(key, list(cls.model_fields), n=1)
            return text + (f"; did you mean {close[0]!r}?" if close else "")
        if error["type"] == "extra_value":
            return f"extra.{key} {error['msg']}"
        return f"extra.{key} {error['msg'].lower()}, got {error.get('input')!r}"

    def value(self, name: str, default: T) -> T:
        """The extra as given (None when given as null), else ``default``."""
        return getattr(self, name) if name in self.model_fields_set else default


_E = TypeVar("_E", bound=_Extras)


class ImsExtras(_Extras):
    """Extras of an ``adobe_ims`` connection (see hooks/ims.py for what each one does)."""

    role: ClassVar[str] = "an Adobe IMS connection (conn_type http)"
    org_id: Text = ""
    auth_type: Annotated[str, BeforeValidator(_auth_type)] = "oauth"
    scopes: Text = ""
    # the JWT service account's; checked by the hook when auth_type is jwt, whose messages name
    # what to fetch from the Developer Console
    technical_account_id: object = None
    private_key: object = None
    metascopes: object = None
    jwt_ttl_s: object = None
    max_answer_bytes: WholeCount = 64 * 1024
    request_deadline_s: Annotated[float, BeforeValidator(_positive(integer=False))] = 60.0
    timeout_s: Annotated[float, BeforeValidator(_positive(integer=False))] = 30.0


class TriggersExtras(_Extras):
    """Extras of an ``adobe_triggers`` connection, both kinds (switching ``kind`` alone switches
    the source, so a journal connection may keep its pipeline settings and the other way round)."""

    role: ClassVar[str] = "an Adobe trigger source connection (conn_type http)"
    kind: Annotated[str, BeforeValidator(_one_of(("journal", "pipeline")))] = "journal"
    ims_conn_id: Text = "adobe_ims"
    reset: Annotated[str, BeforeValidator(_reset)] = "earliest"
    max_message_bytes: PositiveInt = 1024 * 1024
    # journal
    page_limit: PositiveInt = 500
    timeout_s: PositiveFloat = None
    request_deadline_s: PositiveFloat = None
    max_page_bytes: PositiveInt = 64 * 1024 * 1024
    # pipeline
    consumer: object = None
    environment: object = None
    topic: object = None
    partitions: PositiveInt = 15
    discovery_url: object = None
    page_size: PositiveInt = 1000
    read_timeout_s: PositiveFloat = None
    idle_stop_s: PositiveFloat = None
    max_tries: PositiveInt = 4
    read_deadline_s: PositiveFloat = None
    max_read_bytes: PositiveInt = 256 * 1024 * 1024
    max_line_bytes: PositiveInt = 4 * 1024 * 1024
    keepalive_wait_s: PositiveFloat = None
    caught_up_pings: PositiveInt = 2
    # the status document's keep-alive warning thresholds: status/settings.py reads and checks them
    # (a bad value is logged there and its default applies; the source itself never uses them)
    keepalive_warning_reads: object = None
    keepalive_warning_age_s: object = None
