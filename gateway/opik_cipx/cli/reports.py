"""Commands that read what was captured: explain, viewer, stats (report/, viewer/)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from .args import seconds

if TYPE_CHECKING:
    from ..config import Settings
    from ..pricing import PriceTable


def _prices(settings: Settings) -> PriceTable:
    from ..pricing import PriceTable, PricingFileError

    try:
        return PriceTable.load(settings.pricing_file)
    except PricingFileError as exc:
        print(f"opik-cipx: ignoring pricing overrides: {exc}", file=sys.stderr)
        return PriceTable.builtin()


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    from ..report.explain import ExplainError, open_spool, resolve_ids, write

    prices = _prices(settings)
    try:
        spool = open_spool(settings.spool_path)
        try:
            last = args.last if args.last is not None else (None if args.ids else 1)
            # Streamed, one call at a time: memory stays bounded whatever --last asks for.
            write(spool, prices, resolve_ids(spool, args.ids, last), sys.stdout, as_json=args.json)
        finally:
            spool.close()
    except ExplainError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_viewer(args: argparse.Namespace, settings: Settings) -> int:
    import urllib.error
    import urllib.request
    import webbrowser

    from ..viewer import read_token, viewer_url

    token = read_token(settings.home)
    try:
        port = int(settings.port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        port = None
    if token is None or port is None:
        print("opik-cipx: the gateway is not running (start it with `opik-cipx ensure-running`)", file=sys.stderr)
        return 1
    url = viewer_url(port, token, settings.host)
    # Ask the gateway itself, so a token file left by a crashed gateway is not printed as live.
    # No proxies: the URL is loopback and must never leave the machine.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    probe = url.replace("/viewer/?", "/api/filters?", 1)
    try:
        with opener.open(probe, timeout=args.timeout) as resp:
            live = resp.status == 200
    except (urllib.error.URLError, OSError):
        live = False
    if not live:
        print(f"opik-cipx: no gateway answers on port {port} with the current token "
              "(start it with `opik-cipx ensure-running`)", file=sys.stderr)
        return 1
    print(url)
    if args.open and not webbrowser.open(url):
        print("opik-cipx: could not launch a browser; open the URL above", file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from ..report import stats

    try:
        win = stats.window(args.window, args.since)
        conn = stats.open_readonly(settings.spool_path)
        try:
            rep = stats.report(conn, win, args.by)
        finally:
            conn.close()
    except stats.StatsError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    print(stats.dumps(rep) if args.json else stats.render_text(rep))
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import os
    from pathlib import Path

    from ..report import reconcile, stats

    projects = Path(os.path.expanduser("~")) / ".claude" / "projects"
    try:
        win = stats.window(args.window, args.since)
        conn = stats.open_readonly(settings.spool_path)
        try:
            results = reconcile.reconcile(conn, win, projects, session=args.session)
        finally:
            conn.close()
    except stats.StatsError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reconcile.to_json(results, win), indent=2))
    else:
        print(reconcile.render_text(results, win))
    return 0


def cmd_insights(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses
    import time

    from ..report import insights, stats

    now = time.time()
    prices = _prices(settings)
    try:
        # Default: the last 30 days, the window the users compare month to month.
        name = args.window if args.window or args.since else "month"
        win = stats.window(name, args.since, now=now)
        conn = stats.open_readonly(settings.spool_path)
        try:
            if args.project:
                project = os.path.abspath(os.path.expanduser(args.project))
                win = dataclasses.replace(win, label=f"{win.label}, project {project}",
                                          sessions=insights.project_sessions(conn, win, project))
            found = insights.insights(conn, win, now, prices)
        finally:
            conn.close()
    except stats.StatsError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(insights.dumps(found))
    elif args.markdown:
        print(insights.render_markdown(found))
    else:  # colour only for a person at a terminal: piped output stays plain
        print(insights.render_text(found, colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    return 0


def cmd_mcp_serve(args: argparse.Namespace, settings: Settings) -> int:
    # The MCP stdio server (mcp_server/): stdout is the protocol's, so nothing else prints there.
    from ..mcp_server import serve

    return serve(settings)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from ..capture import replay
    from ..report import stats

    prices = _prices(settings)
    reship = args.reship
    if reship and settings.opik_url is None:
        print("opik-cipx: no Opik destination is configured: replaying without re-shipping", file=sys.stderr)
        reship = False
    try:
        since = stats.window(None, args.since).since if args.since else None
        # A bar for a person watching (stderr, a TTY only): piped and scripted runs stay quiet.
        bar = _progress if sys.stderr.isatty() else None
        done = replay.run(settings, prices, since=since, session=args.session, reship=reship, progress=bar)
    except (stats.StatsError, replay.ReplayError) as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if bar is not None:
        print(file=sys.stderr)
    for error in done.errors:
        print(f"opik-cipx: replay: {error}", file=sys.stderr)
    print(json.dumps(done.to_json(), indent=2) if args.json else done.line())
    return 1 if done.failed else 0


def _progress(done: int, total: int) -> None:
    if done != total and done % 25:
        return  # a redraw every 25 calls is smooth enough and costs nothing
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def add_viewer_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..report.stats import GROUPS, WINDOWS

    p = sub.add_parser("viewer", help="print the local viewer's URL (with this start's token)")
    p.add_argument("--open", action="store_true", help="also open it in a browser")
    p.add_argument("--timeout", type=seconds, default=3.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_viewer)

    p = sub.add_parser("stats", help="totals, cost, cache-hit rate and breakdowns from the local spool")
    p.add_argument("window", nargs="?", metavar="WINDOW",
                   help=f"{'|'.join(WINDOWS)} (today, the last 7 or 30 days), an age like 3d or a date like 2026-05-01")
    p.add_argument("--since", metavar="WHEN", help="e.g. 3d, 12h, 2026-05-01 or 2026-05-01T09:30")
    p.add_argument("--by", choices=GROUPS, help="a per-group table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("insights", help="spend, where the tokens went and priced recommendations (default: 30 days)")
    p.add_argument("window", nargs="?", metavar="WINDOW", help="as for stats (default: month, the last 30 days)")
    p.add_argument("--since", metavar="WHEN", help="e.g. 3d, 12h or 2026-05-01")
    p.add_argument("--project", metavar="PATH", help="only sessions whose working directory is PATH or below")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--markdown", action="store_true", help="a short Markdown report (at most 40 lines)")
    p.set_defaults(func=cmd_insights)

    p = sub.add_parser("reconcile", help="what Claude Code's transcripts miss, against the calls on the wire")
    p.add_argument("window", nargs="?", metavar="WINDOW", help="as for stats (default: all time)")
    p.add_argument("--since", metavar="WHEN", help="e.g. 3d, 12h or 2026-05-01")
    p.add_argument("--session", metavar="ID", help="one session")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("mcp", help="the MCP server Claude Code talks to (session_cost, insights, explain_call)")
    mcp = p.add_subparsers(dest="mcp_command", required=True, metavar="SUBCOMMAND")
    p = mcp.add_parser("serve", help="serve MCP on stdin/stdout (the plugin registers this)")
    p.set_defaults(func=cmd_mcp_serve)

    p = sub.add_parser("replay", help="derive stored calls again with today's rules and prices (offline, idempotent)")
    p.add_argument("--since", metavar="WHEN", help="only calls since then: 3d, 12h or 2026-05-01")
    p.add_argument("--session", metavar="ID", help="only this session")
    p.add_argument("--reship", action="store_true",
                   help="queue their sessions' spans for Opik again (same ids: Opik updates them in place)")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    p.set_defaults(func=cmd_replay)
