"""Lifecycle commands: proxy, ensure-running, sync, restart, stop, hook, status, setup,
uninstall, purge, logs and doctor (ops/daemon.py, ops/supervisor.py, claude/)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from .args import count, seconds

if TYPE_CHECKING:
    from ..config import Settings


def cmd_proxy(args: argparse.Namespace, settings: Settings) -> int:
    from ..config import ensure_home
    from ..ops.daemon import GatewayLock, probe
    from ..proxy.heap import keep_freed_memory
    from ..server import install_uvloop, run

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import os

    # Whatever started us (a shell, systemd, a test), every file the gateway and its capture
    # worker create holds prompts or their traces: private to the user.
    os.umask(0o077)
    if settings.disabled:
        # The kill switch: a supervisor or a hook that still starts us gets a clean exit (no restart).
        logging.getLogger("opik_cipx").info("CIPX_DISABLED is set: not starting the gateway")
        return 0
    ensure_home(settings)
    # One gateway per state dir: the lock is held until this process exits.
    lock = GatewayLock(settings)
    if args.supervised:
        # Under systemd/launchd: a daemon-started gateway may hold the lock; wait and take over
        # when it exits, rather than failing into a restart loop.
        while not lock.acquire(timeout=5.0):
            pass
    elif not lock.acquire(timeout=3.0 if args.daemon else 0.5):
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

        asyncio.run(run(settings, on_ready=None if args.daemon or args.supervised else _banner))
    except OSError as exc:
        print(f"opik-cipx: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 3
    finally:
        lock.release()
    return 0


def _banner(settings: Settings, port: int) -> None:
    """What a person who just ran `opik-cipx proxy` needs next (a daemon's stdout is the log)."""
    from ..viewer import read_token, viewer_url

    base = f"http://127.0.0.1:{port}"
    lines = [f"opik-cipx: gateway listening on {base} -> {settings.upstream_url} (Ctrl-C stops it)",
             "  point Claude Code at it, in another terminal:",
             f"    export ANTHROPIC_BASE_URL={base}"]
    token = read_token(settings.home)
    if token:
        lines.append(f"  viewer: {viewer_url(port, token, settings.host)}")
    print("\n".join(lines), flush=True)


def cmd_ensure_running(args: argparse.Namespace, settings: Settings) -> int:
    from ..ops.daemon import DaemonError, ensure_running

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
    from ..ops.daemon import get_json

    health = get_json(port, "/_cipx/health") if port else None
    running = (health or {}).get("upstream")
    if running and running != settings.upstream_url:
        print(f"opik-cipx: note: the running gateway relays to {running}, not {settings.upstream_url} "
              "(CIPX_UPSTREAM_URL); run `opik-cipx restart` to switch", file=sys.stderr)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from ..claude.sync import sync, to_json

    if args.client == "codex":
        return cmd_setup_codex(args, settings)
    report = sync(settings, timeout=args.timeout)
    print(to_json(report) if args.json else "\n".join(f"opik-cipx: {line}" for line in report.lines))
    return 0 if report.ok else 1


def cmd_restart(args: argparse.Namespace, settings: Settings) -> int:
    from ..ops import supervisor
    from ..ops.daemon import DaemonError, ensure_running, stop

    try:
        print(f"opik-cipx: {stop(settings, timeout=args.timeout).message}")
        # Under a supervisor the unit brings it back; ensure-running waits for that or starts one.
        if supervisor.is_installed() and supervisor.user_manager_running():
            supervisor.install(settings, _gateway_command())
        live = ensure_running(settings, timeout=args.timeout or 10.0)
    except DaemonError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    print(f"opik-cipx: running (pid {live.pid}, http://127.0.0.1:{live.port})")
    return 0


def _gateway_command() -> list[str]:
    from ..claude.sync import gateway_command

    return gateway_command()


def cmd_tracing(args: argparse.Namespace, settings: Settings) -> int:
    """Write or remove the enablement marker, then say what now decides and how it resolved."""
    import os
    from pathlib import Path

    from ..ship.enablement import MARKER, Enablement

    home = Path(os.path.expanduser("~"))
    project = Path(args.project or os.getcwd())
    marker = (home if args.scope_global else project) / MARKER
    if args.state in ("on", "debug"):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("debug\n" if args.state == "debug" else "on\n")
        print(f"opik-cipx: wrote {marker} ({args.state})")
    elif args.state == "off":
        if args.scope_global:
            try:
                marker.unlink()
                print(f"opik-cipx: removed {marker}")
            except FileNotFoundError:
                print(f"opik-cipx: no {marker} to remove")
        else:
            # A project marker saying off wins over the environment and the global marker.
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("off\n")
            print(f"opik-cipx: wrote {marker} (off)")
    decision = Enablement(home, ttl=0).decide(str(project))
    state = ("on, with debug logging" if decision.debug else "on") if decision.enabled else "off"
    where = {"env": "OPIK_CC_TRACING_ENABLED in the environment", "default": "the default (off)"}.get(
        decision.source, decision.source.split(":", 1)[-1])
    print(f"opik-cipx: shipping to Opik for {project} is {state} (decided by {where})")
    if decision.enabled and settings.opik_url is None:
        print("opik-cipx: note: no Opik destination is configured, so spans stay in the local spool")
    return 0


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    from ..ops.daemon import DaemonError, stop

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

    from ..claude.hooks import bound_for, run_hook

    # Hard bound: whatever is stuck (stdin never closed, a lock, a dead port), leave in time.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.setitimer(signal.ITIMER_REAL, bound_for(args.event))
    real_stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    try:
        from ..config_load import load_settings

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
    from ..config import ensure_home
    from ..ops.daemon import LOG_NAME

    ensure_home(settings)
    handler = logging.FileHandler(settings.logs_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from ..ops.status import collect_status, render_status

    code, doc = collect_status(settings, timeout=args.timeout)
    print(json.dumps({"exit_code": code, **doc}, indent=2) if args.json else render_status(code, doc))
    if args.annotate:
        # A slash command's `!` line is one invocation: the meaning of the code goes in the text.
        meaning = {0: "running and healthy", 1: "not running", 2: "running but degraded, or not answering"}
        print(f"(opik-cipx status exit code {code}: {meaning.get(code, 'unknown')})")
        return 0
    return code


def cmd_setup_codex(args: argparse.Namespace, settings: Settings) -> int:
    """`setup --codex` and `sync codex`: gateway up, then Codex pointed at its port."""
    from ..codex import WiringError, codex_config_path, sync_codex
    from ..ops.daemon import DaemonError, ensure_running

    if args.dry_run:
        print(f"would start the gateway and set openai_base_url in {codex_config_path()}")
        return 0
    port = settings.port
    try:
        port = ensure_running(settings).port or port
    except DaemonError as exc:
        print(f"opik-cipx: gateway not started ({exc}); Codex pointed at port {port} anyway", file=sys.stderr)
    try:
        print(sync_codex(settings, port))
    except WiringError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "codex", False):
        return cmd_setup_codex(args, settings)
    import json
    from pathlib import Path

    from ..claude.provision import ProvisionError, Targets, settings_snippet, setup_plan

    try:
        from ..claude.doctor import MANAGED_SETTINGS, _managed_settings
        from ..claude.sync import wants_status_line

        wrap = args.apply and wants_status_line([d for _, d in _managed_settings(MANAGED_SETTINGS)])
        plan = setup_plan(settings, apply_settings=args.apply, binary=Path(args.binary) if args.binary else None,
                          status_line=wrap)
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
    from ..claude.provision import ProvisionError, uninstall_plan
    from ..ops.daemon import DaemonError, stop

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
    from ..codex import WiringError, unsync_codex

    try:  # before the state directory, which holds Codex's original config, goes
        codex = unsync_codex(settings)
    except WiringError as exc:
        print(f"opik-cipx: {exc}", file=sys.stderr)
        return 1
    if codex:
        print(codex)
    for line in plan.apply():
        print(line)
    for note in plan.notes:
        print(f"note: {note}")
    return 0


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    from ..ops.daemon import DaemonError, stop

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

    from ..ops.daemon import LOG_NAME

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

    from ..claude.provision import doctor

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


def add_lifecycle_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ensure-running", help="start the gateway in the background unless it is alive")
    p.add_argument("--timeout", type=seconds, default=10.0, help="seconds to wait for it to answer (default 10)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_ensure_running, strict_config=True)

    p = sub.add_parser("stop", help="stop the gateway gracefully (in-flight calls finish)")
    p.add_argument("--timeout", type=seconds, default=None, help="seconds before it is killed (default: grace + 5)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("sync", help="repair everything: gateway up, supervisor installed, Claude Code pointed at it",
                       description="Idempotent; prints what it changed. With CIPX_DISABLED=1 it takes the "
                                   "gateway out of Claude Code's path instead.")
    p.add_argument("client", nargs="?", choices=["claude", "codex"], default="claude",
                   help="claude (default): Claude Code; codex: point Codex's config.toml at the gateway")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=seconds, default=10.0, help="seconds to wait for the gateway to answer")
    p.set_defaults(func=cmd_sync, strict_config=True, dry_run=False)

    p = sub.add_parser("restart", help="stop gracefully and start again (picks up a new binary or settings)")
    p.add_argument("--timeout", type=seconds, default=None, help="seconds for each of stop and start")
    p.set_defaults(func=cmd_restart, strict_config=True)

    p = sub.add_parser("tracing", help="turn shipping to Opik on, off or to debug for this project (or --global)")
    p.add_argument("state", choices=["on", "off", "debug", "status"])
    p.add_argument("--global", dest="scope_global", action="store_true",
                   help="the marker in ~/.claude instead of the project's")
    p.add_argument("--project", metavar="DIR", help="the project (default: the current directory)")
    p.set_defaults(func=cmd_tracing)

    # Answered before argparse runs (cli/__init__.py); listed here for --help.
    p = sub.add_parser("statusline", help="Claude Code statusLine command: session cost, context, cache, plan windows")
    p.set_defaults(func=lambda args, settings: 0, no_settings=True)

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
    p.add_argument("--timeout", type=seconds, default=2.0, help="seconds the gateway gets to answer")
    p.add_argument("--annotate", action="store_true",
                   help="end with a line saying what the exit code means, and exit 0 (for slash commands)")
    p.set_defaults(func=cmd_status, quiet_config=True)

    p = sub.add_parser("setup", help="write Claude Code hook scripts; --apply also edits ~/.claude/settings.json")
    p.add_argument(
        "--apply", action="store_true", help="merge hooks and ANTHROPIC_BASE_URL into settings.json (backed up)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--binary", help="the opik-cipx binary the hook scripts should run")
    p.add_argument("--codex", action="store_true",
                   help="point Codex at the gateway (openai_base_url in ~/.codex/config.toml, the rest kept"
                        " byte for byte) and start the gateway")
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
    p.add_argument("-n", "--lines", type=count(0), default=50, help="lines from the end (default 50)")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("doctor", help="check the installation and say how to fix what is wrong")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor, quiet_config=True)
