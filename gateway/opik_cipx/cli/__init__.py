"""``opik-cipx`` command line: each command builds Settings, makes one call, renders.

Business logic lives in the modules the commands call; this package only parses
arguments, builds the one Settings object and turns results into text and exit
codes. The commands live in ``lifecycle.py`` (running and wiring the gateway) and
``reports.py`` (reading what it captured).
"""

from __future__ import annotations

import sys

from .. import __version__

TYPE_CHECKING = False  # typing itself costs the status line ~4 ms; mypy reads this name as True

# pydantic and asyncio cost ~100 ms each to import: commands import what they use, so
# `version` and the hooks' fast paths pay for neither; argparse and the command modules are
# loaded only once a command is parsed, so `statusline` pays for none of it.
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from ..config import Settings


def _settings(strict: bool, quiet: bool = False) -> Settings:
    """Settings for one command. A bad value never stops a command that can run without it:
    only the commands that start or wire a gateway (``strict``) refuse a bad port, upstream
    or bind address; a bad Opik setting anywhere means local-only, said on stderr."""
    from ..config_load import ConfigError, load_settings

    try:
        settings = load_settings(strict=strict)
    except ConfigError as exc:
        lines = ["opik-cipx: cannot run this command with the current configuration:"]
        lines += [f"  {problem}" for problem in exc.problems]
        raise SystemExit("\n".join(lines)) from None
    if not quiet:
        for problem in settings.config_problems:
            print(f"opik-cipx: warning: {problem}", file=sys.stderr)
    return settings


def cmd_capture_worker(args: argparse.Namespace, settings: Settings | None) -> int:
    import os

    from ..capture.worker import main as worker_main

    os.umask(0o077)  # its log and anything it writes are as private as the gateway's

    return worker_main()


def cmd_version(args: argparse.Namespace, settings: Settings | None) -> int:
    print(f"opik-cipx {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from .args import count
    from .lifecycle import add_lifecycle_commands, cmd_proxy
    from .reports import add_viewer_commands, cmd_explain

    parser = argparse.ArgumentParser(prog="opik-cipx", description="Where did my Claude Code tokens go?")
    parser.add_argument("--version", action="version", version=f"opik-cipx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("proxy", help="run the gateway in the foreground")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)  # how ensure-running starts it
    p.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)  # how systemd/launchd run it
    p.set_defaults(func=cmd_proxy, strict_config=True)
    add_lifecycle_commands(sub)

    p = sub.add_parser("explain", help="where a stored call's bytes, tokens and cost went")
    p.add_argument("ids", nargs="*", metavar="CALL_ID", help="call ids (a unique prefix is enough)")
    p.add_argument("--last", type=count(1), metavar="N", help="the newest N LLM calls (default 1 without ids)")
    p.add_argument("--json", action="store_true", help="JSON with the regions over the stored raw body")
    p.set_defaults(func=cmd_explain)
    add_viewer_commands(sub)

    # Started by the gateway itself: batches of finished calls on stdin, summaries on stdout.
    # Registered without help and then taken out of the listing (argparse would print it as
    # "==SUPPRESS==").
    p = sub.add_parser("capture-worker")
    p.set_defaults(func=cmd_capture_worker, no_settings=True)
    sub._choices_actions = [a for a in sub._choices_actions if a.dest != "capture-worker"]

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, no_settings=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["statusline"]:
        # Claude Code runs this after every assistant message: no argparse, no Settings.
        from ..report.statusline import main as statusline_main

        return statusline_main()
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`opik-cipx stats | head`): that is not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush cannot complain either.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Commands registered with no_settings=True get None: they build their own, or need none.
    settings = None if getattr(args, "no_settings", False) else _settings(
        strict=getattr(args, "strict_config", False), quiet=getattr(args, "quiet_config", False)
    )
    if settings is not None and settings.home.exists() and not settings.home.is_dir():
        print(f"opik-cipx: the state directory {settings.home} (CIPX_HOME) is a file, not a directory; "
              "point CIPX_HOME elsewhere", file=sys.stderr)
        return 1
    try:
        return int(args.func(args, settings) or 0)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) or settings is None:
            raise
        print(f"opik-cipx: {_file_problem(exc, settings)}", file=sys.stderr)
        return 1


def _file_problem(exc: OSError, settings: Settings) -> str:
    """One line for a file the command could not use; a permission problem is never "delete it"."""
    import errno

    where = str(exc.filename or settings.home)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and not settings.home.is_dir() and settings.home.exists():
        return f"the state directory {settings.home} (CIPX_HOME) is a file, not a directory; point CIPX_HOME elsewhere"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {where}: the state directory (CIPX_HOME) must be yours and writable"
    if exc.errno == errno.EROFS:
        return f"{where} is on a read-only file system: point CIPX_HOME at a writable directory"
    return f"cannot use {where}: {exc.strerror or exc}"
