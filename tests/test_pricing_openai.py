"""OpenAI prices for Codex's models: dated rows with a cached-input rate, overrides, unknown models."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from opik_cipx.price_list import OPENAI
from opik_cipx.pricing import PriceTable
from opik_cipx.wire.responses import usage_from_openai

M = 1_000_000

# (model id, call date, key expected, input, cached input, output) in $/MTok.
FAMILIES = [
    ("gpt-5", "2025-09-01", "gpt-5", 1.25, 0.125, 10),
    ("gpt-5-2025-08-07", "2025-09-01", "gpt-5", 1.25, 0.125, 10),
    ("gpt-5-mini", "2025-09-01", "gpt-5-mini", 0.25, 0.025, 2),
    ("gpt-5-nano", "2025-09-01", "gpt-5-nano", 0.05, 0.005, 0.40),
    ("gpt-5-codex", "2025-10-01", "gpt-5-codex", 1.25, 0.125, 10),
    ("gpt-5.1", "2025-12-01", "gpt-5.1", 1.25, 0.125, 10),
    ("gpt-5.1-codex", "2025-12-01", "gpt-5.1-codex", 1.25, 0.125, 10),
    ("gpt-5.1-codex-mini", "2025-12-01", "gpt-5.1-codex-mini", 0.25, 0.025, 2),
    ("gpt-5.1-codex-max", "2025-12-01", "gpt-5.1-codex-max", 1.25, 0.125, 10),
    ("gpt-5.2", "2026-01-01", "gpt-5.2", 1.75, 0.175, 14),
    ("codex-mini-latest", "2025-06-01", "codex-mini-latest", 1.50, 0.375, 6),
]
USAGE = {"input_tokens": 10_000, "input_tokens_details": {"cached_tokens": 8_000},
         "output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 200}}


def ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("model", "day", "key", "p_in", "p_cached", "p_out"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_each_model_prices_uncached_cached_and_output(model: str, day: str, key: str, p_in: float,
                                                      p_cached: float, p_out: float) -> None:
    cost = PriceTable.builtin().price(model, usage_from_openai(USAGE), at=ts(day))
    assert cost.price_key == key
    # Reasoning tokens are inside output_tokens: billed once, at the output rate.
    assert cost.total_usd == pytest.approx((2_000 * p_in + 8_000 * p_cached + 500 * p_out) / M)
    assert cost.parts["cache_write_5m"] == 0 and cost.parts["cache_write_1h"] == 0


def test_the_table_covers_every_openai_key() -> None:
    assert {f[2] for f in FAMILIES} == set(OPENAI)


def test_versions_are_not_confused() -> None:
    table = PriceTable.builtin()
    assert table.rates("gpt-5.1-codex", at=ts("2025-12-01")).key == "gpt-5.1-codex"  # type: ignore[union-attr]
    assert table.rates("gpt-5.3", at=ts("2026-03-01")) is None  # not gpt-5's price


def test_codex_default_model_is_unknown_until_overridden(tmp_path: Path) -> None:
    usage = usage_from_openai(USAGE)
    cost = PriceTable.builtin().price("gpt-6.2-sol", usage, at=ts("2026-12-07"))
    assert cost.total_usd is None and "gpt-6.2-sol" in (cost.note or "")
    path = tmp_path / "pricing.toml"
    path.write_text('[models."gpt-6.2-sol"]\ninput = 2\ncache_read = 0.2\noutput = 16\n')
    cost = PriceTable.load(path).price("gpt-6.2-sol", usage, at=ts("2026-12-07"))
    assert cost.total_usd == pytest.approx((2_000 * 2 + 8_000 * 0.2 + 500 * 16) / M)
