"""The launcher script and the hook scripts ``setup`` writes around it.

The launcher (``plugin/cipx-launch`` in the repository, and the body of every
hook script setup writes) is rendered from :data:`LAUNCHER_BODY`, so the plugin
and the hand-provisioned hooks share one keep-alive fast path. Hook scripts
start with :data:`MARKER` on their first line; uninstall removes only files that
carry it, so hand-written hooks are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MARKER = "# opik-cipx managed hook -- written by `opik-cipx setup`, removed by `opik-cipx uninstall`"


@dataclass(frozen=True)
class HookSpec:
    """One Claude Code hook that setup wires to a managed script."""

    event: str  # Claude Code's hook event name
    cli_event: str  # `opik-cipx hook claude_code <cli_event>`
    matcher: str
    script: str  # file name under ~/.claude/hooks/


HOOKS: tuple[HookSpec, ...] = (
    HookSpec("SessionStart", "session-start", "startup|resume|clear|compact", "opik-cipx-session-start.sh"),
    HookSpec("PreToolUse", "pre-tool-use", "*", "opik-cipx-pre-tool-use.sh"),
)

INSTALL_HINT = (
    "opik-cipx: the opik-cipx binary was not found (looked in $CLAUDE_PLUGIN_ROOT/bin, PATH, "
    "~/.opik-cipx/bin, /usr/local/bin); this session is not being captured. Install it with "
    "/opik-cipx:install in Claude Code, or: "
    "curl -fsSL https://raw.githubusercontent.com/comet-ml/opik-cipx/main/install.sh | bash"
)

# Alive when the port file exists and the pidfile's process is the one that wrote it (same start
# time in clock ticks; pid alone where /proc is missing). Shared by the launcher and the
# status-line script.
ALIVE_FN = r"""cipx_alive() {
  [ -s "$cipx_home/port" ] && [ -r "$cipx_home/gateway.pid" ] || return 1
  read -r cipx_pid cipx_ticks cipx_rest < "$cipx_home/gateway.pid" || return 1
  [ -n "$cipx_pid" ] || return 1
  if [ -r "/proc/$cipx_pid/stat" ]; then
    read -r cipx_stat < "/proc/$cipx_pid/stat" || return 1
    set -- ${cipx_stat##*") "}
    [ "${20:-}" = "$cipx_ticks" ]
  else
    [ "$cipx_ticks" = "-" ] && kill -0 "$cipx_pid" 2>/dev/null
  fi
}
"""

# POSIX sh. The keep-alive fast path decides liveness with builtins only (no fork): the
# pidfile's pid must still have the start ticks it had when the gateway wrote it, so a
# reused pid does not count. Everything else goes to the binary, which bounds itself.
_LAUNCHER_TEMPLATE = (r"""cipx_home="${CIPX_HOME:-$HOME/.opik-cipx}"

# Keep-alive fast path: alive when the port file exists and the pidfile's process is the one
# that wrote it (same start time in clock ticks; pid alone where /proc is missing).
"""
+ ALIVE_FN
+ r"""
case "${1:-}:${2:-}:${3:-}" in
  hook:claude_code:pre-tool-use|hook:claude_code:user-prompt-submit)
    if cipx_alive; then cat >/dev/null 2>&1; exit 0; fi ;;
esac

cipx_find() {
  for cipx_c in "${OPIK_CIPX_BIN:-}" \
      "${CLAUDE_PLUGIN_ROOT:+$CLAUDE_PLUGIN_ROOT/bin/opik-cipx}" \
      "${CLAUDE_PLUGIN_ROOT:+$CLAUDE_PLUGIN_ROOT/bin/opik-cipx/opik-cipx}" \
      "$(command -v opik-cipx 2>/dev/null)" \
      "$HOME/.opik-cipx/bin/opik-cipx" \
      "$cipx_home/bin/opik-cipx" \
      /usr/local/bin/opik-cipx; do
    if [ -n "$cipx_c" ] && [ -f "$cipx_c" ] && [ -x "$cipx_c" ]; then
      printf '%s\n' "$cipx_c"
      return 0
    fi
  done
  return 1
}

__PLUGIN_INSTALL__if ! cipx_bin=$(cipx_find); then
  echo "__INSTALL_HINT__" >&2
  if [ "${1:-}" = hook ]; then cat >/dev/null 2>&1; fi
  exit 0
fi
if [ "${1:-}" = hook ]; then
  # A hook never fails the session: whatever the binary does, exit 0.
  "$cipx_bin" "$@" || :
  exit 0
