"""``opik-cipx`` command line: each command builds Settings, makes one call, renders.

Business logic lives in the modules the commands call; this file only parses
arguments, builds the one Settings object and turns results into text and
exit codes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__

# pydantic and asyncio cost ~100 ms each to import: commands import what they use, so
# `version` and the hooks' fast paths pay for neither.
if TYPE_CHECKING:
    from .config import Settings


def _settings() -> Settings:
    from pydantic import ValidationError

    from .config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        lines = ["opik-cipx: invalid configuration:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            lines.append(f"  {where}: {err.get('msg')}")
        raise SystemExit("\n".join(lines)) from None
    except ValueError as exc:  # a config file that does not parse names itself in the message
        raise SystemExit(f"opik-cipx: invalid configuration: {exc}") from None


def cmd_proxy(args: argparse.Namespace, settings: Settings) -> int:
    from .config import ensure_home
    from .ops.daemon import GatewayLock, probe
    from .proxy.heap import keep_freed_memory
    from .server import install_uvloop, run

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ensure_home(settings)
    # One gateway per state dir: the lock is held until this process exits.
    lock = GatewayLock(settings)
    if not lock.acquire(timeout=3.0 if args.daemon else 0.5):
        holder = probe(settings).pid
        if args.daemon:
            logging.getLogger("opik_cipx").info("another gateway (pid %s) holds the lock; not starting", holder)
            return 0
        print(f"opik-cipx: a gateway is already running (pid {holder or '?'}); `opik-cipx stop` first", file=sys.stderr)
        return 1
    install_uvloop()
    keep_freed_memory()
    try:
        import asyncio

        asyncio.run(run(settings))
    except OSError as exc:
        print(f"opik-cipx: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    finally:
        lock.release()
    return 0


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    from .pricing import PriceTable, PricingFileError
    from .report.explain import ExplainError, open_spool, resolve_ids, write

    try:
        prices = PriceTable.load(settings.pricing_file)
    except PricingFileError as exc:
        print(f"opik-cipx: ignoring pricing overrides: {exc}", file=sys.stderr)
        prices = PriceTable.builtin()
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


# --- lifecycle, hooks and provisioning (ops/daemon.py, claude/hooks.py, claude/provision.py, claude/doctor.py) ---


def cmd_ensure_running(args: argparse.Namespace, settings: Settings) -> int:
    from .ops.daemon import DaemonError, ensure_running

    try:
        live = ensure_running(settings, timeout=args.timeout)
    except DaemonError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"opik-cipx: running (pid {live.pid}, http://127.0.0.1:{live.port})")
    return 0


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    from .ops.daemon import DaemonError, stop

    try:
        result = stop(settings, timeout=args.timeout)
    except DaemonError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 2
    print(f"opik-cipx: {result.message}")
    return 0


def cmd_hook(args: argparse.Namespace, settings: Settings | None) -> int:
    """Always 0, nothing on stdout, bounded in time; settings are built inside the guard."""
    import os
    import signal

    from .claude.hooks import bound_for, run_hook

    # Hard bound: whatever is stuck (stdin never closed, a lock, a dead port), leave in time.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.setitimer(signal.ITIMER_REAL, bound_for(args.event))
    real_stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    try:
        from .config import Settings

        # Built here, not by main(): a bad config must not make the hook fail the session.
        settings = Settings()
        _log_to_file(settings)
        raw = sys.stdin.buffer.read(1024 * 1024) if sys.stdin is not None else b""
        return run_hook(args.event, raw, settings, os.environ) if args.agent == "claude_code" else 0
    except BaseException as exc:  # noqa: BLE001 - a hook must not fail the session
        print(f"opik-cipx hook: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    finally:
        sys.stdout = real_stdout


def _log_to_file(settings: Settings) -> None:
    from .config import ensure_home
    from .ops.daemon import LOG_NAME

    ensure_home(settings)
    handler = logging.FileHandler(settings.logs_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .ops.status import collect_status, render_status

    code, doc = collect_status(settings, timeout=args.timeout)
    print(json.dumps({"exit_code": code, **doc}, indent=2) if args.json else render_status(code, doc))
    return code


def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    import json
    from pathlib import Path

    from .claude.provision import ProvisionError, Targets, settings_snippet, setup_plan

    try:
        plan = setup_plan(settings, apply_settings=args.apply, binary=Path(args.binary) if args.binary else None)
    except ProvisionError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    print(plan.describe())
    if args.dry_run:
        return 0
    plan.apply()
    if not args.apply:
        targets = Targets.of(settings)
        print(f"\nAdd this to {targets.settings_path} (or run `opik-cipx setup --apply`):")
        print(json.dumps(settings_snippet(settings, targets), indent=2))
    return 0


def cmd_uninstall(args: argparse.Namespace, settings: Settings) -> int:
    from .claude.provision import ProvisionError, uninstall_plan
    from .ops.daemon import DaemonError, stop

    def stop_gateway() -> str:
        try:
            return f"stop the gateway: {stop(settings).message}"
        except DaemonError as exc:
            return f"stop the gateway: {exc}"

    try:
        plan = uninstall_plan(settings, stop=stop_gateway)
    except ProvisionError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(plan.describe())
        return 0
    for line in plan.apply():
        print(line)
    for note in plan.notes:
        print(f"note: {note}")
    return 0


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    from .ops.daemon import DaemonError, stop

    if not args.yes:
        if not sys.stdin.isatty():
            print("opik-cipx: purge deletes every captured call; pass --yes to confirm", file=sys.stderr)
            return 1
        answer = input(f"Stop the gateway and delete the local spool in {settings.spool_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("opik-cipx: nothing deleted")
            return 1
    try:
        print(f"opik-cipx: {stop(settings).message}")
    except DaemonError as exc:
        print(f"opik-cipx: {exc}; not deleting a spool a gateway may be writing", file=sys.stderr)
        return 2
    removed = 0
    for path in sorted(settings.spool_dir.glob("*")) if settings.spool_dir.is_dir() else []:
        if path.is_file():
            path.unlink()
            removed += 1
    print(f"opik-cipx: removed {removed} spool file(s) from {settings.spool_dir}")
    return 0


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    import time
    from collections import deque

    from .ops.daemon import LOG_NAME

    path = settings.logs_dir / LOG_NAME
    if not path.exists():
        print(f"opik-cipx: no log yet at {path}", file=sys.stderr)
        if not args.follow:
            return 1
    try:
        with open(path, "a+", errors="replace") as fh:
            fh.seek(0)
            for line in deque(fh, maxlen=max(0, args.lines)):
                sys.stdout.write(line)
            sys.stdout.flush()
            while args.follow:
                line = fh.readline()
                if line:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                else:
                    time.sleep(0.25)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .claude.provision import doctor

    checks = doctor(settings)
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [c.to_json() for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"[{c.status:>4}] {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                print(f"       fix: {c.fix}")
    return 1 if failed else 0


def _add_lifecycle_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ensure-running", help="start the gateway in the background unless it is alive")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for it to answer (default 10)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_ensure_running)

    p = sub.add_parser("stop", help="stop the gateway gracefully (in-flight calls finish)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before it is killed (default: grace + 5)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("hook", help="Claude Code hook entry point (reads the hook JSON on stdin)")
    p.add_argument("agent", choices=["claude_code"])
    p.add_argument("event", help="session-start | pre-tool-use | user-prompt-submit")
    p.set_defaults(func=cmd_hook, no_settings=True)

    p = sub.add_parser(
        "status",
        help="is the gateway running, and what has it done",
        description="Exit codes: 0 running and healthy; 1 not running; 2 running but degraded or wedged.",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds the gateway gets to answer")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("setup", help="write Claude Code hook scripts; --apply also edits ~/.claude/settings.json")
    p.add_argument(
        "--apply", action="store_true", help="merge hooks and ANTHROPIC_BASE_URL into settings.json (backed up)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--binary", help="the opik-cipx binary the hook scripts should run")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("uninstall", help="stop, remove what setup added and the state directory")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("purge", help="stop the gateway and delete the local spool")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("logs", help="print the gateway log")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines from the end (default 50)")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("doctor", help="check the installation and say how to fix what is wrong")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


# --- viewer and local analytics (viewer/, stats.py) ---


def cmd_viewer(args: argparse.Namespace, settings: Settings) -> int:
    import urllib.error
    import urllib.request
    import webbrowser

    from .viewer import read_token, viewer_url

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
    from .report import stats

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


def _add_viewer_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .report.stats import GROUPS, WINDOWS

    p = sub.add_parser("viewer", help="print the local viewer's URL (with this start's token)")
    p.add_argument("--open", action="store_true", help="also open it in a browser")
    p.add_argument("--timeout", type=float, default=3.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_viewer)

    p = sub.add_parser("stats", help="totals, cost, cache-hit rate and breakdowns from the local spool")
    p.add_argument("window", nargs="?", choices=WINDOWS, help="today, the last 7 days or the last 30 days")
    p.add_argument("--since", metavar="WHEN", help="e.g. 3d, 12h, 2026-05-01 or 2026-05-01T09:30")
    p.add_argument("--by", choices=GROUPS, help="a per-group table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stats)


def cmd_capture_worker(args: argparse.Namespace, settings: Settings | None) -> int:
    from .capture.worker import main as worker_main

    return worker_main()


def cmd_version(args: argparse.Namespace, settings: Settings | None) -> int:
    print(f"opik-cipx {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opik-cipx", description="Where did my Claude Code tokens go?")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("proxy", help="run the gateway in the foreground")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)  # how ensure-running starts it
    p.set_defaults(func=cmd_proxy)
    _add_lifecycle_commands(sub)

    p = sub.add_parser("explain", help="where a stored call's bytes, tokens and cost went")
    p.add_argument("ids", nargs="*", metavar="CALL_ID", help="call ids (a unique prefix is enough)")
    p.add_argument("--last", type=int, metavar="N", help="the newest N LLM calls (default 1 without ids)")
    p.add_argument("--json", action="store_true", help="JSON with the regions over the stored raw body")
    p.set_defaults(func=cmd_explain)
    _add_viewer_commands(sub)

    # Started by the gateway itself: batches of finished calls on stdin, summaries on stdout.
    p = sub.add_parser("capture-worker", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_capture_worker, no_settings=True)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, no_settings=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Commands registered with no_settings=True get None: they build their own, or need none.
    settings = None if getattr(args, "no_settings", False) else _settings()
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
