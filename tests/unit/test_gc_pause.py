"""Tests for include.triggerflow.gc_pause: the collector off inside, as it was after; and the two
stages it wraps (reconcile, send) make no cyclic garbage per email, which is what makes pausing
the collector for a whole batch safe."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from include.triggerflow.gc_pause import collector_paused
from include.triggerflow.render import Renderer
from include.triggerflow.smtp_replies import SmtpOutcome, accepted
from include.triggerflow.stages.reconcile import reconcile_batch
from include.triggerflow.store.schema import send
from tests.fixtures import FROM_EMAIL, envelope_json, send_chunk


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_off_inside_and_on_again_after(collector_on: None) -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("a stage that raises")
    assert gc.isenabled()


def test_a_collector_already_off_stays_off(collector_on: None) -> None:
    @collector_paused()
    def stage() -> bool:
        return gc.isenabled()

    gc.disable()
    assert stage() is False and not gc.isenabled()
    gc.enable()
    assert stage() is False and gc.isenabled()


class _Accepting:
    sender = FROM_EMAIL
    from_name = None
    message_id_domain = "triggerflow.local"

    def send_prepared(self, recipient: str, message: bytes) -> SmtpOutcome:
        return accepted()

    @contextmanager
    def open(self) -> Iterator[_Accepting]:
        yield self


def _batch(kit, batch_id: str, first: int, count: int) -> None:
    kit.add_profiles(*[{"customer_id": f"C{i}", "email": f"c{i}@example.com", "first_name": f"N{i}",
                        "shopper_id": f"SHOP-{i}"} for i in range(first, first + count)])
    kit.add_batch(batch_id)
    for i in range(first, first + count):
        kit.add_event(batch_id, envelope_json(shopper_id=f"SHOP-{i}", products=["TRL-RUN-42", "MRN-WOOL-SCK"]))


def _cyclic_garbage_of(kit, routing, renderer: Renderer, batch_id: str, first: int, count: int) -> int:
    """The objects ``gc.collect()`` finds after reconciling and sending a batch of ``count`` emails."""
    _batch(kit, batch_id, first, count)
    gc.collect()
    gc.disable()
    try:
        reconcile_batch(kit.engine, batch_id, routing)
        result = send_chunk(kit.engine, batch_id, 0, routing, renderer, _Accepting().open)
        assert result.counts["sent"] == count
        return gc.collect()
    finally:
        gc.enable()


def test_reconcile_and_send_make_no_cyclic_garbage_per_email(kit, demo_catalog, routing, collector_on: None) -> None:
    renderer = Renderer()
    _cyclic_garbage_of(kit, routing, renderer, "warm", 0, 20)  # first use: compiled templates, pools, caches
    small = _cyclic_garbage_of(kit, routing, renderer, "b1", 100, 50)
    large = _cyclic_garbage_of(kit, routing, renderer, "b2", 1000, 300)
    assert len(kit.rows(send, send.c.state == "sent")) == 370
    # SQLAlchemy leaves ~200 objects of the statements it builds per stage call, whatever the
    # batch; one cycle per email or per event would add 250 or more for the 250 more emails
    assert large - small < 50, (small, large)
