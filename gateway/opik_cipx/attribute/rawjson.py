"""Locating JSON structure in raw request bytes at C speed.

The attributor must report byte ranges of the body exactly as it was sent, so it
never re-serializes. The body is decoded as latin-1:
one char per byte, so every index in the decoded ``str`` is a byte offset of the
raw body, and JSON's structural characters (all ASCII) sit where they sit in the
bytes. String ends are found with ``str.find``; containers we treat as opaque are
skipped with the stdlib's C scanner. The latin-1 view garbles non-ASCII text, so
whenever real text is needed it is decoded from the raw bytes with
:func:`decode_string`, and positions found in that text go back to byte offsets
through :func:`char_to_byte_offsets`.
"""

from __future__ import annotations

import itertools
import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable, Sequence
from typing import Any

WS = re.compile(r"[ \t\n\r]*")

# typeshed types the scanner's context as a make_scanner itself; the decoder is the duck type it reads.
_scan_once = json.scanner.make_scanner(json.JSONDecoder(strict=False))  # type: ignore[arg-type]
# The C string scanner json.decoder uses; typeshed does not declare it there.
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class Malformed(Exception):
    """The body stops being JSON at :attr:`pos`."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


def skip_ws(s: str, pos: int) -> int:
    return WS.match(s, pos).end()  # type: ignore[union-attr]  # matches the empty string


def string_end(s: str, pos: int) -> int:
    """End of the JSON string token starting at ``pos`` (which holds ``"``).

    ``str.find`` for the next quote, then a look back for escaping backslashes:
    a regex with a repeated group costs a step per escape, and tool results are
    full of ``\\n``.
    """
    if s[pos] != '"':
        raise Malformed(pos)
    find = s.find
    q = find('"', pos + 1)
    while q != -1:
        if s[q - 1] != "\\":  # the common case: no backslash to count
            return q + 1
        k = q - 2
        while s[k] == "\\":
            k -= 1
        if (q - 1 - k) % 2 == 0:
            return q + 1
        q = find('"', q + 1)
    raise Malformed(pos)


def value(s: str, pos: int) -> tuple[Any, int]:
    """Parse the value at ``pos`` with the C scanner: (python value, end).

    Strings come back garbled outside ASCII (latin-1 view); callers use them only
    for ASCII facts such as tool names and dict keys.
    """
    try:
        return _scan_once(s, pos)
    except (StopIteration, ValueError, RecursionError) as exc:
        raise Malformed(pos) from exc


def skip_value(s: str, pos: int) -> int:
    if pos < len(s) and s[pos] == '"':
        return string_end(s, pos)
    return value(s, pos)[1]


def decode_string(raw: bytes) -> str | None:
    """Text of a JSON string given its raw bytes *without* the quotes.

    Invalid UTF-8 bytes become lone surrogates (one char per byte), the same rule
    :func:`char_to_byte_offsets` counts with. None when an escape is invalid.
    """
    text = raw.decode("utf-8", "surrogateescape")
    if "\\" not in text:
        return text
    try:
        return _scanstring(text + '"', 0, False)[0]
    except (ValueError, IndexError):
        return None


# One char of decoded text per match, except plain runs, which are many chars.
# A surrogate pair escape decodes to one char (json joins the pair).
_ESCAPES = (
    r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|\\u[0-9a-fA-F]{4}"
    r"|\\."
)
_PIECE = re.compile((_ESCAPES + r"|[^\\]+").encode(), re.S)
_ESCAPE = re.compile(_ESCAPES, re.S)  # the same escapes, in decoded-UTF-8 text
_ESCAPED_NON_ASCII = re.compile(rb"\\[\x80-\xff]")


def char_to_byte_offsets(raw: bytes, char_offsets: Sequence[int]) -> list[int]:
    """Map offsets in the decoded text of a JSON string to offsets in its raw bytes.

    ``raw`` is the string's bytes without the quotes; ``char_offsets`` must be
    sorted ascending. An offset at or past the end maps to ``len(raw)``. Offsets
    always land on a piece boundary, never inside an escape sequence or inside a
    UTF-8 multi-byte sequence.
    """
    if not char_offsets:
        return []
    if (
        char_offsets[0] >= 0
        and all(a <= b for a, b in itertools.pairwise(char_offsets))
        and (raw.isascii() or _ESCAPED_NON_ASCII.search(raw) is None)
    ):
        out = _by_escapes(raw, char_offsets)
        if out is not None:
            return out
    return _by_pieces(raw, char_offsets)


def _by_escapes(raw: bytes, char_offsets: Sequence[int]) -> list[int] | None:
    """:func:`char_to_byte_offsets` visiting only the escapes; None when it cannot tell.

    Outside escapes one char of decoded text is one char of ``raw`` decoded as
    UTF-8 (an escape's bytes are ASCII, so a multi-byte sequence never spans
    one): an offset is the target plus the extra chars of the escapes before
    it, then converted to bytes. Each escape's chars are counted once, where
    :func:`_by_pieces` decodes every plain run between them.
    """
    ascii_only = raw.isascii()
    text = raw.decode("latin-1") if ascii_only else raw.decode("utf-8", "surrogateescape")
    out: list[int] = []
    want = iter(char_offsets)
    target = next(want)
    extra = 0  # chars of `text` beyond one per decoded char, in the escapes so far
    end = 0
    for m in _ESCAPE.finditer(text):
        start, end = m.span()
        while target + extra <= start:  # at or before this escape
            out.append(target + extra)
            following = next(want, None)
            if following is None:
                return out if ascii_only else _to_bytes(text, out)
            target = following
        extra += end - start - 1
    if end < len(text) and text.endswith("\\"):
        return None  # a lone backslash at the end: counted as no char at all; leave it to _by_pieces
    out.append(min(target + extra, len(text)))
    out.extend(min(t + extra, len(text)) for t in want)
    return out if ascii_only else _to_bytes(text, out)


def _to_bytes(text: str, offsets: list[int]) -> list[int]:
    """Offsets into ``text`` (sorted) -> offsets into its UTF-8 (surrogateescape) bytes."""
    out: list[int] = []
    chars = size = 0
    for offset in offsets:
        size += len(text[chars:offset].encode("utf-8", "surrogateescape"))
        chars = offset
        out.append(size)
    return out


def _by_pieces(raw: bytes, char_offsets: Sequence[int]) -> list[int]:
    """:func:`char_to_byte_offsets`, piece by piece: the general case."""
    out: list[int] = []
    want = iter(char_offsets)
    target = next(want, None)
    chars = 0
    for m in _PIECE.finditer(raw):
        piece = m.group()
        if piece[:1] == b"\\":
            width = 1
        else:
            text = piece.decode("utf-8", "surrogateescape")
            width = len(text)
        while target is not None and target < chars + width:
            if target <= chars:
                out.append(m.start())
            else:
                # Inside a plain run: count the UTF-8 bytes of the chars before it.
                out.append(m.start() + len(text[: target - chars].encode("utf-8", "surrogateescape")))
            target = next(want, None)
        if target is None:
            return out
        chars += width
    while target is not None:
        out.append(len(raw))
        target = next(want, None)
    return out
