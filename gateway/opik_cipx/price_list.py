"""The built-in dated price list (:data:`BUILTIN`) and the price rows it is made of.

Data kept apart from the matching and costing in :mod:`opik_cipx.pricing`, which
re-exports every name here. Prices are USD per million tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

# Prompt-caching multipliers of the input price, used wherever a row does not
# state a cache price of its own.
CACHE_WRITE_5M_FACTOR = 1.25
CACHE_WRITE_1H_FACTOR = 2.0
CACHE_READ_FACTOR = 0.1


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """USD per million tokens for one price tier."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float

    @classmethod
    def from_input(
        cls,
        input: float,
        output: float,
        *,
        cache_write_5m: float | None = None,
        cache_write_1h: float | None = None,
        cache_read: float | None = None,
    ) -> TokenPrices:
        """Fill unstated cache prices from the standard multipliers of ``input``."""
        return cls(
            input=input,
            cache_write_5m=input * CACHE_WRITE_5M_FACTOR if cache_write_5m is None else cache_write_5m,
            cache_write_1h=input * CACHE_WRITE_1H_FACTOR if cache_write_1h is None else cache_write_1h,
            cache_read=input * CACHE_READ_FACTOR if cache_read is None else cache_read,
            output=output,
        )


@dataclass(frozen=True, slots=True)
class PriceRow:
    """Prices of one model family from ``effective`` (UTC date) on."""

    effective: date
    standard: TokenPrices
    # When the billed prompt exceeds tier_above tokens, `tier` prices the whole request.
    tier_above: int | None = None
    tier: TokenPrices | None = None
    # None on override rows that did not say: decided by the built-in table.
    fast_mode: bool | None = False
    source: str | None = None  # override file path; None for built-in rows

    def prices_for(self, prompt_tokens: int) -> tuple[TokenPrices, bool]:
        if self.tier is not None and self.tier_above is not None and prompt_tokens > self.tier_above:
            return self.tier, True
        return self.standard, False


def _d(iso: str) -> date:
    return date.fromisoformat(iso)


def _row(
    effective: str,
    input: float,
    output: float,
    *,
    cache_read: float | None = None,
    cache_write_5m: float | None = None,
    long_context: tuple[int, float, float] | None = None,
    fast_mode: bool = False,
) -> PriceRow:
    tier_above: int | None = None
    tier: TokenPrices | None = None
    if long_context is not None:
        tier_above, tier_in, tier_out = long_context
        tier = TokenPrices.from_input(tier_in, tier_out)
    return PriceRow(
        effective=_d(effective),
        standard=TokenPrices.from_input(
            input, output, cache_read=cache_read, cache_write_5m=cache_write_5m
        ),
        tier_above=tier_above,
        tier=tier,
        fast_mode=fast_mode,
    )


# Long-context surcharge of the 200K-window models with a 1M beta: above 200K
# billed prompt tokens the whole request costs 2x input and 1.5x output.
_SONNET_LONG = (200_000, 6.0, 22.5)
_OPUS_4_6_LONG = (200_000, 10.0, 37.5)
# The 1M window became standard, without surcharge, for Opus/Sonnet 4.6 on this date.
_LONG_CONTEXT_GA = "2026-03-13"

# First row of each family: its launch date (a model has no price before it
# exists). Source: /work/shared/reference/pricing.md; launch dates from the
# model pages of Anthropic's docs (snapshot-dated ids carry their own).
BUILTIN: dict[str, tuple[PriceRow, ...]] = {
    "claude-fable-5-1": (_row("2026-09-01", 10, 50, cache_read=0.25),),
    "claude-fable-5": (_row("2026-06-09", 10, 50, cache_read=1.00),),
    "claude-mythos-5": (_row("2026-06-09", 10, 50, cache_read=1.00),),
    "claude-opus-5-5": (_row("2026-09-22", 4, 20, cache_read=0.20, fast_mode=True),),
    "claude-opus-5": (_row("2026-07-24", 5, 25, fast_mode=True),),
    "claude-opus-4-8": (_row("2026-05-28", 5, 25, fast_mode=True),),
    "claude-opus-4-7": (_row("2026-04-16", 5, 25, fast_mode=True),),
    "claude-opus-4-6": (
        _row("2026-02-05", 5, 25, long_context=_OPUS_4_6_LONG, fast_mode=True),
        _row(_LONG_CONTEXT_GA, 5, 25, fast_mode=True),
    ),
    "claude-opus-4-5": (_row("2025-11-24", 5, 25),),
    "claude-opus-4-1": (_row("2025-08-05", 15, 75),),
    "claude-opus-4": (_row("2025-05-22", 15, 75),),
    "claude-3-opus": (_row("2024-03-04", 15, 75),),
    "claude-sonnet-5-5": (
        _row("2026-09-29", 2, 10, cache_read=0.20),
        _row("2026-10-07", 2, 10, cache_read=0.10),
    ),
    "claude-sonnet-5": (_row("2026-06-30", 2, 10),),
    "claude-sonnet-4-6": (
        _row("2026-02-17", 3, 15, long_context=_SONNET_LONG),
        _row(_LONG_CONTEXT_GA, 3, 15),
    ),
    "claude-sonnet-4-5": (_row("2025-09-29", 3, 15, long_context=_SONNET_LONG),),
    "claude-sonnet-4": (_row("2025-05-22", 3, 15, long_context=_SONNET_LONG),),
    "claude-3-7-sonnet": (_row("2025-02-24", 3, 15),),
    # Haiku 5.5 is priced in two bands by the whole request's billed prompt.
    "claude-haiku-5-5": (_row("2026-10-07", 0.10, 0.50, long_context=(100_000, 0.50, 2.50)),),
    "claude-haiku-4-5": (_row("2025-10-15", 1, 5),),
    "claude-3-5-haiku": (_row("2024-11-04", 0.80, 4),),
    # Haiku 3's cache prices are rounded on the price list, not the multipliers.
    "claude-3-haiku": (_row("2024-03-13", 0.25, 1.25, cache_read=0.03, cache_write_5m=0.30),),
}

# OpenAI models Codex CLI uses (USD per million tokens; cached input has its own rate and there
# is no cache-write charge). Source: OpenAI's public API pricing page (platform.openai.com/docs/
# pricing) as of December 2025, first row at each model's launch date. Models newer than that
# (codex-cli 0.171's default, gpt-6.2-sol, among them) are unknown until a pricing.toml row
# names them: priced as unknown, never $0.
OPENAI: dict[str, tuple[PriceRow, ...]] = {
    "gpt-5": (_row("2025-08-07", 1.25, 10, cache_read=0.125),),
    "gpt-5-mini": (_row("2025-08-07", 0.25, 2, cache_read=0.025),),
    "gpt-5-nano": (_row("2025-08-07", 0.05, 0.40, cache_read=0.005),),
    "gpt-5-codex": (_row("2025-09-15", 1.25, 10, cache_read=0.125),),
    "gpt-5.1": (_row("2025-11-13", 1.25, 10, cache_read=0.125),),
    "gpt-5.1-codex": (_row("2025-11-13", 1.25, 10, cache_read=0.125),),
    "gpt-5.1-codex-mini": (_row("2025-11-13", 0.25, 2, cache_read=0.025),),
    "gpt-5.1-codex-max": (_row("2025-11-19", 1.25, 10, cache_read=0.125),),
    "gpt-5.2": (_row("2025-12-11", 1.75, 14, cache_read=0.175),),
    "codex-mini-latest": (_row("2025-05-16", 1.50, 6, cache_read=0.375),),
}
BUILTIN.update(OPENAI)

