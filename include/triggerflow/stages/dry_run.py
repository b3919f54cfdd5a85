"""Dry runs of the send stage: every email rendered into a folder, nothing sent.

The ledger states stay as they are, so a later real run sends them; each rendered email is
recorded in ``tf_dry_run`` (and logged ``dry-run`` in tf_send_log) with the file it went to.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, insert

from include.triggerflow.send_log import SendLog
from include.triggerflow.smtp_replies import SmtpOutcome
from include.triggerflow.states import SendAction
from include.triggerflow.store.schema import dry_run
from include.triggerflow.timeutil import utcnow


class DryRunSession:
    """Stands in for the SMTP session in a dry run: same checks, nothing sent."""

    sender = "dry-run@triggerflow.local"
    from_name = "triggerflow dry run"
    message_id_domain = "dry-run.triggerflow.local"

    def __enter__(self) -> DryRunSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:  # pragma: no cover - never called
        raise AssertionError("a dry run never sends")


def write_dry_run(folder: Path | None, batch_id: str, key: str, recipient: str, message: bytes) -> Path:
    """``<folder>/<batch>/<key>.eml``, with the envelope recipient as its first header; written
    whole or not at all (a temporary file renamed)."""
    assert folder is not None
    target = folder / re.sub(r"[^A-Za-z0-9._-]+", "_", batch_id)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{key}.eml"
    tmp = path.with_suffix(".eml.tmp")
    tmp.write_bytes(b"X-Envelope-To: " + recipient.encode() + b"\r\n" + message)
    tmp.replace(path)
    return path


def record_dry_run(engine: Engine, logger: SendLog, folder: Path | None, batch_id: str, run_id: str | None,
                   send_id: int, key: str, recipient: str, message: bytes) -> Path:
    """Write one email's file and record it (tf_dry_run and tf_send_log, one transaction)."""
    path = write_dry_run(folder, batch_id, key, recipient, message)
    with engine.begin() as conn:
        conn.execute(
            insert(dry_run).values(send_id=send_id, batch_id=batch_id, run_id=run_id, path=str(path), rendered_at=utcnow())
        )
        logger.add(conn, [send_id], SendAction.DRY_RUN, detail=str(path))
    return path
