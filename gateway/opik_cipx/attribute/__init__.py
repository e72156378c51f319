"""Attribution: every byte of a captured request in a named bucket, every token and cent shared out.

Pure: bytes in, data out; no I/O. :func:`attribute_request` finds the regions of
the raw body, :func:`allocate` shares the call's billed usage over them.
"""

from .allocate import allocate, largest_remainder
from .rawjson import char_to_byte_offsets, decode_string
from .types import (
    CATEGORIES,
    Attribution,
    Breakpoint,
    ItemTotal,
    Region,
)
from .walk import attribute_request, classify_call, split_mcp_name

__all__ = [
    "CATEGORIES",
    "Attribution",
    "Breakpoint",
    "ItemTotal",
    "Region",
    "allocate",
    "attribute_request",
    "char_to_byte_offsets",
    "classify_call",
    "decode_string",
    "largest_remainder",
    "split_mcp_name",
]
