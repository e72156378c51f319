"""The byte relay: Claude Code's calls forwarded unbuffered and byte-identical, noted as they pass.

Everything on a call's path lives here and nothing else does: the relay on raw
asyncio protocols, the upstream pool, the :class:`Recorder` the relay notes
into, the write-ahead journal a finished call is sealed into before its last
bytes go out, the busy flag capture waits on, and the heap tuning. It imports
nothing from capture, attribution, storage or shipping (a test checks it).
"""

from .busy import MAX_DEFER, BusyFlag
from .journal import Journal
from .recorder import HeaderList, Recorder
from .relay import Relay
from .upstream import Pool, Target, UpstreamError

__all__ = ["MAX_DEFER", "BusyFlag", "HeaderList", "Journal", "Pool", "Recorder", "Relay", "Target", "UpstreamError"]