fi
exec "$cipx_bin" "$@"
""").replace("__INSTALL_HINT__", INSTALL_HINT)

# The plugin launcher only: ``cipx-launch install [VERSION]``, what /opik-cipx:install runs. With
# the binary missing it runs the install.sh of the plugin's own checkout (beside plugin/), then
# `sync`. A slash command's `!` line is one invocation whose output the user reads, so it always
# exits 0 and ends with what each step's exit code meant; install.sh's progress (stderr) is shown.
PLUGIN_INSTALL = r"""if [ "${1:-}" = install ]; then
  shift
  if cipx_bin=$(cipx_find); then
    echo "opik-cipx is already installed: $cipx_bin ($("$cipx_bin" version 2>/dev/null || echo 'it does not run'))"
  else
    cipx_installer="$(cd "${0%/*}/.." 2>/dev/null && pwd)/install.sh"
    if [ ! -f "$cipx_installer" ]; then
      echo "opik-cipx: this plugin has no install.sh (looked for $cipx_installer). Install the binary by hand:"
      echo "curl -fsSL https://raw.githubusercontent.com/comet-ml/opik-cipx/main/install.sh | bash"
      exit 0
    fi
    echo "opik-cipx: the binary is missing; running $cipx_installer $*"
    cipx_rc=0
    bash "$cipx_installer" "$@" 2>&1 || cipx_rc=$?
    if [ "$cipx_rc" -ne 0 ] || ! cipx_bin=$(cipx_find); then
      echo "(opik-cipx install.sh exit code $cipx_rc: nothing was installed; the lines above say why)"
      exit 0
    fi
    echo "(opik-cipx install.sh exit code 0: installed $cipx_bin)"
  fi
  cipx_rc=0
  "$cipx_bin" sync 2>&1 || cipx_rc=$?
  echo "(opik-cipx sync exit code $cipx_rc$([ "$cipx_rc" -eq 0 ] || echo ': see `opik-cipx doctor`'))"
  exit 0
fi
"""
# What the hook scripts setup writes run: the launcher without the plugin's `install`.
LAUNCHER_BODY = _LAUNCHER_TEMPLATE.replace("__PLUGIN_INSTALL__", "")


def render_launcher() -> str:
    """``plugin/cipx-launch``: the plugin's hooks and ``/opik-cipx:status`` go through it."""
    return (
        "#!/bin/sh\n"
        "# opik-cipx plugin launcher: finds the opik-cipx binary and runs it. Generated from\n"
        "# opik_cipx/claude/launcher.py (LAUNCHER_BODY); edit it there, tests compare the two.\n"
        + _LAUNCHER_TEMPLATE.replace("__PLUGIN_INSTALL__", PLUGIN_INSTALL)
    )


def render_hook_script(spec: HookSpec, binary: Path | None) -> str:
    preset = f'OPIK_CIPX_BIN="${{OPIK_CIPX_BIN:-{binary}}}"\n' if binary is not None else ""
    return (
        f"{MARKER}\n"
        f"# Claude Code {spec.event} hook: runs `opik-cipx hook claude_code {spec.cli_event}` and always exits 0.\n"
        f"{preset}{LAUNCHER_BODY}"
    )


STATUSLINE_SCRIPT = "opik-cipx-statusline.sh"

# POSIX sh and builtins only: Claude Code runs the status line after every assistant message,
# and a Python start-up alone costs ~20 ms. The capture worker keeps the finished segment as the
# first line of sessions/<id>.status (capture/session_summary.py); the user's own status line,
# saved by setup, runs first. The session id is cut out of Claude Code's JSON with parameter
# expansion and must look like an id before it names a file.
STATUSLINE_BODY = (r"""cipx_home="${CIPX_HOME:-$HOME/.opik-cipx}"

"""
+ ALIVE_FN
+ r"""
cipx_in=$(cat)
if [ "${OPIK_CIPX_STATUSLINE:-}" != off ] && [ -s "$cipx_home/statusline-wrapped.sh" ]; then
  printf '%s' "$cipx_in" | sh "$cipx_home/statusline-wrapped.sh" 2>/dev/null
fi
[ "${OPIK_CIPX_STATUSLINE_DISPLAY:-1}" = 0 ] && exit 0
if ! cipx_alive; then
  echo "◆ opik-cipx offline"
  exit 0
fi
cipx_sid=${cipx_in#*'"session_id"'}
cipx_sid=${cipx_sid#*'"'}
cipx_sid=${cipx_sid%%'"'*}
case "$cipx_sid" in
  ''|.*|*[!A-Za-z0-9._-]*) echo "◆ no calls captured yet"; exit 0 ;;
esac
if [ -r "$cipx_home/sessions/$cipx_sid.status" ] && IFS= read -r cipx_line < "$cipx_home/sessions/$cipx_sid.status"
then
  printf '%s\n' "$cipx_line"
else
  echo "◆ no calls captured yet"
fi
exit 0
""")


def render_statusline_script() -> str:
    return (f"{MARKER}\n# Claude Code statusLine: the user's own line, then opik-cipx's segment.\n"
            f"{STATUSLINE_BODY}")


def is_managed(path: Path) -> bool:
    """True only for files whose first line is our marker."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(len(MARKER) + 4)
    except OSError:
        return False
    return first.rstrip(b"\r\n") == MARKER.encode()


def mentions_our_script(command: object) -> bool:
    """Whether a settings.json hook command runs one of our scripts (wherever the hooks dir is)."""
    return isinstance(command, str) and any(spec.script in command for spec in HOOKS)
