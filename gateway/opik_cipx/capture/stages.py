"""The capture stages: build and analyse a call once, then store it in one transaction.

A *store stage* runs on whichever thread or process writes the spool, inside the
batch's transaction and in a savepoint of its own; an *after stage* runs on the
event loop once the batch has committed (counters, wake-ups). The chain itself is
assembled in one place, :mod:`opik_cipx.capture.pipeline`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from ..attribute import Attribution
from ..attribute.analysis import Captured, analyze
from ..attribute.responses import CallMemory, calls_in_output, context_after, previous_response_id
from ..attribute.resume import WalkCache
from ..model import CallKind, Exchange, classify
from ..pricing import PriceTable
from ..proxy.recorder import Recorder
from ..store import attribution as attribution_store
from ..store.migrations import transaction
from ..store.spool import AsyncSpool, Spool
from .exchange import build_with_summary


def prepare(
    rec: Recorder,
    prices: PriceTable | None,
    commands_for: Callable[[str | None], tuple[str, ...]] | None = None,
    calls: CallMemory | None = None,
    walk_cache: WalkCache | None = None,
) -> Captured:
    """Build the Exchange and, for LLM calls, attribute it once for every stage that needs it.

    ``commands_for`` maps a session id to its custom slash command names; ``calls`` remembers
    what recent Responses turns called, for the next turn's tool outputs; ``walk_cache`` each
    session's last attribution walk, so the next call walks only its new messages.
    """
    # A Messages call's top-level "speed" comes with its attribution walk, for free.
    messages = classify(rec.method, rec.path) is CallKind.MESSAGES
    ex, summary = build_with_summary(rec, prices, body_speed=not messages)
    if not ex.is_llm_call:
        return Captured(ex)
    content = summary.content if summary is not None else []
    if ex.kind is CallKind.RESPONSES:
        previous = previous_response_id(ex.request_body)
        known = calls.before(previous) if calls is not None else {}
        inherited = calls.context(previous) if calls is not None else {}
        attr = analyze(ex, prices, content, calls=known, inherited=inherited)
        if calls is not None and summary is not None:
            calls.remember(summary.message_id, {**known, **calls_in_output(content)},
                           context_after(inherited, attr, content))
        return Captured(ex, attr, content)
    commands = commands_for(ex.session_id) if commands_for is not None else ()
    return Captured(ex, analyze_messages(ex, prices, content, commands, walk_cache), content, commands)


def analyze_messages(
    ex: Exchange,
    prices: PriceTable | None,
    content: list[dict[str, Any]],
    commands: tuple[str, ...],
    walk_cache: WalkCache | None = None,
) -> Attribution:
    """:func:`analyze` for a Messages call built with ``body_speed=False``: a ``speed`` the
    request's top level sets and the usage does not is taken from the walk, and the call is
    priced and shared at that rate (the second walk goes on from the snapshot the first left)."""
    attr = analyze(ex, prices, content, commands, walk_cache=walk_cache)
    if ex.usage is not None and ex.usage.speed is None and attr.speed is not None:
        ex.usage.speed = attr.speed
        if prices is not None:
            ex.cost = prices.price(ex.model, ex.usage, at=ex.started_at)
        attr = analyze(ex, prices, content, commands, walk_cache=walk_cache)
    return attr


# Runs on the spool thread inside the batch's transaction (each in its own savepoint).
StoreStage = Callable[[Spool, Captured], None]
# Runs on the same thread once the batch's transaction has ended: True if it committed.
Committed = Callable[[bool], None]


def store_exchange(sp: Spool, item: Captured) -> None:
    """The first store stage: the Exchange itself. Nothing else is kept if this fails."""
    sp.add(item.exchange)


def store_attribution(sp: Spool, item: Captured) -> None:
    if item.attribution is not None:
        attribution_store.save(sp.conn, item.exchange.id, item.attribution, item.commands)


# Runs on the event loop once a batch is committed, with what it stored: counters, wake-ups.
AfterStage = Callable[[list[Captured]], Awaitable[None]]


Failure = tuple[str, BaseException]


class PoisonBatch(Exception):
    """The store died on this batch itself (its process crashed, twice), rather than reporting
    an error: one of the calls may be what kills it, so the sink splits the batch to find it."""


def store_batch(
    sp: Spool,
    batch: Iterable[Recorder],
    build: Callable[[Recorder], Captured],
    stages: list[StoreStage],
    failures: list[Failure],
    keep: Callable[[Captured], Captured] | None = None,
    committed: Sequence[Committed] = (),
) -> list[Captured]:
    """Build, analyze and store a batch in one transaction; the calls stored, in order.

    Runs wherever the spool is written from: the spool thread, or the capture
    worker process. Each stage runs in its own savepoint, so a failing stage
    undoes only itself; if the first (the Exchange) fails nothing hangs off it. ``keep``: what
    to hold of each stored call until the batch is done (the worker keeps no bodies, so a batch
    of 1 MB calls never has them all in memory at once). ``committed``: told once the batch's
    transaction has ended, and whether it committed.
    """
    try:
        done = _store_all(sp, batch, build, stages, failures, keep)
    except BaseException:
        for end in committed:
            end(False)
        raise
    for end in committed:
        end(True)
    return done


def _store_all(
    sp: Spool,
    batch: Iterable[Recorder],
    build: Callable[[Recorder], Captured],
    stages: list[StoreStage],
    failures: list[Failure],
    keep: Callable[[Captured], Captured] | None,
) -> list[Captured]:
    done: list[Captured] = []
    with transaction(sp.conn):
        for rec in batch:
            try:
                item = build(rec)
            except Exception as exc:  # noqa: BLE001
                failures.append(("build", exc))
                continue
            stored = True
            for i, stage in enumerate(stages):
                try:
                    with transaction(sp.conn):
                        stage(sp, item)
                except Exception as exc:  # noqa: BLE001
                    failures.append((stage_name(stage), exc))
                    if i == 0:
                        stored = False
                        break
            if stored:
                done.append(item if keep is None else keep(item))
    return done



# Stores a batch somewhere off the event loop; returns what was stored and what failed.
StoreBatch = Callable[[list[Recorder]], Awaitable[tuple[list[Captured], list[Failure]]]]


def in_thread(
    spool: AsyncSpool,
    build: Callable[[Recorder], Captured],
    stages: list[StoreStage],
    committed: Sequence[Committed] = (),
) -> StoreBatch:
    """A StoreBatch on the spool's thread, in this process."""

    async def store(batch: list[Recorder]) -> tuple[list[Captured], list[Failure]]:
        failures: list[Failure] = []
        done = await spool.run(lambda sp: store_batch(sp, batch, build, stages, failures, committed=committed))
        return done, failures

    return store


def stage_name(stage: object) -> str:
    return getattr(stage, "__qualname__", None) or repr(stage)
