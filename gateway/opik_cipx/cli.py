"""``opik-cipx`` command line: each command builds Settings, makes one call, renders.

Business logic lives in the modules the commands call; this file only parses
arguments, builds the one Settings object and turns results into text and
exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from . import __version__
from .config import Settings

Command = Callable[[argparse.Namespace, Settings], int]


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"opik-cipx: invalid configuration:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            lines.append(f"  {where}: {err.get('msg')}")
        raise SystemExit("\n".join(lines)) from None


def cmd_proxy(args: argparse.Namespace, settings: Settings) -> int:
    from .server import install_uvloop, run

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_uvloop()
    try:
        asyncio.run(run(settings))
    except OSError as exc:
        print(f"opik-cipx: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    return 0


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .explain import ExplainError, explain, open_spool, render_text, to_json
    from .pricing import PriceTable, PricingFileError

    try:
        prices = PriceTable.load(settings.pricing_file)
    except PricingFileError as exc:
        print(f"opik-cipx: ignoring pricing overrides: {exc}", file=sys.stderr)
        prices = PriceTable.builtin()
    try:
        spool = open_spool(settings.spool_path)
        try:
            last = args.last if args.last is not None else (None if args.ids else 1)
            results = explain(spool, prices, args.ids, last)
        finally:
            spool.close()
    except ExplainError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out = [to_json(ex, attr) for ex, attr in results]
        print(json.dumps(out if len(out) != 1 else out[0], indent=2))
    else:
        print("\n\n".join(render_text(ex, attr) for ex, attr in results))
    return 0


def cmd_version(args: argparse.Namespace, settings: Settings | None) -> int:
    print(f"opik-cipx {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opik-cipx", description="Where did my Claude Code tokens go?")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("proxy", help="run the gateway in the foreground")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("explain", help="where a stored call's bytes, tokens and cost went")
    p.add_argument("ids", nargs="*", metavar="CALL_ID", help="call ids (a unique prefix is enough)")
    p.add_argument("--last", type=int, metavar="N", help="the newest N LLM calls (default 1 without ids)")
    p.add_argument("--json", action="store_true", help="JSON with the regions over the stored raw body")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, no_settings=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None if getattr(args, "no_settings", False) else _settings()
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
