"""Signed one-click unsubscribe links (RFC 8058) and recording the opt-outs they carry.

    tokens.py    the token (``v1.<payload>.<signature>``): signing, format and signature checks,
                 the URLs that carry it (:class:`UnsubscribeLinks`)
    records.py   what a verified claim writes: ``profiles.opted_out`` and one ``tf_unsubscribe``
                 row per customer and link; the data step of migration 0007

Every public name of the former ``unsubscribe.py`` is importable from here (migration 0007 names
``include.triggerflow.unsubscribe:backfill_token_keys``).
"""

from include.triggerflow.unsubscribe.records import (
    METHOD_ONE_CLICK,
    METHOD_PAGE,
    METHODS,
    OptOutRecorded,
    UnsubscribeMethod,
    backfill_token_keys,
    log_opt_out,
    record_opt_out,
    record_opt_out_in,
)
from include.triggerflow.unsubscribe.tokens import (
    FUTURE_SKEW,
    MAX_ID_CHARS,
    MAX_TOKEN_CHARS,
    MIN_SECRET_BYTES,
    TOKEN_PARAM,
    TOKEN_VERSION,
    URL_PATH,
    URL_PREFIX,
    InvalidUnsubscribeToken,
    UnsubscribeClaim,
    UnsubscribeLinks,
    check_base_url,
    check_token_format,
    redact_token,
    token_key_for,
)

__all__ = [
    "FUTURE_SKEW",
    "MAX_ID_CHARS",
    "MAX_TOKEN_CHARS",
    "METHODS",
    "METHOD_ONE_CLICK",
    "METHOD_PAGE",
    "MIN_SECRET_BYTES",
    "TOKEN_PARAM",
    "TOKEN_VERSION",
    "URL_PATH",
    "URL_PREFIX",
    "InvalidUnsubscribeToken",
    "OptOutRecorded",
    "UnsubscribeClaim",
    "UnsubscribeLinks",
    "UnsubscribeMethod",
    "backfill_token_keys",
    "check_base_url",
    "check_token_format",
    "log_opt_out",
    "record_opt_out",
    "record_opt_out_in",
    "redact_token",
    "token_key_for",
]
