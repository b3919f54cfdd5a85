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
from typing import TYPE_CHECKING

import requests
from airflow.sdk import BaseHook

from include.triggerflow.adobe.extras import ExtrasError, TriggersExtras
from include.triggerflow.hooks.ims import AdobeImsHook
from include.triggerflow.sources.base import RESET_POLICIES, SOURCE_KINDS, SourceError, SourceKind, TriggerSource

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from sqlalchemy import Engine

    from include.triggerflow.sources.journal import JournalSource
    from include.triggerflow.sources.pipeline import PipelineSource

__all__ = ["DEFAULT_ENVIRONMENT", "ENVIRONMENT_VARIABLE", "RESET_POLICIES", "SOURCE_KINDS", "TriggerSourceHook"]

ENVIRONMENT_VARIABLE = "TRIGGERFLOW_ENVIRONMENT"
DEFAULT_ENVIRONMENT = "dev"


def _full_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


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
        #: what landing caps each message at (land_batch(max_message_bytes=...)); set by get_source
        self.max_message_bytes: int = 0
        # One HTTP session per hook, handed to the source it builds (connection reuse across pages
        # and reconnects). Not the http provider's HttpHook: the journal and the Pipeline stream
        # are read with stream=True under a byte cap and a deadline per answer (sources/bounded.py),
        # which HttpHook.run does not offer, and HttpHook would send this connection's extras as
        # headers; the retry rule is adobe/http.py's.
        self.session = requests.Session()

    def get_conn(self) -> TriggerSource:
        return self.get_source()

    def _error(self, text: str) -> SourceError:
        return SourceError(f"connection {self.adobe_triggers_conn_id!r}: {text}")

    def extras(self, conn: Connection) -> TriggersExtras:
        """The connection's extras validated (pydantic; unknown keys get a "did you mean")."""
        try:
            return TriggersExtras.parse(conn.extra_dejson or {})
        except ExtrasError as exc:
            raise self._error(str(exc)) from None

    def get_source(self, *, token_store: Engine | None = None) -> TriggerSource:
        """The source; with ``token_store`` the IMS token is shared with other tasks and runs
        through the store (encrypted), so a run does not mint a token of its own."""
        self._token_store = token_store
        conn = self.get_connection(self.adobe_triggers_conn_id)
        extras = self.extras(conn)
        from include.triggerflow.stages.landing_payload import MAX_MESSAGE_BYTES

        self.max_message_bytes = extras.value("max_message_bytes", MAX_MESSAGE_BYTES)
        if extras.kind == SourceKind.PIPELINE:
            return self._pipeline_source(conn, extras)
        return self._journal_source(conn, extras)

    def _ims_hook(self, extras: TriggersExtras) -> AdobeImsHook:
        self.ims_hook = AdobeImsHook(extras.ims_conn_id, token_store=self._token_store)
        return self.ims_hook

    # -- journal -----------------------------------------------------------------------------------
    def _journal_source(self, conn: Connection, extras: TriggersExtras) -> JournalSource:
        from include.triggerflow.sources.journal import DEFAULT_REQUEST_DEADLINE_S, DEFAULT_TIMEOUT_S, JournalSource

        url = (conn.host or "").strip()
        if not _full_url(url):
            raise self._error(f"host must be the full journal URL (http[s]://...), got {url!r}")
        ims = self._ims_hook(extras)
        return JournalSource(
            journal_url=url,
            api_key=ims.client_id,
            org_id=ims.org_id,
            token_provider=lambda refresh: ims.get_token(force_refresh=refresh),
            page_limit=extras.page_limit,
            reset=extras.reset,
            timeout=extras.timeout_s or DEFAULT_TIMEOUT_S,
            request_deadline_s=extras.request_deadline_s or DEFAULT_REQUEST_DEADLINE_S,
            max_page_bytes=extras.max_page_bytes,
            session=self.session,
        )

    # -- pipeline ----------------------------------------------------------------------------------
    def consumer_name(self, extras: TriggersExtras) -> str:
        """``extra.consumer`` with ``{env}`` replaced by the environment name."""
        raw = extras.consumer
        if not isinstance(raw, str) or not raw.strip():
            raise self._error(
                "extra.consumer is required for kind 'pipeline': the Pipeline consumer name, "
                "unique per environment (e.g. \"triggerflow-{env}\")"
            )
        env = str(extras.environment or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_ENVIRONMENT).strip()
        if not env:
            raise self._error("extra.environment is empty")
        consumer = raw.strip().replace("{env}", env)
        if any(ch.isspace() for ch in consumer) or "," in consumer:
            raise self._error(f"extra.consumer {consumer!r} must not contain spaces or commas")
        return consumer

    def _pipeline_source(self, conn: Connection, extras: TriggersExtras) -> PipelineSource:
        from include.triggerflow.sources import pipeline as p

        consumer = self.consumer_name(extras)
        forced = (conn.host or "").strip() or None
        if forced is not None and not _full_url(forced):
            raise self._error(
                f"host is the forced Pipeline endpoint and must be a full URL (http[s]://...), got "
                f"{forced!r}; leave it empty to use discovery"
            )
        discovery_url = str(extras.discovery_url or p.DEFAULT_DISCOVERY_URL).strip()
        if not _full_url(discovery_url):
            raise self._error(f"extra.discovery_url must be a full URL (http[s]://...), got {discovery_url!r}")
        topic = str(extras.topic or p.DEFAULT_TOPIC).strip()
        if not topic or "/" in topic:
            raise self._error(f"extra.topic {topic!r} is not a topic name")
        ims = self._ims_hook(extras)
        return p.PipelineSource(
            consumer=consumer,
            topic=topic,
            partitions=extras.partitions,
            token_provider=lambda refresh: ims.get_token(force_refresh=refresh),
            org_id=ims.org_id,
            forced_endpoint=forced,
            discovery_url=discovery_url,
            reset=extras.reset,
            read_timeout_s=extras.value("read_timeout_s", 10.0) or 10.0,
            idle_stop_s=extras.value("idle_stop_s", 30.0),
            page_size=extras.page_size,
            max_tries=extras.max_tries,
            read_deadline_s=extras.read_deadline_s or p.DEFAULT_READ_DEADLINE_S,
            max_read_bytes=extras.max_read_bytes,
            max_line_bytes=extras.max_line_bytes,
            keepalive_wait_s=extras.keepalive_wait_s or p.DEFAULT_KEEPALIVE_WAIT_S,
            caught_up_pings=extras.caught_up_pings,
            session=self.session,
        )
