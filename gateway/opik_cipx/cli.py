"""``opik-cipx`` command line: each command builds Settings, makes one call, renders.

Business logic lives in the modules the commands call; this file only parses
arguments, builds the one Settings object and turns results into text and
exit codes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import __version__

# pydantic and asyncio cost ~100 ms each to import: commands import what they use, so
# `version` and the hooks' fast paths pay for neither.
if TYPE_CHECKING:
    from .config import Settings


def _seconds(text: str) -> float:
    """A timeout flag: a positive number of seconds (0 or less would mean "kill at once")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "count"
    return parse


def _settings(strict: bool, quiet: bool = False) -> Settings:
    """Settings for one command. A bad value never stops a command that can run without it:
    only the commands that start or wire a gateway (``strict``) refuse a bad port, upstream
    or bind address; a bad Opik setting anywhere means local-only, said on stderr."""
    from .config_load import ConfigError, load_settings

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

        asyncio.run(run(settings, on_ready=None if args.daemon else _banner))
    except OSError as exc:
        print(f"opik-cipx: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    finally:
        lock.release()
    return 0


def _banner(settings: Settings, port: int) -> None:
    """What a person who just ran `opik-cipx proxy` needs next (a daemon's stdout is the log)."""
    from .viewer import read_token, viewer_url

    base = f"http://127.0.0.1:{port}"
    lines = [f"opik-cipx: gateway listening on {base} -> {settings.upstream_url} (Ctrl-C stops it)",
             "  point Claude Code at it, in another terminal:",
             f"    export ANTHROPIC_BASE_URL={base}"]
    token = read_token(settings.home)
    if token:
        lines.append(f"  viewer: {viewer_url(port, token, settings.host)}")
    print("\n".join(lines), flush=True)


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from .pricing import PriceTable, PricingFileError
    from .report.explain import ExplainError, explain, open_spool, render_text, to_json

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
        # Always a list, however many calls: scripts should not have to check the shape.
        print(json.dumps([to_json(ex, attr) for ex, attr in results], indent=2))
    else:
        print("\n\n".join(render_text(ex, attr) for ex, attr in results))
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
    _say_if_upstream_differs(settings, live.port)
    return 0


def _say_if_upstream_differs(settings: Settings, port: int | None) -> None:
    """A gateway started earlier keeps the upstream it started with; say so when it is not the one asked."""
    from .ops.daemon import get_json

    health = get_json(port, "/_cipx/health") if port else None
    running = (health or {}).get("upstream")
    if running and running != settings.upstream_url:
        print(f"opik-cipx: note: the running gateway relays to {running}, not {settings.upstream_url} "
              "(CIPX_UPSTREAM_URL); run `opik-cipx restart` to switch", file=sys.stderr)


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
        from .config_load import load_settings

        # Built here, not by main(): a bad config must not make the hook fail the session,
        # and a bad Opik setting must not keep the gateway from starting (it runs local-only).
        settings = load_settings()
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
    if args.annotate:
        # A slash command's `!` line is one invocation: the meaning of the code goes in the text.
        meaning = {0: "running and healthy", 1: "not running", 2: "running but degraded, or not answering"}
        print(f"(opik-cipx status exit code {code}: {meaning.get(code, 'unknown')})")
        return 0
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
        plan = uninstall_plan(settings, stop=stop_gateway, keep_data=args.keep_data)
    except ProvisionError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(plan.describe())
        return 0
    if not args.yes and not args.keep_data and settings.spool_path.exists():
        # Like purge: every captured call goes with it, so a person confirms or a script says so.
        if not sys.stdin.isatty():
            print("opik-cipx: uninstall deletes every captured call in the local spool; pass --yes to confirm, "
                  "or --keep-data to keep them", file=sys.stderr)
            return 1
        print(plan.describe())
        answer = input("Uninstall opik-cipx and delete its captured calls? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("opik-cipx: nothing changed")
            return 1
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
        while not path.exists():  # --follow before the first start: wait for the gateway to write it
            time.sleep(0.25)
        # Read-only: `logs` must work on a read-only state dir (a mounted backup, another user's).
        with open(path, errors="replace") as fh:
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
    p.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for it to answer (default 10)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_ensure_running, strict_config=True)

    p = sub.add_parser("stop", help="stop the gateway gracefully (in-flight calls finish)")
    p.add_argument("--timeout", type=_seconds, default=None, help="seconds before it is killed (default: grace + 5)")
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
    p.add_argument("--timeout", type=_seconds, default=2.0, help="seconds the gateway gets to answer")
    p.add_argument("--annotate", action="store_true",
                   help="end with a line saying what the exit code means, and exit 0 (for slash commands)")
    p.set_defaults(func=cmd_status, quiet_config=True)

    p = sub.add_parser("setup", help="write Claude Code hook scripts; --apply also edits ~/.claude/settings.json")
    p.add_argument(
        "--apply", action="store_true", help="merge hooks and ANTHROPIC_BASE_URL into settings.json (backed up)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--binary", help="the opik-cipx binary the hook scripts should run")
    p.set_defaults(func=cmd_setup, strict_config=True)

    p = sub.add_parser("uninstall", help="stop, remove what setup added and the gateway's files")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask before deleting the captured calls")
    p.add_argument("--keep-data", action="store_true", help="keep the spool (captured calls) and logs")
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("purge", help="stop the gateway and delete the local spool")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("logs", help="print the gateway log")
    p.add_argument("-n", "--lines", type=_count(0), default=50, help="lines from the end (default 50)")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("doctor", help="check the installation and say how to fix what is wrong")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor, quiet_config=True)


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
    p.add_argument("--timeout", type=_seconds, default=3.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_viewer)

    p = sub.add_parser("stats", help="totals, cost, cache-hit rate and breakdowns from the local spool")
    p.add_argument("window", nargs="?", metavar="WINDOW",
                   help=f"{'|'.join(WINDOWS)} (today, the last 7 or 30 days), an age like 3d or a date like 2026-05-01")
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
    parser.add_argument("--version", action="version", version=f"opik-cipx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("proxy", help="run the gateway in the foreground")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)  # how ensure-running starts it
    p.set_defaults(func=cmd_proxy, strict_config=True)
    _add_lifecycle_commands(sub)

    p = sub.add_parser("explain", help="where a stored call's bytes, tokens and cost went")
    p.add_argument("ids", nargs="*", metavar="CALL_ID", help="call ids (a unique prefix is enough)")
    p.add_argument("--last", type=_count(1), metavar="N", help="the newest N LLM calls (default 1 without ids)")
    p.add_argument("--json", action="store_true", help="JSON with the regions over the stored raw body")
    p.set_defaults(func=cmd_explain)
    _add_viewer_commands(sub)

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


if __name__ == "__main__":
    raise SystemExit(main())
