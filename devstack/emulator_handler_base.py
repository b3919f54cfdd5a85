"""The base the emulator's endpoint mixins (emulator_pipeline.PipelineEndpoints,
emulator_control.ControlPlane) are type-checked against: the plumbing devstack.adobe_emulator's
EmulatorHandler brings them (BaseHTTPRequestHandler, the emulator's state and settings, sending,
faults, tokens).

Only the type checker sees it: at run time ``HandlerBase`` is ``object``, so the mixins' classes
and EmulatorHandler's method resolution order are what they were without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from devstack.emulator_state import EmulatorSettings, EmulatorState, StreamFaults

    class HandlerBase(BaseHTTPRequestHandler):
        """What EmulatorHandler defines and the mixins call (see devstack/adobe_emulator.py)."""

        _body: bytes

        @property
        def settings(self) -> EmulatorSettings: ...

        @property
        def state(self) -> EmulatorState: ...

        @property
        def base_url(self) -> str: ...

        def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None: ...

        @staticmethod
        def _require_method(method: str, *allowed: str) -> None: ...

        def _require_token(self, *, pipeline_style: bool = False) -> None: ...

        def _request_faults(self, endpoint: str, *, pipeline_style: bool = False) -> None: ...

        def _stream_faults(self) -> StreamFaults: ...

        def _sleep(self, seconds: float) -> None: ...

else:
    HandlerBase = object
