"""The one place the capture chain is assembled, for the gateway and the capture worker alike.

Reading :func:`capture_chain` top to bottom gives the order every finished call
meets: built into an Exchange and analysed once (:func:`~.stages.prepare`), then
the store stages in one transaction -- the Exchange, its attribution, whatever a
caller adds, and the span stage that queues the call's Opik records. A new stage
goes here and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..attribute.analysis import Captured
from ..attribute.responses import CallMemory
from ..attribute.resume import WalkCache
from ..model import Exchange
from ..pricing import PriceTable
from ..proxy.recorder import Recorder
from ..settings_view import CaptureSettings
from ..ship.enablement import SessionLookup
from ..ship.stage import SpanStage
from .commands import CommandIndex
from .session_summary import summary_stage
from .stages import AfterStage, Committed, StoreStage, prepare, store_attribution, store_exchange

if TYPE_CHECKING:
    from ..ship.shipper import Shipper  # the gateway's sender: never imported into the worker


@dataclass(slots=True)
class Chain:
    build: Callable[[Recorder], Captured]  # Recorder -> Exchange + analysis
    stages: list[StoreStage]  # in order, inside the batch's transaction
    committed: list[Committed]  # once the batch's transaction has ended (store_batch's ``committed``)
    spans: SpanStage  # the last store stage, for status and crash recovery


def capture_chain(
    settings: CaptureSettings,
    prices: Callable[[], PriceTable | None],
    sessions: Callable[[], SessionLookup | None],
    *,
    extra_stages: Sequence[StoreStage] = (),
    before_build: Callable[[Recorder], None] | None = None,
    home: Path | None = None,
) -> Chain:
    """The chain for one process. ``prices`` and ``sessions`` are read at each call: overrides
    may be reloaded and sessions registered while the gateway runs. ``before_build`` runs
    first for each call (the worker waits there for a lull in forwarding)."""
    index = CommandIndex(home or Path(os.path.expanduser("~")))

    def commands_for(session_id: str | None) -> tuple[str, ...]:
        table = sessions()
        info = table.get(session_id) if table is not None and session_id else None
        return index.names(info.cwd if info is not None else None)

    calls = CallMemory()  # one per process: the calls each Codex turn made, for the next turn
    walks = WalkCache()  # one per process: each session's last walk, resumed by its next call

    def build(rec: Recorder) -> Captured:
        if before_build is not None:
            before_build(rec)
        return prepare(rec, prices(), commands_for, calls, walks)

    spans = SpanStage(settings, sessions=sessions)
    summary, summary_files = summary_stage(settings.home)
    stages = [store_exchange, store_attribution, summary, *extra_stages, spans.record]
    return Chain(build, stages, [summary_files], spans)


def after_stages(observe: Callable[[Exchange], Awaitable[None]], shipper: Shipper) -> list[AfterStage]:
    """The stages run on the event loop once a batch has committed: counters, then the sender."""

    async def observe_all(items: list[Captured]) -> None:
        for item in items:
            await observe(item.exchange)

    return [observe_all, shipper.after]
