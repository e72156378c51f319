"""Content-defined chunking of request bodies, so a conversation's repeated turns are stored once.

Claude Code resends the whole conversation every turn; cutting each body at
boundaries that stay put from one turn to the next lets the spool store each
chunk once (by its SHA-256) and a turn cost roughly its new messages.
"""

from __future__ import annotations

import re
import zlib

# Chunking. A boundary is the start of a JSON object whose first key is "role" (a message)
# or "type" (a content block, a system block, a schema node). These sit at the same bytes in
# every turn of a conversation, unlike fixed offsets, which shift as soon as one byte is added.
_BOUNDARY = re.compile(rb'\{"(?:role|type)"\s*:')
MIN_CHUNK = 2 * 1024  # below this, neighbouring pieces are merged
MAX_CHUNK = 64 * 1024  # merged chunks stay under this; a bigger single piece stands alone
SLICE = 1024 * 1024  # a piece bigger than this (one huge tool result, a non-JSON body) is sliced
# Past MIN_CHUNK a piece ends its chunk when its CRC has this bit clear (1 in 2). Deciding on
# the piece's own content, not on a running size alone, is what lets two turns that differ in
# the middle fall back onto the same cuts soon after the difference. Measured on synthetic
# Claude Code conversations, rarer cuts (1 in 8) make bigger chunks and store about 1.7x more,
# since each turn rewrites the chunk its change lands in.
_CUT_MASK = 0x1


def chunk_bounds(body: bytes) -> list[tuple[int, int]]:
    """Cut ``body`` into ``(start, end)`` ranges that cover it exactly, in order."""
    size = len(body)
    if size == 0:
        return []
    view = memoryview(body)
    out: list[tuple[int, int]] = []
    chunk_start = 0
    piece_start = 0
    ends = [m.start() for m in _BOUNDARY.finditer(body)]
    ends.append(size)
    for piece_end in ends:
        piece_len = piece_end - piece_start
        if piece_len == 0:
            continue
        if piece_len >= MAX_CHUNK:
            if chunk_start < piece_start:
                out.append((chunk_start, piece_start))
            for s in range(piece_start, piece_end, SLICE):
                out.append((s, min(s + SLICE, piece_end)))
            chunk_start = piece_end
        else:
            if piece_start - chunk_start + piece_len > MAX_CHUNK:
                out.append((chunk_start, piece_start))
                chunk_start = piece_start
            if piece_end - chunk_start >= MIN_CHUNK and not (
                zlib.crc32(view[piece_start:piece_end]) & _CUT_MASK
            ):
                out.append((chunk_start, piece_end))
                chunk_start = piece_end
        piece_start = piece_end
    if chunk_start < size:
        out.append((chunk_start, size))
    return out
