"""From stored calls to Opik: projection, outbox, sender.

* :mod:`.span` and :mod:`.records` -- pure projection of a call into trace and span dicts;
* :mod:`.stage` -- the capture stage deciding what ships (destination, enablement,
  sampling, privacy) and queueing records;
* :mod:`.outbox` -- persistence only: the write-ahead queue in the spool;
* :mod:`.shipper` -- the sender, with :mod:`.opik_client` speaking Opik's REST API.
"""

from .outbox import Outbox
from .records import project_call, record_call
from .shipper import Shipper
from .span import CallFacts, SessionContext, TraceState, call_facts
from .stage import SpanStage

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
