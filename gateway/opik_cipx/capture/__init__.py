"""From a finished call to stored data: build the Exchange, analyse it once, run the stages.

:mod:`.pipeline` assembles the chain (the one place to add a stage);
:mod:`.sink` is the error boundary the relay hands finished calls to;
:mod:`.worker` runs the chain in a child process so capture CPU never competes
with the relay for the GIL.
"""

from ..attribute.analysis import Captured
from .exchange import build_exchange
from .pipeline import Chain, after_stages, capture_chain
from .sink import CaptureSink, CaptureStats
from .stages import AfterStage, StoreStage, prepare, store_batch
from .worker import WorkerProcess

__all__ = [
    "AfterStage",
    "CaptureSink",
    "CaptureStats",
    "Captured",
    "Chain",
    "StoreStage",
    "WorkerProcess",
    "after_stages",
    "build_exchange",
    "capture_chain",
    "prepare",
    "store_batch",
]
