"""Dated Anthropic price table, user overrides, and the cost of one call.

Prices live in a built-in table (:data:`BUILTIN`, kept in :mod:`.price_list`):
per model-id prefix, a list of rows, each effective from a UTC date. A call is
priced by the row in force on the day it was made, so re-pricing old calls after
a price change stays correct.

Model ids are matched by the longest prefix. A built-in or plain override key
``K`` matches id ``M`` when ``M == K`` or ``M`` continues after ``K`` with ``@``,
``:``, ``[``, or ``-`` followed by anything but a short version number. So
``claude-opus-4`` matches ``claude-opus-4-20250514``, ``claude-opus-4@20250514``
and ``claude-opus-4-v1:0``, but never ``claude-opus-4-1`` or ``claude-opus-4-10``
(those are other models: better unknown than priced as the wrong one). A
segment starting with a digit is a version unless it is an 8-digit snapshot date. Before matching, ids are
lower-cased and cloud vendor prefixes are dropped: ``us.anthropic.``,
``global.anthropic.``, ``anthropic.`` and anything up to a final ``/``.

An unknown model is never priced at $0: :meth:`PriceTable.price` returns a
:class:`~opik_cipx.model.Cost` whose ``total_usd`` is None and whose note says why.

User override file
------------------

TOML (``$CIPX_HOME/pricing.toml`` unless ``CIPX_PRICING_PATH`` says otherwise),
prices in USD per million tokens::

    [models."claude-opus-4-6"]
    input = 5.0
    output = 25.0
    cache_write_5m = 6.25    # optional, default 1.25 x input
    cache_write_1h = 10.0    # optional, default 2 x input
    cache_read = 0.5         # optional, default 0.1 x input
    effective = "2026-01-01" # optional, see below

    [models."my-proxy-model*"]  # trailing * = plain prefix, no boundary rule
    input = 1.0
    output = 2.0

Every key is optional except ``input`` and ``output``. Further optional keys:

* ``long_context_above``, ``long_context_input``, ``long_context_output``
  (all three or none): when the billed prompt (input + cache writes + cache
  reads) exceeds ``long_context_above`` tokens, the whole request is billed at
  these rates, cache rates derived with the multipliers above.
* ``fast_mode = true|false``: whether ``speed: "fast"`` doubles the price.
  Default: whatever the built-in table says for that model.

Overrides are merged over the built-in table. The longest matching key wins; on
a key present in both, the override wins. Without ``effective`` an override
replaces every built-in row of that key; with it, the override is one more
dated row (earlier calls keep the built-in prices, later built-in rows still
apply from their own dates). A bad value (negative, not a number, unknown key,
bad date) makes the whole file invalid: :class:`PricingFileError` names the
file, the key and the problem, and the caller falls back to the built-in table.

Other rules: calls dated before a key's first row use that first row (a model
cannot be called before its launch, so this only absorbs clock skew); fast mode
is 2x (Opus 4.6 and later); US-only inference (``usage.inference_geo == "us"``)
is 1.1x; web search is $10 per 1,000 requests and takes no multiplier.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from .model import Cost, Usage
from .price_list import (
    BUILTIN,
    CACHE_READ_FACTOR,
    CACHE_WRITE_1H_FACTOR,
    CACHE_WRITE_5M_FACTOR,
    PriceRow,
    TokenPrices,
)

__all__ = [
    "BUILTIN",
    "CACHE_READ_FACTOR",
    "CACHE_WRITE_1H_FACTOR",
    "CACHE_WRITE_5M_FACTOR",
    "PriceRow",
    "PriceTable",
    "PricingFileError",
    "Rates",
    "TokenPrices",
    "normalize_model_id",
]

PER_MILLION = 1_000_000
WEB_SEARCH_PER_REQUEST = 10.0 / 1000
FAST_MODE_MULTIPLIER = 2.0
US_GEO_MULTIPLIER = 1.1
# Values of usage.inference_geo that mean US-only inference.
_US_GEOS = frozenset({"us"})

# Undated override rows apply "always"; date.min sorts before every real row.
ALWAYS = date.min


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per single token (not per million), multipliers already applied."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float
    web_search_per_request: float
    key: str  # the matched prefix
    effective_date: str  # ISO date of the row used
    multiplier: float  # fast mode x US-only inference_geo
    long_context: bool  # the whole request was billed at the long-prompt tier


class PricingFileError(Exception):
    """The override file cannot be used; the message says where and why."""


_VENDOR_PREFIX = re.compile(r"^(?:[a-z0-9-]+\.)?anthropic\.")
_DATE_SEGMENT = re.compile(r"^\d{8}$")
_OPENAI_SNAPSHOT = re.compile(r"^-\d{4}-\d{2}-\d{2}(?:$|[-@:\[])")  # gpt-5-2025-08-07
_SEGMENT_END = re.compile(r"[-@:\[]")


def normalize_model_id(model: str) -> str:
    """Lower-case, drop a path (``publishers/anthropic/models/``) and a vendor prefix."""
    bare = model.strip().lower().rsplit("/", 1)[-1]
    return _VENDOR_PREFIX.sub("", bare)


def _continues_same_model(rest: str) -> bool:
    """Whether ``rest``, the id after a key, is a suffix of the same model."""
    if not rest:
        return True
    if rest[0] in "@:[":
        return True
    if rest[0] != "-":
        return False
    if _OPENAI_SNAPSHOT.match(rest):
        return True
    segment = _SEGMENT_END.split(rest[1:], 1)[0]
    # "-1", "-10", "-6x": a version, i.e. another model. "-20250514": a snapshot
    # date. "-v1", "-latest": a suffix of this model.
    return not segment[:1].isdigit() or bool(_DATE_SEGMENT.match(segment))


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str  # as written, with a trailing * for plain prefixes
    prefix: str
    plain_prefix: bool  # trailing *: startswith, no boundary rule
    rows: tuple[PriceRow, ...]  # sorted by effective date
    override: bool

    def matches(self, model: str) -> bool:
        if not model.startswith(self.prefix):
            return False
        return self.plain_prefix or _continues_same_model(model[len(self.prefix) :])

    def rank(self) -> tuple[int, int, int]:
        # Longest prefix first; at equal length an override beats the built-in
        # and a boundary-checked key beats a plain prefix.
        return (len(self.prefix), int(self.override), int(not self.plain_prefix))

    def row_at(self, day: date) -> PriceRow:
        chosen = self.rows[0]
        for row in self.rows:
            if row.effective <= day:
                chosen = row
        return chosen


def _day_of(at: float) -> date:
    return datetime.fromtimestamp(at, tz=UTC).date()


class PriceTable:
    """Immutable price table: built-in rows with any user overrides merged in."""

    __slots__ = ("_builtin", "_entries", "source")

    def __init__(self, entries: list[_Entry], builtin: list[_Entry], source: Path | None = None) -> None:
        self._entries = sorted(entries, key=_Entry.rank, reverse=True)
        self._builtin = sorted(builtin, key=_Entry.rank, reverse=True)
        self.source = source  # the override file merged in, if any

    @classmethod
    def builtin(cls) -> PriceTable:
        entries = [
            _Entry(key=key, prefix=key, plain_prefix=False, rows=rows, override=False)
            for key, rows in BUILTIN.items()
        ]
        return cls(entries, entries)

    @classmethod
    def load(cls, override_path: Path | None) -> PriceTable:
        """Built-in table with the user's TOML merged over it by longest prefix.

        Missing file (or no path) -> the built-in table. Malformed file ->
        :class:`PricingFileError`; the caller logs it and falls back to
        :meth:`builtin`.
        """
        base = cls.builtin()
        if override_path is None:
            return base
        try:
            raw = override_path.read_bytes()
        except FileNotFoundError:
            return base
        except OSError as exc:
            raise PricingFileError(f"{override_path}: cannot read: {exc.strerror or exc}") from exc
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise PricingFileError(f"{override_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            # The decoder's message carries "(at line N, column M)".
            raise PricingFileError(f"{override_path}: invalid TOML: {exc}") from exc
        overrides = _parse_overrides(doc, override_path)
        return base._merged(overrides, override_path)

    def _merged(self, overrides: dict[str, tuple[str, bool, PriceRow]], path: Path) -> PriceTable:
        by_key = {(e.prefix, e.plain_prefix): e for e in self._entries}
        for key, (prefix, plain, row) in overrides.items():
            existing = by_key.get((prefix, plain))
            if existing is not None and row.effective != ALWAYS:
                kept = [r for r in existing.rows if r.effective != row.effective]
                rows = tuple(sorted([*kept, row], key=lambda r: r.effective))
            else:
                rows = (row,)
            by_key[(prefix, plain)] = _Entry(key=key, prefix=prefix, plain_prefix=plain, rows=rows, override=True)
        return PriceTable(list(by_key.values()), self._builtin, path)

    @property
    def override_keys(self) -> tuple[str, ...]:
        """Keys that came from the override file, for status displays."""
        return tuple(sorted(e.key for e in self._entries if e.override))

    def _match(self, model: str | None) -> tuple[_Entry, str] | None:
        if not model or not model.strip():
            return None
        normalized = normalize_model_id(model)
        for entry in self._entries:
            if entry.matches(normalized):
                return entry, normalized
        return None

    def _builtin_fast_mode(self, normalized: str, day: date) -> bool:
        for entry in self._builtin:
            if entry.matches(normalized):
                return bool(entry.row_at(day).fast_mode)
        return False

    def _resolve(
        self,
        model: str | None,
        *,
        at: float,
        prompt_tokens: int,
        speed: str | None,
        inference_geo: str | None,
    ) -> tuple[Rates, PriceRow] | None:
        found = self._match(model)
        if found is None:
            return None
        entry, normalized = found
        day = _day_of(at)
        row = entry.row_at(day)
        prices, long_context = row.prices_for(prompt_tokens)
        fast_capable = row.fast_mode if row.fast_mode is not None else self._builtin_fast_mode(normalized, day)
        multiplier = 1.0
        if fast_capable and (speed or "").strip().lower() == "fast":
            multiplier *= FAST_MODE_MULTIPLIER
        if (inference_geo or "").strip().lower() in _US_GEOS:
            multiplier *= US_GEO_MULTIPLIER
        scale = multiplier / PER_MILLION
        rates = Rates(
            input=prices.input * scale,
            cache_write_5m=prices.cache_write_5m * scale,
            cache_write_1h=prices.cache_write_1h * scale,
            cache_read=prices.cache_read * scale,
            output=prices.output * scale,
            web_search_per_request=WEB_SEARCH_PER_REQUEST,
            key=entry.key,
            effective_date=row.effective.isoformat(),
            multiplier=multiplier,
            long_context=long_context,
        )
        return rates, row

    def rates(
        self,
        model: str | None,
        *,
        at: float,
        prompt_tokens: int = 0,
        speed: str | None = None,
        inference_geo: str | None = None,
    ) -> Rates | None:
        """Per-token rates for ``model`` at epoch seconds ``at``; None for an unknown model.

        ``prompt_tokens`` (input + cache_creation + cache_read) selects the
        long-context and Haiku 5.5 tiers.
        """
        resolved = self._resolve(
            model, at=at, prompt_tokens=prompt_tokens, speed=speed, inference_geo=inference_geo
        )
        return None if resolved is None else resolved[0]

    def price(self, model: str | None, usage: Usage, *, at: float) -> Cost:
        """Cost of one call. Unknown model -> ``total_usd`` None with a note, never $0."""
        resolved = self._resolve(
            model,
            at=at,
            prompt_tokens=usage.prompt_tokens,
            speed=usage.speed,
            inference_geo=usage.inference_geo,
        )
        if resolved is None:
            if not model or not model.strip():
                reason = "no model id in the call"
            else:
                reason = f"no price for model {model!r}"
            return Cost(total_usd=None, note=f"{reason}; add it to the pricing file")
        rates, row = resolved
        write_5m, write_1h = _cache_write_split(usage)
        parts = {
            "input": usage.input_tokens * rates.input,
            "cache_write_5m": write_5m * rates.cache_write_5m,
            "cache_write_1h": write_1h * rates.cache_write_1h,
            "cache_read": usage.cache_read_input_tokens * rates.cache_read,
            "output": usage.output_tokens * rates.output,
            "web_search": usage.web_search_requests * rates.web_search_per_request,
        }
        note = f"override {rates.key!r} from {row.source}" if row.source is not None else None
        return Cost(
            total_usd=math.fsum(parts.values()),
            parts=parts,
            price_key=rates.key,
            effective_date=rates.effective_date,
            multiplier=rates.multiplier,
            long_context=rates.long_context,
            note=note,
        )


def _cache_write_split(usage: Usage) -> tuple[int, int]:
    """(5-minute, 1-hour) cache-write tokens; without a split all writes are 5-minute."""
    total = usage.cache_creation_input_tokens
    if usage.cache_creation_5m is None and usage.cache_creation_1h is None:
        return total, 0
    one_hour = usage.cache_creation_1h or 0
    five_min = usage.cache_creation_5m if usage.cache_creation_5m is not None else max(total - one_hour, 0)
    return five_min, one_hour


_PRICE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_LONG_FIELDS = ("long_context_above", "long_context_input", "long_context_output")
_ALLOWED_FIELDS = frozenset({*_PRICE_FIELDS, *_LONG_FIELDS, "effective", "fast_mode"})


def _parse_overrides(doc: dict[str, Any], path: Path) -> dict[str, tuple[str, bool, PriceRow]]:
    """TOML document -> {key: (prefix, plain_prefix, row)}; raises PricingFileError."""
    unknown_top = sorted(set(doc) - {"models"})
    if unknown_top:
        raise PricingFileError(
            f"{path}: unknown top-level key {unknown_top[0]!r} (expected [models.\"<id>\"] tables)"
        )
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise PricingFileError(f"{path}: 'models' must be a table of [models.\"<id>\"] tables")
    out: dict[str, tuple[str, bool, PriceRow]] = {}
    seen: dict[tuple[str, bool], str] = {}
    for raw_key, body in models.items():
        where = f'{path}: [models."{raw_key}"]'
        if not isinstance(body, dict):
            raise PricingFileError(f"{where}: must be a table with input and output prices")
        prefix, plain = _parse_key(raw_key, where)
        if (prefix, plain) in seen:
            raise PricingFileError(f"{where}: same model id as [models.\"{seen[(prefix, plain)]}\"]")
        seen[(prefix, plain)] = raw_key
        out[raw_key] = (prefix, plain, _parse_row(body, where, path))
    return out


def _parse_key(raw_key: str, where: str) -> tuple[str, bool]:
    key = raw_key.strip().lower()
    plain = key.endswith("*")
    prefix = key[:-1] if plain else key
    if "*" in prefix:
        raise PricingFileError(f"{where}: '*' is allowed only at the end of a model id")
    # Keys are compared with normalized ids, so normalize them the same way.
    prefix = normalize_model_id(prefix)
    if not prefix:
        raise PricingFileError(f"{where}: empty model id")
    return prefix, plain


def _number(body: dict[str, Any], name: str, where: str) -> float | None:
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PricingFileError(f"{where} {name}: must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise PricingFileError(f"{where} {name}: must be a finite number >= 0, got {value!r}")
    return float(value)


def _parse_row(body: dict[str, Any], where: str, path: Path) -> PriceRow:
    unknown = sorted(set(body) - _ALLOWED_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(_ALLOWED_FIELDS))
        raise PricingFileError(f"{where} {unknown[0]}: unknown key (allowed: {allowed})")
    values = {name: _number(body, name, where) for name in _PRICE_FIELDS}
    for required in ("input", "output"):
        if values[required] is None:
            raise PricingFileError(f"{where} {required}: missing (input and output are required)")
    standard = TokenPrices.from_input(
        values["input"] or 0.0,
        values["output"] or 0.0,
        cache_write_5m=values["cache_write_5m"],
        cache_write_1h=values["cache_write_1h"],
        cache_read=values["cache_read"],
    )

    long_values = {name: _number(body, name, where) for name in _LONG_FIELDS}
    given = [name for name in _LONG_FIELDS if long_values[name] is not None]
    tier_above: int | None = None
    tier: TokenPrices | None = None
    if given and len(given) != len(_LONG_FIELDS):
        missing = next(name for name in _LONG_FIELDS if long_values[name] is None)
        raise PricingFileError(f"{where} {missing}: missing (long_context_* keys go together)")
    if given:
        above = long_values["long_context_above"] or 0.0
        if not above.is_integer():
            raise PricingFileError(f"{where} long_context_above: must be a whole number of tokens")
        tier_above = int(above)
        tier = TokenPrices.from_input(
            long_values["long_context_input"] or 0.0, long_values["long_context_output"] or 0.0
        )

    fast_mode = body.get("fast_mode")
    if fast_mode is not None and not isinstance(fast_mode, bool):
        raise PricingFileError(f"{where} fast_mode: must be true or false, got {fast_mode!r}")

    return PriceRow(
        effective=_parse_effective(body.get("effective"), where),
        standard=standard,
        tier_above=tier_above,
        tier=tier,
        fast_mode=fast_mode,
        source=str(path),
    )


def _parse_effective(value: Any, where: str) -> date:
    if value is None:
        return ALWAYS
    # TOML has a native date type (effective = 2026-01-01) besides strings.
    if isinstance(value, datetime):
        raise PricingFileError(f"{where} effective: must be a date (YYYY-MM-DD), not a date-time")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise PricingFileError(f"{where} effective: must be a date YYYY-MM-DD, got {value!r}")
