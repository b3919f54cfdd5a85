"""The trigger source named by connection ``adobe_triggers``.

Connection ``adobe_triggers`` (conn_type ``http``) for the **I/O Events journal** (the public
pull route, reference §1.11):

    host    the journal URL of the I/O Events registration
            (https://events.adobe.io/events/organizations/<org>/integrations/<int>/<registration>)
    extra   {"kind": "journal",           # the default kind
             "ims_conn_id": "adobe_ims",  # which IMS connection mints tokens
             "page_limit": 500,           # `limit` per journal request (an upper bound for Adobe)
             "reset": "earliest",         # where to start when no position is stored
             "timeout_s": 30,             # socket connect/read timeout of one journal request
             "request_deadline_s": 60,    # one journal page, from request to its last byte
             "max_page_bytes": 67108864,  # one journal page body (64 MiB); see below
             "max_message_bytes": 1048576}  # one landed message (1 MiB, Pipeline's own limit)

and for the **Pipeline v3 consumer** (what Campaign's ``pipelined`` reads, reference §1.4-§1.9):

    host    optional: a forced Pipeline endpoint, e.g. https://producer-pipeline-lon.adobe.net
            (Campaign's ``forcedPipelineEndpoint``); empty = use discovery
    extra   {"kind": "pipeline",
             "consumer": "triggerflow-{env}",   # REQUIRED: the Pipeline consumer (group) name
             "environment": "prod",             # replaces {env}; default $TRIGGERFLOW_ENVIRONMENT, else "dev"
             "topic": "triggers",               # default triggers
             "partitions": 15,                  # default 15 (discovery's count wins if it differs)
             "discovery_url": "https://producer-pipeline-pnw.adobe.net",  # discoverPipelineEndpoint
             "reset": "earliest",               # earliest | latest: where a new partition starts
             "page_size": 1000,                 # messages per landed page (pointerFlushMessageCount)
             "read_timeout_s": 10,              # socket read timeout on the stream
             "idle_stop_s": 30,                 # stop a read after this long without DATA (SYNCs only)
             "max_tries": 4,                    # consecutive failures before the read fails
             "read_deadline_s": 45,             # one read (all its connections), start to end
             "max_read_bytes": 268435456,       # bytes received by one read (256 MiB)
             "max_line_bytes": 4194304,         # one stream line (4 MiB); longer: dropped, counted
             "keepalive_wait_s": 5,             # a read that got no DATA ends after this long
             "caught_up_pings": 2,              # PINGs in a row that end a read that got DATA
             "max_message_bytes": 1048576,      # one landed message (1 MiB, Pipeline's own limit)
             "ims_conn_id": "adobe_ims"}

Bounds (issue 10: every read from Adobe has a size cap and an overall deadline). Deadlines are
checked after every socket read, so a request ends at most one socket timeout after its deadline
however slowly the server trickles. A journal page larger than ``max_page_bytes`` is asked for
again with half the ``limit``, down to 1; a single item over the cap is skipped to the journal's
next position and counted as dropped ("journal item larger than N bytes"), so one huge message
cannot stall the source. A message larger than ``max_message_bytes`` (either kind) is landed cut
to that size, its real size and raw bytes kept, and quarantined with "message larger than N
bytes" — never silently truncated into an email. The Pipeline reader's PING handling (a PING never ends a read that has
received no DATA) is described in ``include/triggerflow/sources/pipeline.py``.

Consumer names must differ per environment: Pipeline gives every consumer name its own full copy
of the topic and tracks it separately, so dev, stage and prod reading with the same name would
compete for, and each miss, messages (CC-nms, CC-pipe). Put ``{env}`` in the name and set
``environment`` (or ``$TRIGGERFLOW_ENVIRONMENT``) per deployment. Offsets are stored per
consumer and topic (source key ``pipeline:<consumer>:<topic>``).

Changing only this connection switches the source; the DAG does not change.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from include.triggerflow.hooks.ims import AdobeImsHook
from include.triggerflow.sources.base import SourceError, TriggerSource

if TYPE_CHECKING:
    from sqlalchemy import Engine

SOURCE_KINDS = ("journal", "pipeline")
RESET_POLICIES = ("earliest", "latest")
ENVIRONMENT_VARIABLE = "TRIGGERFLOW_ENVIRONMENT"
DEFAULT_ENVIRONMENT = "dev"


class TriggerSourceHook(BaseHook):
    conn_name_attr = "adobe_triggers_conn_id"
    default_conn_name = "adobe_triggers"
    conn_type = "http"
    hook_name = "Adobe trigger source"

    def __init__(self, adobe_triggers_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.adobe_triggers_conn_id = adobe_triggers_conn_id
        self.ims_hook: AdobeImsHook | None = None
        self._token_store: Engine | None = None

    def get_conn(self) -> TriggerSource:
        return self.get_source()

    def _error(self, text: str) -> SourceError:
        return SourceError(f"connection {self.adobe_triggers_conn_id!r}: {text}")

    def get_source(self, *, token_store: Engine | None = None) -> TriggerSource:
        """The source; with ``token_store`` the IMS token is shared with other tasks and runs
        through the store (encrypted), so a run does not mint a token of its own."""
        self._token_store = token_store
        conn = self.get_connection(self.adobe_triggers_conn_id)
        extra: dict[str, Any] = dict(conn.extra_dejson or {})
        kind = str(extra.get("kind", "journal"))
        if kind not in SOURCE_KINDS:
            raise self._error(f"extra.kind {kind!r} is not one of {SOURCE_KINDS}")
        from include.triggerflow.stages.land import MAX_MESSAGE_BYTES

        #: what landing caps each message at (land_batch(max_message_bytes=...))
        self.max_message_bytes: int = self._number(extra, "max_message_bytes", MAX_MESSAGE_BYTES, integer=True)
        if kind == "pipeline":
            return self._pipeline_source(conn, extra)
        url = (conn.host or "").strip()
        if not url.startswith(("http://", "https://")):
            raise self._error(f"host must be the full journal URL (http[s]://...), got {url!r}")
        ims = self._ims_hook(extra)
        from include.triggerflow.sources.journal import (
            DEFAULT_MAX_PAGE_BYTES,
            DEFAULT_REQUEST_DEADLINE_S,
            DEFAULT_TIMEOUT_S,
            JournalSource,
        )

        return JournalSource(
            journal_url=url,
            api_key=ims.client_id,
            org_id=ims.org_id,
            token_provider=lambda refresh: ims.get_token(force_refresh=refresh),
            page_limit=self._number(extra, "page_limit", 500, integer=True),
            reset=str(extra.get("reset", "earliest")),
            timeout=self._number(extra, "timeout_s", DEFAULT_TIMEOUT_S, integer=False),
            request_deadline_s=self._number(extra, "request_deadline_s", DEFAULT_REQUEST_DEADLINE_S, integer=False),
            max_page_bytes=self._number(extra, "max_page_bytes", DEFAULT_MAX_PAGE_BYTES, integer=True),
        )

    def _ims_hook(self, extra: dict[str, Any]) -> AdobeImsHook:
        self.ims_hook = AdobeImsHook(str(extra.get("ims_conn_id", "adobe_ims")), token_store=self._token_store)
        return self.ims_hook

    # -- pipeline ----------------------------------------------------------------------------------
    def consumer_name(self, extra: dict[str, Any]) -> str:
        """``extra.consumer`` with ``{env}`` replaced by the environment name."""
        raw = extra.get("consumer")
        if not isinstance(raw, str) or not raw.strip():
            raise self._error(
                "extra.consumer is required for kind 'pipeline': the Pipeline consumer name, "
                "unique per environment (e.g. \"triggerflow-{env}\")"
            )
        env = str(extra.get("environment") or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_ENVIRONMENT).strip()
        if not env:
            raise self._error("extra.environment is empty")
        consumer = raw.strip().replace("{env}", env)
        if any(ch.isspace() for ch in consumer) or "," in consumer:
            raise self._error(f"extra.consumer {consumer!r} must not contain spaces or commas")
        return consumer

    def _number(self, extra: dict[str, Any], name: str, default: Any, *, integer: bool) -> Any:
        value = extra.get(name, default)
        if value is None and not integer:
            return None
        try:
            number = int(value) if integer else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or number <= 0 or (integer and number != float(value)):
            text = "a positive integer" if integer else "a positive number"
            raise self._error(f"extra.{name} must be {text}, got {value!r}")
        return number

    def _pipeline_source(self, conn: Any, extra: dict[str, Any]) -> TriggerSource:
        from include.triggerflow.sources import pipeline as p

        consumer = self.consumer_name(extra)
        reset = str(extra.get("reset", "earliest"))
        if reset not in RESET_POLICIES:
            raise self._error(f"extra.reset must be 'earliest' or 'latest', not {reset!r}")
        forced = (conn.host or "").strip() or None
        if forced is not None and not forced.startswith(("http://", "https://")):
            raise self._error(
                f"host is the forced Pipeline endpoint and must be a full URL (http[s]://...), got "
                f"{forced!r}; leave it empty to use discovery"
            )
        discovery_url = str(extra.get("discovery_url") or p.DEFAULT_DISCOVERY_URL).strip()
        if not discovery_url.startswith(("http://", "https://")):
            raise self._error(f"extra.discovery_url must be a full URL (http[s]://...), got {discovery_url!r}")
        topic = str(extra.get("topic") or "triggers").strip()
        if not topic or "/" in topic:
            raise self._error(f"extra.topic {topic!r} is not a topic name")
        ims = self._ims_hook(extra)
        return p.PipelineSource(
            consumer=consumer,
            topic=topic,
            partitions=self._number(extra, "partitions", 15, integer=True),
            token_provider=lambda refresh: ims.get_token(force_refresh=refresh),
            org_id=ims.org_id,
            forced_endpoint=forced,
            discovery_url=discovery_url,
            reset=reset,
            read_timeout_s=self._number(extra, "read_timeout_s", 10.0, integer=False),
            idle_stop_s=self._number(extra, "idle_stop_s", 30.0, integer=False),
            page_size=self._number(extra, "page_size", 1000, integer=True),
            max_tries=self._number(extra, "max_tries", 4, integer=True),
            read_deadline_s=self._number(extra, "read_deadline_s", p.DEFAULT_READ_DEADLINE_S, integer=False),
            max_read_bytes=self._number(extra, "max_read_bytes", p.DEFAULT_MAX_READ_BYTES, integer=True),
            max_line_bytes=self._number(extra, "max_line_bytes", p.DEFAULT_MAX_LINE_BYTES, integer=True),
            keepalive_wait_s=self._number(extra, "keepalive_wait_s", p.DEFAULT_KEEPALIVE_WAIT_S, integer=False),
            caught_up_pings=self._number(extra, "caught_up_pings", p.DEFAULT_CAUGHT_UP_PINGS, integer=True),
        )
