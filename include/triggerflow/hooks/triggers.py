"""The trigger source named by connection ``adobe_triggers``.

Connection ``adobe_triggers`` (conn_type ``http``):

    host    the journal URL of the I/O Events registration
            (https://events.adobe.io/events/organizations/<org>/integrations/<int>/<registration>)
    extra   {"kind": "journal",          # the only kind so far; "pipeline" comes later
             "ims_conn_id": "adobe_ims",  # which IMS connection mints tokens
             "page_limit": 500,           # `limit` per journal request (an upper bound for Adobe)
             "reset": "earliest"}         # where to start when no position is stored

Changing only this connection switches the source; the DAG does not change.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from include.triggerflow.hooks.ims import AdobeImsHook
from include.triggerflow.sources.base import SourceError, TriggerSource

SOURCE_KINDS = ("journal",)


class TriggerSourceHook(BaseHook):
    conn_name_attr = "adobe_triggers_conn_id"
    default_conn_name = "adobe_triggers"
    conn_type = "http"
    hook_name = "Adobe trigger source"

    def __init__(self, adobe_triggers_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.adobe_triggers_conn_id = adobe_triggers_conn_id
        self.ims_hook: AdobeImsHook | None = None

    def get_conn(self) -> TriggerSource:
        return self.get_source()

    def get_source(self) -> TriggerSource:
        conn = self.get_connection(self.adobe_triggers_conn_id)
        extra: dict[str, Any] = dict(conn.extra_dejson or {})
        kind = str(extra.get("kind", "journal"))
        if kind not in SOURCE_KINDS:
            raise SourceError(
                f"connection {self.adobe_triggers_conn_id!r}: extra.kind {kind!r} is not one of {SOURCE_KINDS}"
            )
        url = (conn.host or "").strip()
        if not url.startswith(("http://", "https://")):
            raise SourceError(
                f"connection {self.adobe_triggers_conn_id!r}: host must be the full journal URL "
                f"(http[s]://...), got {url!r}"
            )
        ims = AdobeImsHook(str(extra.get("ims_conn_id", "adobe_ims")))
        self.ims_hook = ims
        from include.triggerflow.sources.journal import JournalSource

        return JournalSource(
            journal_url=url,
            api_key=ims.client_id,
            org_id=ims.org_id,
            token_provider=lambda refresh: ims.get_token(force_refresh=refresh),
            page_limit=int(extra.get("page_limit", 500)),
            reset=str(extra.get("reset", "earliest")),
        )
