"""The Adobe emulator's control plane (``/_emulator/*``): reset, faults, stats, generated and raw
journal entries, expiry. A mixin of devstack.adobe_emulator.EmulatorHandler.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from devstack.emulator_handler_base import HandlerBase

# The model (positions, entries, faults, state): devstack/emulator_state.py
from devstack.emulator_state import (
    MAX_GENERATE,
    RAW_AS,
    ApiError,
    GeneratedRun,
    RawEntry,
    format_position,
    parse_fault_rules,
    partition_for,
)
from devstack.loadgen import Mix, factory_for
from devstack.messages import now_ms


class ControlPlane(HandlerBase):
    """Control endpoints of the emulator's request handler (a mixin: see EmulatorHandler)."""

    # -- control plane -----------------------------------------------------------------------------
    def _json_body(self) -> Any:
        try:
            return json.loads(self._body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc

    def _handle_control(self, method: str, path: str) -> None:
        action = path[len("/_emulator/"):]
        routes: dict[str, tuple[str, ...]] = {
            "journal": ("POST",),
            "stats": ("GET",),
            "reset": ("POST",),
            "health": ("GET",),
            "expire-tokens": ("POST",),
            "pipeline/expire": ("POST",),
            "faults": ("GET", "POST", "DELETE"),
            "generate": ("GET", "POST"),
            "raw": ("POST",),
        }
        if action not in routes:
            raise ApiError(404, "not_found", f"no such control endpoint: {path}")
        self._require_method(method, *routes[action])
        state = self.state
        if action == "health":
            self._send_json(200, {"ok": True})
        elif action == "stats":
            with state.lock:
                stats = dict(state.stats)
            self._send_json(200, stats)
        elif action == "reset":
            with state.lock:
                state.clear()
                state.changed.notify_all()
            self._send_json(200, {"ok": True})
        elif action == "expire-tokens":
            with state.lock:
                expired = len(state.tokens)
                # Keep the tokens so requests using them get "expired", not "unknown".
                state.tokens = {token: 0.0 for token in state.tokens}
            self._send_json(200, {"expired": expired})
        elif action == "pipeline/expire":
            self._expire(self._json_body())
        elif action == "raw":
            self._publish_raw(self._json_body())
        elif action == "generate":
            if method == "POST":
                self._generate(self._json_body())
            else:
                with state.lock:
                    info = {
                        "generated": state.generated,
                        "next_start": {str(seed): nxt for seed, nxt in sorted(state.generated_next.items())},
                    }
                self._send_json(200, info)
        elif action == "faults":
            if method == "POST":
                rules = parse_fault_rules(self._json_body())
                with state.lock:
                    state.add_faults(rules)
                    queued = len(state.faults)
                self._send_json(200, {"added": len(rules), "queued": queued})
            elif method == "DELETE":
                with state.lock:
                    cleared = len(state.faults)
                    state.faults = []
                self._send_json(200, {"cleared": cleared})
            else:
                with state.lock:
                    listing = [rule.as_json() for rule in state.faults]
                self._send_json(200, listing)
        else:  # journal
            payload = self._json_body()
            if not isinstance(payload, dict) or "events" not in payload:
                raise ApiError(400, "bad_request", 'body must be {"events": <value or list of values>}')
            raw = payload["events"]
            items = raw if isinstance(raw, list) else [raw]
            with state.lock:
                positions = [state.append(item).position for item in items]
            self._send_json(200, {"accepted": len(positions), "positions": positions})

    def _generate(self, payload: Any) -> None:
        """``POST /_emulator/generate`` (see the module docstring)."""
        usage = (
            'body must be {"count": n, "seed": s, "customers": N, "customer_offset": o, "mix": {...}, '
            '"start": i0, "trigger_ts_ms": t, "topic": "triggers"} (all but count optional)'
        )
        if not isinstance(payload, dict):
            raise ApiError(400, "bad_request", usage)
        unknown = sorted(
            set(payload) - {"count", "seed", "customers", "customer_offset", "mix", "start", "trigger_ts_ms", "topic"}
        )
        if unknown:
            raise ApiError(400, "bad_request", f"unknown fields {unknown}; {usage}")

        def integer(name: str, default: Any, low: int, high: int | None = None) -> Any:
            value = payload.get(name, default)
            if value is None and default is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
                raise ApiError(400, "bad_request", f"{name} must be an integer {bounds}, got {value!r}")
            return value

        count = integer("count", 0, 1, MAX_GENERATE)
        seed = integer("seed", 7, -(2**63), 2**63 - 1)
        customers = integer("customers", 1_000_000, 1)
        customer_offset = integer("customer_offset", 0, 0)
        start = integer("start", None, 0, 2**62)
        trigger_ts = integer("trigger_ts_ms", None, 0)
        topic = payload.get("topic", "triggers")
        if not isinstance(topic, str) or not topic or "/" in topic:
            raise ApiError(400, "bad_request", f"topic must be a topic name, got {topic!r}")
        try:
            mix = Mix.from_json(payload.get("mix"))
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "bad_request", f"mix: {exc}") from exc
        factory = factory_for(seed, customers, mix, customer_offset)
        with self.state.lock:
            if start is None:
                start = self.state.generated_next.get(seed, 0)
            salt = self.state.event_salt
        created = now_ms()
        run = GeneratedRun(factory, created if trigger_ts is None else trigger_ts, created, topic, salt)
        # The expensive part (message ids, partitions) outside the lock.
        partitions_n = self.state.partitions
        partitions = [partition_for(factory.message_id(i), partitions_n) for i in range(start, start + count)]
        with self.state.lock:
            first, last = self.state.append_generated(run, start, partitions)
            nxt = max(self.state.generated_next.get(seed, 0), start + count)
            self.state.generated_next[seed] = nxt
            self.state.version += 1
            self.state.changed.notify_all()
            journal_size = len(self.state.journal)
        self._send_json(
            200,
            {
                "accepted": count,
                "start": start,
                "next_start": nxt,
                "first_position": format_position(first),
                "last_position": format_position(last),
                "trigger_ts_ms": run.trigger_ts_ms,
                "create_time_ms": created,
                "journal_size": journal_size,
            },
        )

    def _publish_raw(self, payload: Any) -> None:
        """``POST /_emulator/raw`` (see the module docstring): bytes to the journal and a topic."""
        usage = (
            'body must be {"items": [{"b64": "<base64 bytes>", "as": "envelope"|"pipeline_message", '
            '"partition": p}], "topic": "triggers"}'
        )
        if not isinstance(payload, dict) or not isinstance(payload.get("items"), list) or not payload["items"]:
            raise ApiError(400, "bad_request", usage)
        topic = payload.get("topic", "triggers")
        if not isinstance(topic, str) or not topic or "/" in topic:
            raise ApiError(400, "bad_request", f"topic must be a topic name, got {topic!r}")
        parsed: list[tuple[bytes, bool, int]] = []
        for index, item in enumerate(payload["items"]):
            if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
                raise ApiError(400, "bad_request", f"item #{index}: {usage}")
            try:
                data = base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ApiError(400, "bad_request", f"item #{index}: b64 is not base64") from exc
            mode = item.get("as", "envelope")
            if mode not in RAW_AS:
                raise ApiError(400, "bad_request", f"item #{index}: as must be one of {RAW_AS}")
            partition = item.get("partition", 0)
            if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < self.state.partitions:
                raise ApiError(400, "bad_request", f"item #{index}: partition must be in 0..{self.state.partitions - 1}")
            parsed.append((data, mode == "pipeline_message", partition))
        accepted = []
        with self.state.lock:
            logs = self.state.topic(topic, create=True)
            assert logs is not None
            for data, wrap, partition in parsed:
                self.state.last_seq += 1
                log = logs[partition]
                entry = RawEntry(self.state.last_seq, partition, log.next_offset, data, wrap=wrap, topic=topic)
                log.append(entry)
                self.state.journal.append(entry)
                self.state.stats["published"] += 1
                accepted.append({"partition": partition, "offset": entry.offset, "position": entry.position})
            self.state.stats["journal_size"] = len(self.state.journal)
            self.state.version += 1
            self.state.changed.notify_all()
        self._send_json(200, {"accepted": len(accepted), "positions": accepted})

    def _expire(self, payload: Any) -> None:
        """Drop retained pipeline messages, as retention would: ``{"partition", "before_offset"}``
        or ``{"all_before_ms"}`` (createTime), optionally ``"topic"`` (default triggers)."""
        usage = 'body must be {"partition": p, "before_offset": o} or {"all_before_ms": t}'
        if not isinstance(payload, dict):
            raise ApiError(400, "bad_request", usage)
        topic = payload.get("topic", "triggers")

        def whole(name: str) -> int:
            value = payload.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ApiError(400, "bad_request", f"{usage}; {name} must be an integer >= 0")
            return value

        with self.state.lock:
            logs = self.state.topics.get(topic) if isinstance(topic, str) else None
            if logs is None:
                raise ApiError(404, "not_found", f"no topic {topic!r}")
            if "all_before_ms" in payload:
                cutoff = whole("all_before_ms")
                dropped = sum(log.expire_created_before(cutoff) for log in logs)
            elif "partition" in payload and "before_offset" in payload:
                partition = whole("partition")
                if partition >= len(logs):
                    raise ApiError(400, "bad_request", f"partition {partition} is not in 0..{len(logs) - 1}")
                dropped = logs[partition].expire_before(whole("before_offset"))
            else:
                raise ApiError(400, "bad_request", usage)
            earliest = {str(p): log.earliest for p, log in enumerate(logs)}
            self.state.version += 1
            self.state.changed.notify_all()
        self._send_json(200, {"expired": dropped, "earliest": earliest})
