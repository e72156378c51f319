#!/usr/bin/env bash
# Installs everything the suite needs (PyPI, npm, Debian) and runs the whole suite.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,build]'

# Static gates first (config in pyproject.toml): a lint or type error fails the run before
# the slow suite starts. set -e stops the script on either.
.venv/bin/ruff check gateway tests bench
.venv/bin/mypy

# The real Claude Code CLI is the client in end-to-end tests.
export CIPX_TEST_CLAUDE_PREFIX="${CIPX_TEST_CLAUDE_PREFIX:-$root/.cache/claude-code}"
if [ ! -x "$CIPX_TEST_CLAUDE_PREFIX/node_modules/.bin/claude" ]; then
  npm install --silent --no-audit --no-fund --prefix "$CIPX_TEST_CLAUDE_PREFIX" @anthropic-ai/claude-code
fi

# Headless Chromium for the viewer tests; network namespaces for isolated e2e runs; tmux to
# drive Claude Code interactively.
need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)  # the interactive Claude Code status-line test
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

exec .venv/bin/python -m pytest "$@"
