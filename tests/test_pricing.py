"""Pricing: every family priced from pricing.md by hand, tiers, dates, multipliers, overrides.

Expected dollars are written out from /work/shared/reference/pricing.md (USD per
million tokens), never read back from the code's own table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from opik_cipx.model import Usage
from opik_cipx.price_list import OPENAI
from opik_cipx.pricing import BUILTIN, PriceTable, PricingFileError, normalize_model_id

M = 1_000_000


def ts(iso: str) -> float:
    """Epoch seconds of a UTC ISO date or date-time."""
    moment = datetime.fromisoformat(iso)
    return moment.replace(tzinfo=UTC).timestamp() if moment.tzinfo is None else moment.timestamp()


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.builtin()


def usage(
    input: int = 0,
    output: int = 0,
    *,
    write_5m: int | None = None,
    write_1h: int | None = None,
    cache_write: int | None = None,
    read: int = 0,
    web_search: int = 0,
    speed: str | None = None,
    geo: str | None = None,
) -> Usage:
    """Usage with the TTL split when given; cache_write alone means no split was sent."""
    total = cache_write if cache_write is not None else (write_5m or 0) + (write_1h or 0)
    return Usage(
        input_tokens=input,
        output_tokens=output,
        cache_creation_input_tokens=total,
        cache_read_input_tokens=read,
        cache_creation_5m=write_5m,
        cache_creation_1h=write_1h,
        web_search_requests=web_search,
        speed=speed,
        inference_geo=geo,
    )


# One call shape priced on every family: 1,000 input, 2,000 5m writes, 3,000 1h
# writes, 10,000 cache reads, 500 output (16,000 prompt tokens: below every tier).
CALL = dict(input=1_000, write_5m=2_000, write_1h=3_000, read=10_000, output=500)

# (model id as the API names it, call date, key expected,
#  input, 5m write, 1h write, cache read, output) in $/MTok from pricing.md.
FAMILIES = [
    ("claude-fable-5-1", "2026-10-01", "claude-fable-5-1", 10, 12.50, 20, 0.25, 50),
    ("claude-fable-5", "2026-07-01", "claude-fable-5", 10, 12.50, 20, 1.00, 50),
    ("claude-mythos-5", "2026-07-01", "claude-mythos-5", 10, 12.50, 20, 1.00, 50),
    ("claude-opus-5-5", "2026-10-01", "claude-opus-5-5", 4, 5, 8, 0.20, 20),
    ("claude-opus-5", "2026-08-01", "claude-opus-5", 5, 6.25, 10, 0.50, 25),
    ("claude-opus-4-8", "2026-06-01", "claude-opus-4-8", 5, 6.25, 10, 0.50, 25),
    ("claude-opus-4-7", "2026-05-01", "claude-opus-4-7", 5, 6.25, 10, 0.50, 25),
    ("claude-opus-4-6", "2026-04-01", "claude-opus-4-6", 5, 6.25, 10, 0.50, 25),
    ("claude-opus-4-5-20251101", "2026-01-10", "claude-opus-4-5", 5, 6.25, 10, 0.50, 25),
    ("claude-opus-4-1-20250805", "2025-09-01", "claude-opus-4-1", 15, 18.75, 30, 1.50, 75),
    ("claude-opus-4-20250514", "2025-06-01", "claude-opus-4", 15, 18.75, 30, 1.50, 75),
    ("claude-3-opus-20240229", "2024-06-01", "claude-3-opus", 15, 18.75, 30, 1.50, 75),
    ("claude-sonnet-5-5", "2026-10-01", "claude-sonnet-5-5", 2, 2.50, 4, 0.20, 10),
    ("claude-sonnet-5", "2026-07-15", "claude-sonnet-5", 2, 2.50, 4, 0.20, 10),
    ("claude-sonnet-4-6", "2026-04-01", "claude-sonnet-4-6", 3, 3.75, 6, 0.30, 15),
    ("claude-sonnet-4-5-20250929", "2025-10-01", "claude-sonnet-4-5", 3, 3.75, 6, 0.30, 15),
    ("claude-sonnet-4-20250514", "2025-06-01", "claude-sonnet-4", 3, 3.75, 6, 0.30, 15),
    ("claude-3-7-sonnet-20250219", "2025-03-01", "claude-3-7-sonnet", 3, 3.75, 6, 0.30, 15),
    ("claude-haiku-5-5", "2026-10-10", "claude-haiku-5-5", 0.10, 0.125, 0.20, 0.01, 0.50),
    ("claude-haiku-4-5-20251001", "2025-11-01", "claude-haiku-4-5", 1, 1.25, 2, 0.10, 5),
    ("claude-3-5-haiku-20241022", "2025-01-01", "claude-3-5-haiku", 0.80, 1.00, 1.60, 0.08, 4),
    ("claude-3-haiku-20240307", "2024-06-01", "claude-3-haiku", 0.25, 0.30, 0.50, 0.03, 1.25),
]


@pytest.mark.parametrize(
    ("model", "day", "key", "p_in", "p_5m", "p_1h", "p_read", "p_out"),
    FAMILIES,
    ids=[row[0] for row in FAMILIES],
)
def test_each_family_prices_every_token_kind_at_its_list_price(
    table: PriceTable,
    model: str,
    day: str,
    key: str,
    p_in: float,
    p_5m: float,
    p_1h: float,
    p_read: float,
    p_out: float,
) -> None:
    cost = table.price(model, usage(**CALL), at=ts(day))
    expected_parts = {
        "input": 1_000 * p_in / M,
        "cache_write_5m": 2_000 * p_5m / M,
        "cache_write_1h": 3_000 * p_1h / M,
        "cache_read": 10_000 * p_read / M,
        "output": 500 * p_out / M,
        "web_search": 0.0,
    }
    assert cost.price_key == key
    assert cost.parts == pytest.approx(expected_parts, rel=1e-9, abs=1e-15)
    assert cost.total_usd == pytest.approx(sum(expected_parts.values()), rel=1e-9)
    assert cost.multiplier == 1.0
    assert cost.long_context is False
    assert cost.note is None


def test_family_table_covers_every_builtin_key() -> None:
    # OpenAI's rows have their own table and test (tests/test_pricing_openai.py).
    assert {row[2] for row in FAMILIES} == set(BUILTIN) - set(OPENAI)


def test_rates_are_per_single_token_and_report_the_row_used(table: PriceTable) -> None:
    rates = table.rates("claude-haiku-4-5", at=ts("2026-01-01"))
    assert rates is not None
    assert rates.input == pytest.approx(1 / M)
    assert rates.cache_write_5m == pytest.approx(1.25 / M)
    assert rates.cache_write_1h == pytest.approx(2 / M)
    assert rates.cache_read == pytest.approx(0.10 / M)
    assert rates.output == pytest.approx(5 / M)
    assert rates.web_search_per_request == pytest.approx(0.01)
    assert rates.key == "claude-haiku-4-5"
    assert rates.effective_date == "2025-10-15"
    assert rates.multiplier == 1.0
    assert rates.long_context is False


# --- cache TTL split -------------------------------------------------------------


def test_cache_writes_without_ttl_split_are_all_priced_at_the_5m_rate(table: PriceTable) -> None:
    cost = table.price("claude-haiku-4-5", usage(cache_write=4_000), at=ts("2026-01-01"))
    assert cost.parts["cache_write_5m"] == pytest.approx(4_000 * 1.25 / M)
    assert cost.parts["cache_write_1h"] == 0.0
    assert cost.total_usd == pytest.approx(0.005)


def test_cache_writes_with_only_the_1h_count_put_the_rest_at_5m(table: PriceTable) -> None:
    u = Usage(cache_creation_input_tokens=4_000, cache_creation_1h=1_000)
    cost = table.price("claude-haiku-4-5", u, at=ts("2026-01-01"))
    assert cost.parts["cache_write_1h"] == pytest.approx(1_000 * 2 / M)
    assert cost.parts["cache_write_5m"] == pytest.approx(3_000 * 1.25 / M)


def test_cache_writes_all_1h_cost_more_than_the_same_tokens_at_5m(table: PriceTable) -> None:
    at = ts("2026-04-01")
    one_hour = table.price("claude-opus-4-6", usage(write_5m=0, write_1h=10_000), at=at)
    five_min = table.price("claude-opus-4-6", usage(write_5m=10_000, write_1h=0), at=at)
    assert one_hour.total_usd == pytest.approx(10_000 * 10 / M)
    assert five_min.total_usd == pytest.approx(10_000 * 6.25 / M)


# --- long context ----------------------------------------------------------------

# 200,001 billed prompt tokens: 100,001 input + 30,000 5m + 20,000 1h + 50,000 read.
OVER_200K = dict(input=100_001, write_5m=30_000, write_1h=20_000, read=50_000, output=1_000)
AT_200K = dict(input=100_000, write_5m=30_000, write_1h=20_000, read=50_000, output=1_000)


def _sonnet_long_total() -> float:
    # $6 input, cache multipliers on $6 (7.50 / 12 / 0.60), $22.50 output.
    return (100_001 * 6 + 30_000 * 7.50 + 20_000 * 12 + 50_000 * 0.60 + 1_000 * 22.50) / M


def _sonnet_standard_total() -> float:
    return (100_000 * 3 + 30_000 * 3.75 + 20_000 * 6 + 50_000 * 0.30 + 1_000 * 15) / M


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-sonnet-4-20250514"])
def test_sonnet_4_and_4_5_bill_the_whole_request_at_long_context_rates_above_200k(
    table: PriceTable, model: str
) -> None:
    cost = table.price(model, usage(**OVER_200K), at=ts("2026-12-01"))
    assert cost.long_context is True
    assert cost.total_usd == pytest.approx(_sonnet_long_total())


def test_sonnet_4_5_at_exactly_200k_prompt_tokens_is_standard(table: PriceTable) -> None:
    cost = table.price("claude-sonnet-4-5", usage(**AT_200K), at=ts("2026-12-01"))
    assert cost.long_context is False
    assert cost.total_usd == pytest.approx(_sonnet_standard_total())


def test_sonnet_4_6_long_context_surcharge_ends_on_2026_03_13(table: PriceTable) -> None:
    before = table.price("claude-sonnet-4-6", usage(**OVER_200K), at=ts("2026-03-12T23:59:59"))
    after = table.price("claude-sonnet-4-6", usage(**OVER_200K), at=ts("2026-03-13T00:00:00"))
    assert before.long_context is True
    assert before.total_usd == pytest.approx(_sonnet_long_total())
    assert before.effective_date == "2026-02-17"
    assert after.long_context is False
    assert after.effective_date == "2026-03-13"
    assert after.total_usd == pytest.approx(
        (100_001 * 3 + 30_000 * 3.75 + 20_000 * 6 + 50_000 * 0.30 + 1_000 * 15) / M
    )


def test_opus_4_6_long_context_before_2026_03_13_is_2x_input_and_1_5x_output(table: PriceTable) -> None:
    # Anthropic's beta rule (2x input, 1.5x output) on Opus 4.6's $5/$25: $10 / $37.50.
    before = table.price("claude-opus-4-6", usage(**OVER_200K), at=ts("2026-02-20"))
    after = table.price("claude-opus-4-6", usage(**OVER_200K), at=ts("2026-03-20"))
    assert before.long_context is True
    assert before.total_usd == pytest.approx(
        (100_001 * 10 + 30_000 * 12.50 + 20_000 * 20 + 50_000 * 1.00 + 1_000 * 37.50) / M
    )
    assert after.long_context is False
    assert after.total_usd == pytest.approx(
        (100_001 * 5 + 30_000 * 6.25 + 20_000 * 10 + 50_000 * 0.50 + 1_000 * 25) / M
    )


@pytest.mark.parametrize("model", ["claude-opus-4-5", "claude-opus-5", "claude-sonnet-5-5", "claude-fable-5-1"])
def test_flat_priced_models_ignore_prompt_size(table: PriceTable, model: str) -> None:
    small = table.rates(model, at=ts("2026-12-01"), prompt_tokens=1_000)
    huge = table.rates(model, at=ts("2026-12-01"), prompt_tokens=900_000)
    assert small == huge
    assert huge is not None and huge.long_context is False


def test_haiku_5_5_bills_prompts_over_100k_at_the_upper_band(table: PriceTable) -> None:
    at = ts("2026-10-10")
    # 100,000 prompt tokens: lower band.
    rest = dict(write_5m=20_000, write_1h=10_000, read=10_000, output=2_000)
    low = table.price("claude-haiku-5-5", usage(input=60_000, **rest), at=at)
    assert low.long_context is False
    assert low.total_usd == pytest.approx(
        (60_000 * 0.10 + 20_000 * 0.125 + 10_000 * 0.20 + 10_000 * 0.01 + 2_000 * 0.50) / M
    )
    # 100,001 prompt tokens: the whole request at the upper band.
    high = table.price("claude-haiku-5-5", usage(input=60_001, **rest), at=at)
    assert high.long_context is True
    assert high.total_usd == pytest.approx(
        (60_001 * 0.50 + 20_000 * 0.625 + 10_000 * 1.00 + 10_000 * 0.05 + 2_000 * 2.50) / M
    )


def test_rates_tier_is_chosen_by_the_prompt_tokens_argument(table: PriceTable) -> None:
    low = table.rates("claude-haiku-5-5", at=ts("2026-10-10"), prompt_tokens=100_000)
    high = table.rates("claude-haiku-5-5", at=ts("2026-10-10"), prompt_tokens=100_001)
    assert low is not None and high is not None
    assert low.input == pytest.approx(0.10 / M)
    assert high.input == pytest.approx(0.50 / M)
    assert high.output == pytest.approx(2.50 / M)


# --- multipliers and web search ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "day", "p_in", "p_out"),
    [
        ("claude-opus-4-6", "2026-04-01", 5, 25),
        ("claude-opus-4-7", "2026-05-01", 5, 25),
        ("claude-opus-4-8", "2026-06-01", 5, 25),
        ("claude-opus-5", "2026-08-01", 5, 25),
        ("claude-opus-5-5", "2026-10-01", 4, 20),
    ],
)
def test_fast_mode_doubles_opus_4_6_and_later(
    table: PriceTable, model: str, day: str, p_in: float, p_out: float
) -> None:
    cost = table.price(model, usage(input=10_000, output=1_000, speed="fast"), at=ts(day))
    assert cost.multiplier == 2.0
    assert cost.total_usd == pytest.approx(2 * (10_000 * p_in + 1_000 * p_out) / M)


@pytest.mark.parametrize("model", ["claude-opus-4-5", "claude-sonnet-4-6", "claude-haiku-4-5"])
def test_fast_mode_does_not_change_models_without_it(table: PriceTable, model: str) -> None:
    fast = table.price(model, usage(input=10_000, output=1_000, speed="fast"), at=ts("2026-04-01"))
    standard = table.price(model, usage(input=10_000, output=1_000), at=ts("2026-04-01"))
    assert fast.multiplier == 1.0
    assert fast.total_usd == pytest.approx(standard.total_usd)


def test_us_only_inference_costs_1_1x(table: PriceTable) -> None:
    call = usage(input=10_000, read=5_000, output=1_000, geo="us")
    cost = table.price("claude-sonnet-5", call, at=ts("2026-08-01"))
    assert cost.multiplier == pytest.approx(1.1)
    assert cost.total_usd == pytest.approx(1.1 * (10_000 * 2 + 5_000 * 0.20 + 1_000 * 10) / M)


def test_global_inference_has_no_surcharge(table: PriceTable) -> None:
    cost = table.price("claude-sonnet-5", usage(input=10_000, output=1_000, geo="global"), at=ts("2026-08-01"))
    assert cost.multiplier == 1.0
    assert cost.total_usd == pytest.approx((10_000 * 2 + 1_000 * 10) / M)


def test_fast_mode_and_us_geo_multiply(table: PriceTable) -> None:
    call = usage(input=1_000, output=1_000, speed="fast", geo="US")
    cost = table.price("claude-opus-4-6", call, at=ts("2026-04-01"))
    assert cost.multiplier == pytest.approx(2.2)
    assert cost.total_usd == pytest.approx(2.2 * (1_000 * 5 + 1_000 * 25) / M)


def test_web_search_is_ten_dollars_per_thousand_and_takes_no_multiplier(table: PriceTable) -> None:
    cost = table.price(
        "claude-opus-4-6", usage(input=1_000, output=100, web_search=3, speed="fast"), at=ts("2026-04-01")
    )
    assert cost.parts["web_search"] == pytest.approx(0.03)
    assert cost.total_usd == pytest.approx(0.03 + 2 * (1_000 * 5 + 100 * 25) / M)


# --- dated rows ------------------------------------------------------------------------


def test_sonnet_5_5_cache_read_drops_to_ten_cents_on_2026_10_07(table: PriceTable) -> None:
    call = usage(input=1_000, read=100_000, output=100)
    before = table.price("claude-sonnet-5-5", call, at=ts("2026-10-06T23:59:59"))
    after = table.price("claude-sonnet-5-5", call, at=ts("2026-10-07T00:00:00"))
    assert before.parts["cache_read"] == pytest.approx(100_000 * 0.20 / M)
    assert after.parts["cache_read"] == pytest.approx(100_000 * 0.10 / M)
    assert before.effective_date < "2026-10-07" <= after.effective_date
    assert before.parts["input"] == pytest.approx(after.parts["input"])


def test_call_before_a_models_first_row_uses_that_first_row(table: PriceTable) -> None:
    rates = table.rates("claude-opus-5-5", at=ts("2026-09-01"))
    assert rates is not None
    assert rates.effective_date == "2026-09-22"
    assert rates.input == pytest.approx(4 / M)


# --- unknown models and id matching -----------------------------------------------------


@pytest.mark.parametrize(
    "model", ["gpt-4o", "claude-mythos-5-1", "claude-3-5-sonnet-20241022", "claude-opus-4-10"]
)
def test_unknown_model_has_unknown_cost_never_zero(table: PriceTable, model: str) -> None:
    cost = table.price(model, usage(input=1_000, output=1_000), at=ts("2026-10-10"))
    assert cost.total_usd is None
    assert not cost.known
    assert cost.note is not None and model in cost.note
    assert table.rates(model, at=ts("2026-10-10")) is None


@pytest.mark.parametrize("model", [None, "", "   "])
def test_missing_model_id_has_unknown_cost(table: PriceTable, model: str | None) -> None:
    cost = table.price(model, usage(input=1_000), at=ts("2026-10-10"))
    assert cost.total_usd is None
    assert cost.note is not None and "no model" in cost.note


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("claude-opus-4-1", "claude-opus-4-1"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4@20250514", "claude-opus-4"),
        ("claude-opus-4-10", None),
        ("claude-opus-4-9", None),
        ("claude-opus-50", None),
        ("claude-sonnet-5-7", None),
        ("claude-opus-5", "claude-opus-5"),
        ("claude-opus-5-5", "claude-opus-5-5"),
        ("claude-fable-5", "claude-fable-5"),
        ("claude-fable-5-1", "claude-fable-5-1"),
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-opus-4-6[1m]", "claude-opus-4-6"),
        ("claude-sonnet-4-5-20250929[1m]", "claude-sonnet-4-5"),
        ("us.anthropic.claude-opus-4-6-v1", "claude-opus-4-6"),
        ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("publishers/anthropic/models/claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("CLAUDE-Sonnet-4-6", "claude-sonnet-4-6"),
        ("claude-opus-4-6x", None),
    ],
)
def test_model_ids_match_the_longest_key_at_a_boundary(table: PriceTable, model: str, key: str | None) -> None:
    rates = table.rates(model, at=ts("2026-11-01"))
    assert (rates.key if rates else None) == key


def test_normalize_drops_vendor_prefix_and_case() -> None:
    assert normalize_model_id(" US.Anthropic.claude-opus-4-6-v1 ") == "claude-opus-4-6-v1"
    assert normalize_model_id("claude-opus-4-6") == "claude-opus-4-6"


# --- override file -------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pricing.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_or_absent_override_file_gives_the_builtin_table(tmp_path: Path) -> None:
    at = ts("2026-04-01")
    builtin = PriceTable.builtin().rates("claude-opus-4-6", at=at)
    assert PriceTable.load(None).rates("claude-opus-4-6", at=at) == builtin
    assert PriceTable.load(tmp_path / "nope.toml").rates("claude-opus-4-6", at=at) == builtin


def test_override_of_a_builtin_key_replaces_it_with_cache_prices_from_multipliers(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."claude-opus-4-6"]\ninput = 7.0\noutput = 30\n')
    table = PriceTable.load(path)
    # Even before 2026-03-13 and over 200K: an undated override replaces every built-in row.
    cost = table.price(
        "claude-opus-4-6",
        usage(input=200_000, write_5m=10_000, write_1h=10_000, read=10_000, output=1_000),
        at=ts("2026-02-20"),
    )
    assert cost.long_context is False
    assert cost.total_usd == pytest.approx(
        (200_000 * 7 + 10_000 * 8.75 + 10_000 * 14 + 10_000 * 0.70 + 1_000 * 30) / M
    )
    assert cost.note is not None and str(path) in cost.note
    assert table.override_keys == ("claude-opus-4-6",)


def test_override_with_explicit_cache_prices_uses_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[models."claude-haiku-4-5"]\ninput = 1\noutput = 5\n'
        "cache_write_5m = 1.5\ncache_write_1h = 2.5\ncache_read = 0.2\n",
    )
    rates = PriceTable.load(path).rates("claude-haiku-4-5-20251001", at=ts("2026-01-01"))
    assert rates is not None
    assert rates.cache_write_5m == pytest.approx(1.5 / M)
    assert rates.cache_write_1h == pytest.approx(2.5 / M)
    assert rates.cache_read == pytest.approx(0.2 / M)


def test_star_key_prices_any_id_with_that_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."my-proxy-model*"]\ninput = 1.0\noutput = 2.0\n')
    table = PriceTable.load(path)
    cost = table.price("my-proxy-model-large-2", usage(input=1_000_000, output=1_000_000), at=ts("2026-01-01"))
    assert cost.price_key == "my-proxy-model*"
    assert cost.total_usd == pytest.approx(3.0)
    assert table.rates("other-model", at=ts("2026-01-01")) is None


def test_longest_prefix_wins_between_override_and_builtin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[models."claude-opus-4*"]\ninput = 1\noutput = 1\n'
        '[models."claude-sonnet-4-5-20250929"]\ninput = 2\noutput = 2\n',
    )
    table = PriceTable.load(path)
    at = ts("2026-04-01")

    def key(model: str) -> str | None:
        rates = table.rates(model, at=at)
        return rates.key if rates else None

    # Shorter override prefix loses to a longer built-in key...
    assert key("claude-opus-4-6") == "claude-opus-4-6"
    # ...and wins over the built-in key of the same length.
    assert key("claude-opus-4-20250514") == "claude-opus-4*"
    # A plain * prefix has no boundary rule.
    assert key("claude-opus-4-10") == "claude-opus-4*"
    # Longer override key beats the built-in key for just that snapshot.
    assert key("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5-20250929"
    assert key("claude-sonnet-4-5") == "claude-sonnet-4-5"


def test_dated_override_adds_a_row_and_keeps_earlier_builtin_rows(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."claude-sonnet-5-5"]\ninput = 1.5\noutput = 8\neffective = "2026-12-01"\n')
    table = PriceTable.load(path)
    before = table.rates("claude-sonnet-5-5", at=ts("2026-11-30"))
    after = table.rates("claude-sonnet-5-5", at=ts("2026-12-01"))
    assert before is not None and after is not None
    assert before.input == pytest.approx(2 / M)
    assert before.cache_read == pytest.approx(0.10 / M)
    assert after.input == pytest.approx(1.5 / M)
    assert after.effective_date == "2026-12-01"


def test_override_effective_accepts_a_toml_date(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."x-model"]\ninput = 1\noutput = 1\neffective = 2026-05-01\n')
    rates = PriceTable.load(path).rates("x-model", at=ts("2026-06-01"))
    assert rates is not None and rates.effective_date == "2026-05-01"


def test_override_keeps_fast_mode_of_the_builtin_model_unless_told(tmp_path: Path) -> None:
    inherited = write(tmp_path, '[models."claude-opus-4-6"]\ninput = 5\noutput = 25\n')
    rates = PriceTable.load(inherited).rates("claude-opus-4-6", at=ts("2026-04-01"), speed="fast")
    assert rates is not None and rates.multiplier == 2.0

    disabled = write(tmp_path, '[models."claude-opus-4-6"]\ninput = 5\noutput = 25\nfast_mode = false\n')
    rates = PriceTable.load(disabled).rates("claude-opus-4-6", at=ts("2026-04-01"), speed="fast")
    assert rates is not None and rates.multiplier == 1.0

    custom = write(tmp_path, '[models."my-model"]\ninput = 5\noutput = 25\nfast_mode = true\n')
    rates = PriceTable.load(custom).rates("my-model", at=ts("2026-04-01"), speed="fast")
    assert rates is not None and rates.multiplier == 2.0


def test_override_long_context_tier(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[models."my-model"]\ninput = 1\noutput = 4\n'
        "long_context_above = 1000\nlong_context_input = 2\nlong_context_output = 8\n",
    )
    table = PriceTable.load(path)
    low = table.price("my-model", usage(input=1_000, output=100), at=ts("2026-01-01"))
    high = table.price("my-model", usage(input=1_001, output=100), at=ts("2026-01-01"))
    assert low.total_usd == pytest.approx((1_000 * 1 + 100 * 4) / M)
    assert high.long_context is True
    assert high.total_usd == pytest.approx((1_001 * 2 + 100 * 8) / M)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[models."m"]\ninput = -1\noutput = 1\n', "input"),
        ('[models."m"]\ninput = "cheap"\noutput = 1\n', "input"),
        ('[models."m"]\ninput = 1\noutput = true\n', "output"),
        ('[models."m"]\ninput = 1\noutput = nan\n', "output"),
        ('[models."m"]\ninput = 1\noutput = 1\ncache_reed = 0.1\n', "cache_reed"),
        ('[models."m"]\ninput = 1\n', "output"),
        ('[models."m"]\ninput = 1\noutput = 1\neffective = "next tuesday"\n', "effective"),
        ('[models."m"]\ninput = 1\noutput = 1\nfast_mode = "yes"\n', "fast_mode"),
        ('[models."m"]\ninput = 1\noutput = 1\nlong_context_above = 100\n', "long_context_input"),
        ('[models."cl*ude"]\ninput = 1\noutput = 1\n', "cl*ude"),
        ('[models]\nm = 3\n', "m"),
        ('[prices."m"]\ninput = 1\noutput = 1\n', "prices"),
    ],
)
def test_bad_override_values_raise_an_error_naming_file_and_key(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PricingFileError) as info:
        PriceTable.load(path)
    message = str(info.value)
    assert str(path) in message
    assert named in message


def test_invalid_toml_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."m"]\ninput = 1\noutput = = 2\n')
    with pytest.raises(PricingFileError, match=r"line 3"):
        PriceTable.load(path)


def test_unreadable_override_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PricingFileError, match="cannot read"):
        PriceTable.load(tmp_path)


def test_empty_override_file_gives_the_builtin_table(tmp_path: Path) -> None:
    table = PriceTable.load(write(tmp_path, "# nothing yet\n"))
    assert table.override_keys == ()
    assert table.rates("claude-opus-4-6", at=ts("2026-04-01")) == PriceTable.builtin().rates(
        "claude-opus-4-6", at=ts("2026-04-01")
    )
