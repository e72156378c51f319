"""The stdio edge: read a line, answer a line, until the client closes stdin.

Everything else goes to stderr (Claude Code keeps it in its MCP log); stdout carries only
protocol messages, as the MCP stdio transport requires.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from .protocol import Server

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024  # a request larger than this is not one this server's tools take


def run(server: Server, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Serve until EOF on ``stdin``; 0 then (the client's way to stop a stdio server)."""
    while True:
        line = stdin.readline(MAX_LINE + 1)
        if not line:
            return 0
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            # Drop the rest of the oversized line, then answer it as unreadable.
            while (more := stdin.readline(MAX_LINE)) and not more.endswith(b"\n"):
                pass
            line = b"{"
        answer = server.handle_line(line.rstrip(b"\r\n"))
        if answer is not None:
            stdout.write(answer.encode("utf-8") + b"\n")
            stdout.flush()
