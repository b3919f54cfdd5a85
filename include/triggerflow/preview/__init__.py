"""Preview and test-send one route's email for a given event and profile, outside the DAG.

Template authors need to see an email before a trigger fires in production, and marketers want a
real copy in their own mailbox. Both go through exactly the code the send stage uses (routing,
:class:`~include.triggerflow.render.Renderer`, :func:`~include.triggerflow.mailer.build_message`),
so what a preview shows is what a customer gets, but neither touches the store's send ledger:

* :func:`render_preview` writes ``subject.txt``, ``email.html``, ``email.txt`` and ``message.eml``
  (the complete MIME message, openable in a mail client) into a folder;
* :func:`send_test` sends the email to a list of seed addresses over a
  :class:`~include.triggerflow.hooks.smtp.TriggerMailHook` session, subject prefixed with
  ``[TEST] ``; it validates every seed first and sends to none if one is bad.

Events may be given as the pipeline envelope (what ``tf_event.payload`` holds), as a Pipeline
producer message (``{"messageType": ..., "message": {...}}``) or as the bare trigger body; profiles
as a dict of profile columns (missing columns are filled with None, as a store row would have them).
Sample events and profiles live in ``include/templates/samples/`` (see :func:`sample_event`), with
a sample catalogue (``samples/catalog.json``, :func:`sample_catalog`): a route in catalogue mode
(the default) shows the products of the catalogue it is given, the sample one unless told otherwise,
exactly as the send stage shows those of the store's ``catalog`` table.

Modules: ``inputs`` (routes, events, profiles, samples), ``rendering`` (render_for, render_preview),
``seeds`` (send_test).
"""

from __future__ import annotations

from include.triggerflow.preview.inputs import (
    SAMPLES_DIR,
    PreviewError,
    as_envelope,
    complete_profile,
    find_route,
    parse_event,
    sample_catalog,
    sample_event,
    sample_profile,
)
from include.triggerflow.preview.rendering import (
    DEFAULT_UNSUBSCRIBE_URL,
    PREVIEW_FILES,
    PREVIEW_FROM,
    PREVIEW_FROM_NAME,
    RenderOptions,
    render_for,
    render_preview,
)
from include.triggerflow.preview.seeds import TestSendResult, send_test

__all__ = [
    "DEFAULT_UNSUBSCRIBE_URL",
    "PREVIEW_FILES",
    "PREVIEW_FROM",
    "PREVIEW_FROM_NAME",
    "SAMPLES_DIR",
    "PreviewError",
    "RenderOptions",
    "TestSendResult",
    "as_envelope",
    "complete_profile",
    "find_route",
    "parse_event",
    "render_for",
    "render_preview",
    "sample_catalog",
    "sample_event",
    "sample_profile",
    "send_test",
]
