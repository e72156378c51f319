"""From stored calls to Opik: projection, outbox, sender.

* :mod:`.span` and :mod:`.records` -- pure projection of a call into trace and span dicts;
* :mod:`.stage` -- the capture stage deciding what ships (destination, enablement,
  sampling, privacy) and queueing records;
* :mod:`.outbox` -- persistence only: the write-ahead queue in the spool;
* :mod:`.shipper` -- the sender, with :mod:`.opik_client` speaking Opik's REST API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .outbox import Outbox
    from .records import project_call, record_call
    from .shipper import Shipper
    from .span import CallFacts, SessionContext, TraceState, call_facts
    from .stage import SpanStage

# Each name is imported from its module when first asked for, not with the package: the
# capture worker imports ship.stage and ship.enablement, and importing the sender with them
# would load aiohttp into it (~11 MiB of a process that never sends a request).
_HOME = {
    "Outbox": "outbox",
    "project_call": "records",
    "record_call": "records",
    "Shipper": "shipper",
    "CallFacts": "span",
    "SessionContext": "span",
    "TraceState": "span",
    "call_facts": "span",
    "SpanStage": "stage",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


__all__ = [
    "CallFacts",
    "Outbox",
    "SessionContext",
    "Shipper",
    "SpanStage",
    "TraceState",
    "call_facts",
    "project_call",
    "record_call",
]
