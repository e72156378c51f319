"""The local spool: SQLite in WAL mode, handed its connection; nothing here builds spans or prices.

Exchanges with their bodies stored as deduplicated chunks (:mod:`.spool`),
attribution rows (:mod:`.attribution`), registered sessions (:mod:`.sessions`),
and the append-only migrations every table comes from (:mod:`.migrations`).
"""

from .migrations import migrate, transaction
from .sessions import SessionInfo, SessionStore, SessionTable
from .spool import AsyncSpool, CallRow, Spool, SpoolError, connect

__all__ = [
    "AsyncSpool",
    "CallRow",
    "SessionInfo",
    "SessionStore",
    "SessionTable",
    "Spool",
    "SpoolError",
    "connect",
    "migrate",
    "transaction",
]
