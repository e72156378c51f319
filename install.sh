#!/usr/bin/env bash
# Installs (or upgrades) the opik-cipx gateway binary from a GitHub release.
#
#   curl -fsSL https://raw.githubusercontent.com/comet-ml/opik-cipx/main/install.sh | bash
#   curl -fsSL .../install.sh | bash -s -- v0.2.0        # a pinned version
#
# Version: the first argument, else $CIPX_VERSION, else the latest release (GitHub releases API).
# Releases are tagged v<version>; `0.2.0` and `v0.2.0` mean the same release.
#
# Environment:
#   CIPX_REPO              owner/name of the GitHub repository (default comet-ml/opik-cipx)
#   CIPX_RELEASE_BASE_URL  where release files live, as <base>/<tag>/<file>
#                          (default https://github.com/$CIPX_REPO/releases/download); for mirrors
#   CIPX_API_BASE_URL      GitHub API base used to resolve "latest" (default https://api.github.com)
#   CIPX_INSTALL_DIR       where the `opik-cipx` entry point goes (default ~/.opik-cipx/bin)
#   CIPX_HOME              the gateway's state dir, to find a running gateway (default ~/.opik-cipx)
#   GH_TOKEN               sent as `Authorization: Bearer` (rate limits, private mirrors)
#
# Layout installed (what the plugin's launcher finds at ~/.opik-cipx/bin/opik-cipx):
#   $CIPX_INSTALL_DIR/opik-cipx -> .opik-cipx-releases/<version>-<stamp>/opik-cipx   (symlink)
#   $CIPX_INSTALL_DIR/.opik-cipx-releases/<version>-<stamp>/{opik-cipx,_internal/}   (the bundle)
# A new bundle is unpacked beside the old one and the entry point is swapped with one rename, so
# a reader sees either the old binary or the new one, never half of either. The previous bundle is
# kept for rollback; older ones are removed.
#
# Exit codes: 1 usage or local failure, 2 unsupported platform, 3 network failure,
# 4 release or file not found, 5 checksum missing or wrong (nothing is installed),
# 6 the downloaded binary does not run here.
set -euo pipefail

repo=${CIPX_REPO:-comet-ml/opik-cipx}
release_base=${CIPX_RELEASE_BASE_URL:-https://github.com/$repo/releases/download}
release_base=${release_base%/}
api_base=${CIPX_API_BASE_URL:-https://api.github.com}
api_base=${api_base%/}
install_dir=${CIPX_INSTALL_DIR:-$HOME/.opik-cipx/bin}
cipx_home=${CIPX_HOME:-$HOME/.opik-cipx}
token=${GH_TOKEN:-}

say() { printf 'opik-cipx install: %s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  printf 'opik-cipx install: error: %s\n' "$*" >&2
  exit "$code"
}

tmp=""
staging=""
cleanup() {
  [ -n "$staging" ] && rm -rf "$staging"
  [ -n "$tmp" ] && rm -rf "$tmp"
  return 0
}
trap cleanup EXIT

# --- platform ----------------------------------------------------------------------------------

detect_platform() {
  local kernel machine
  kernel=$(uname -s)
  machine=$(uname -m)
  case "$kernel" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) die 2 "unsupported operating system '$kernel': releases exist for Linux and macOS (Darwin)" ;;
  esac
  case "$machine" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die 2 "unsupported CPU architecture '$machine' on $kernel: releases exist for amd64 (x86_64) and arm64 (aarch64)" ;;
  esac
  # A shell under Rosetta reports x86_64 on Apple silicon; the native build is the right one.
  if [ "$os" = darwin ] && [ "$arch" = amd64 ] \
    && [ "$(sysctl -n sysctl.proc_translated 2>/dev/null || true)" = 1 ]; then
    arch=arm64
  fi
  if [ "$os" = linux ] && ldd --version 2>&1 | grep -qi musl; then
    die 2 "musl libc (e.g. Alpine) is not supported: the release binary is built against glibc"
  fi
}

# --- HTTP ---------------------------------------------------------------------------------------

# fetch URL OUT [accept-header]: prints the HTTP status (000 when no answer came) and returns 0 when
# it got one. The token goes through a header file, not argv, so it never shows in `ps`.
fetch() {
  local url=$1 out=$2 accept=${3:-}
  local args=(--silent --show-error --location --retry 2 --retry-delay 1 --connect-timeout 15
    --max-time 600 --output "$out" --write-out '%{http_code}')
  [ -n "$accept" ] && args+=(--header "Accept: $accept" --header "X-GitHub-Api-Version: 2022-11-28")
  [ -n "$token" ] && args+=(--header "@$tmp/auth-header")
  if [ "$downloader" = curl ]; then
    curl "${args[@]}" "$url" 2>"$tmp/curl.err" || true
    return 0
  fi
  # wget: no status code on stdout; tell "answered with an error" (exit 8) from "no answer".
  local wargs=(--quiet --tries=3 --timeout=15 --output-document="$out")
  [ -n "$accept" ] && wargs+=(--header="Accept: $accept")
  local rc=0
  WGETRC=$tmp/wgetrc wget "${wargs[@]}" "$url" 2>"$tmp/curl.err" || rc=$?
  case "$rc" in
    0) printf 200 ;;
    8) printf 404 ;; # an HTTP error status; wget does not say which
    *) printf 000 ;;
  esac
}

# download URL OUT WHAT: fetch or die with a message that says which of network/404/HTTP failed.
download() {
  local url=$1 out=$2 what=$3 status
  status=$(fetch "$url" "$out")
  case "$status" in
    200) return 0 ;;
    000) die 3 "network failure downloading $what from $url: $(tr -d '\r' <"$tmp/curl.err" | tail -n 1)" ;;
    404) return 44 ;;
    401 | 403) die 3 "$url answered HTTP $status downloading $what (set GH_TOKEN if the repository is private or rate-limited)" ;;
    *) die 3 "$url answered HTTP $status downloading $what" ;;
  esac
}

resolve_latest() {
  local url="$api_base/repos/$repo/releases/latest" status
  status=$(fetch "$url" "$tmp/latest.json" application/vnd.github+json)
  case "$status" in
    200) ;;
    000) die 3 "network failure asking $url for the latest release: $(tr -d '\r' <"$tmp/curl.err" | tail -n 1)" ;;
    404) die 4 "no published release found for $repo ($url answered 404)" ;;
    401 | 403) die 3 "$url answered HTTP $status (rate-limited? set GH_TOKEN)" ;;
    *) die 3 "$url answered HTTP $status" ;;
  esac
  tag=$(tr -d '\n' <"$tmp/latest.json" | sed -n 's/.*"tag_name"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
  [ -n "$tag" ] || die 3 "could not read tag_name from $url"
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  elif command -v openssl >/dev/null 2>&1; then
    openssl dgst -sha256 -r "$1" | cut -d' ' -f1
  else
    die 1 "need sha256sum, shasum or openssl to verify the download"
  fi
}

# --- running gateway ----------------------------------------------------------------------------

# Prints the pid of a live gateway named by $CIPX_HOME/gateway.pid, or nothing. The command line
# must mention opik-cipx so a pid reused by an unrelated process is never signalled.
gateway_pid() {
  local pidfile="$cipx_home/gateway.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cut -d' ' -f1 <"$pidfile" 2>/dev/null || true)
  case "$pid" in '' | *[!0-9]*) return 0 ;; esac
  is_alive "$pid" || return 0
  local cmdline
  if [ -r "/proc/$pid/cmdline" ]; then
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  else
    cmdline=$(ps -o command= -p "$pid" 2>/dev/null || true)
  fi
  case "$cmdline" in *opik-cipx* | *opik_cipx*) printf '%s' "$pid" ;; esac
}

has_command() { # has_command BINARY SUBCOMMAND: argparse exits 0 on `sub --help` only when it exists
  [ -x "$1" ] && "$1" "$2" --help >/dev/null 2>&1
}

stop_gateway() {
  local pid=$1 bin
  for bin in "$new_bin" "$old_bin"; do
    if [ -n "$bin" ] && has_command "$bin" stop; then
      if "$bin" stop >/dev/null 2>"$tmp/stop.err"; then
        say "stopped the running gateway (pid $pid) with 'opik-cipx stop'"
        wait_gone "$pid" && return 0
      fi
      break
    fi
  done
  say "stopping the running gateway (pid $pid) with SIGTERM"
  kill -TERM "$pid" 2>/dev/null || return 0
  wait_gone "$pid" || say "warning: gateway pid $pid is still running after 30 s; it keeps serving the old version"
}

# Alive and not a zombie: a detached gateway's parent is init, which may be slow to reap it (or,
# in a container whose pid 1 is not an init, never reap it).
is_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  if [ -r "/proc/$1/stat" ]; then
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
  else
    state=$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)
  fi
  [ "$state" != Z ]
}

wait_gone() { # up to 30 s: the gateway lets in-flight streams finish before it exits
  local pid=$1 i
  for i in $(seq 1 300); do
    is_alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# --- main ---------------------------------------------------------------------------------------

[ $# -le 1 ] || die 1 "usage: install.sh [VERSION]"
case "${1:-}" in -h | --help)
  if [ -f "$0" ]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; else echo "usage: install.sh [VERSION]"; fi
  exit 0
  ;;
esac

detect_platform
if command -v curl >/dev/null 2>&1; then
  downloader=curl
elif command -v wget >/dev/null 2>&1; then
  downloader=wget
else
  die 1 "need curl or wget to download the release"
fi
command -v tar >/dev/null 2>&1 || die 1 "need tar to unpack the release"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/opik-cipx-install.XXXXXX")
if [ -n "$token" ]; then
  (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$tmp/auth-header" \
    && printf 'header = Authorization: Bearer %s\n' "$token" >"$tmp/wgetrc")
else
  : >"$tmp/wgetrc"
fi

requested=${1:-${CIPX_VERSION:-latest}}
if [ "$requested" = latest ]; then
  resolve_latest
  say "latest release of $repo is $tag"
else
  tag="v${requested#v}"
fi
version=${tag#v}
[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z.+-]*$ ]] || die 1 "not a version: '$requested'"

asset="opik-cipx-$os-$arch.tar.gz"
say "downloading $asset ($tag) from $release_base/$tag/"
download "$release_base/$tag/$asset" "$tmp/$asset" "$asset" \
  || die 4 "release $tag has no $asset ($release_base/$tag/$asset answered 404): check the version exists and has a $os-$arch build"
download "$release_base/$tag/SHA256SUMS" "$tmp/SHA256SUMS" SHA256SUMS \
  || die 5 "release $tag has no SHA256SUMS: refusing to install an archive that cannot be verified"

# sha256sum format: "<hex>  <name>" or "<hex> *<name>".
expected=$(awk -v f="$asset" '$2 == f || $2 == "*" f { print tolower($1); exit }' "$tmp/SHA256SUMS")
[ -n "$expected" ] || die 5 "SHA256SUMS of $tag has no line for $asset: refusing to install an unverified archive"
actual=$(sha256_of "$tmp/$asset")
[ "$actual" = "$expected" ] \
  || die 5 "checksum mismatch for $asset: SHA256SUMS says $expected, the download is $actual; nothing was installed"
say "checksum verified ($actual)"

# Unpack beside the installed bundles (same filesystem, so the final moves are renames).
if [ -z "${CIPX_INSTALL_DIR:-}" ] && [ ! -d "$HOME/.opik-cipx" ]; then
  # The default install dir lives inside the gateway's state dir, which holds captured prompts.
  mkdir -p -m 700 "$HOME/.opik-cipx"
fi
releases="$install_dir/.opik-cipx-releases"
mkdir -p "$releases" || die 1 "cannot create $releases"
staging=$(mktemp -d "$releases/.staging.XXXXXX")
tar -xzf "$tmp/$asset" -C "$staging" || die 1 "cannot unpack $asset"
[ -f "$staging/opik-cipx/opik-cipx" ] && [ -x "$staging/opik-cipx/opik-cipx" ] \
  || die 1 "$asset does not contain opik-cipx/opik-cipx"

# The binary must run on this machine and be the version the release claims, before anything the
# user relies on changes.
reported=$("$staging/opik-cipx/opik-cipx" version 2>"$tmp/version.err") \
  || die 6 "the downloaded binary does not run on this machine: $(tail -n 3 "$tmp/version.err")"
[ "$reported" = "opik-cipx $version" ] \
  || die 6 "release $tag contains '$reported', expected 'opik-cipx $version'; not installed"

entry="$install_dir/opik-cipx"
if [ -d "$entry" ] && [ ! -L "$entry" ]; then
  die 1 "$entry is a directory; move it away and run the installer again"
fi
old_bin=""
old_dir=""
if [ -x "$entry" ]; then
  old_bin=$entry
  if [ -L "$entry" ]; then
    old_target=$(readlink "$entry")
    case "$old_target" in .opik-cipx-releases/*/opik-cipx)
      old_dir=${old_target#.opik-cipx-releases/}
      old_dir=${old_dir%/opik-cipx}
      # The running gateway is stopped with the binary it was started from, if the new one can't.
      old_bin="$releases/$old_dir/opik-cipx"
      ;;
    esac
  fi
fi

name="$version-$(date +%Y%m%dT%H%M%S)-$$"
mv "$staging/opik-cipx" "$releases/$name"
rm -rf "$staging"
staging=""
new_bin="$releases/$name/opik-cipx"

# Swap the entry point with one rename: readers see the old binary or the new one.
ln -s ".opik-cipx-releases/$name/opik-cipx" "$install_dir/.opik-cipx.new.$$"
mv -f "$install_dir/.opik-cipx.new.$$" "$entry"

# A gateway started from the old bundle keeps running old code until it is restarted.
running=$(gateway_pid)
restarted=""
if [ -n "$running" ]; then
  stop_gateway "$running"
  if has_command "$entry" ensure-running; then
    if "$entry" ensure-running >/dev/null 2>"$tmp/ensure.err"; then
      restarted="gateway restarted on $version (was pid $running)"
    else
      say "warning: 'opik-cipx ensure-running' failed: $(tail -n 3 "$tmp/ensure.err")"
    fi
  else
    say "this version has no 'ensure-running'; start the gateway again with: $entry proxy"
  fi
fi

# Keep the new bundle and the one it replaced (rollback: point the symlink back); drop the rest.
for dir in "$releases"/*; do
  [ -d "$dir" ] || continue
  base=$(basename "$dir")
  [ "$base" = "$name" ] || [ "$base" = "$old_dir" ] || rm -rf "$dir"
done

say "installed opik-cipx $version: $entry"
[ -n "$restarted" ] && say "$restarted"
on_path=""
case ":$PATH:" in *":$install_dir:"*) on_path=1 ;; esac
{
  echo
  echo "Next steps:"
  if [ -z "$on_path" ]; then
    echo "  export PATH=\"$install_dir:\$PATH\"   # add this line to your shell profile"
  fi
  echo "  opik-cipx setup          # hooks for Claude Code and the settings.json snippet (--apply writes it)"
  echo "  opik-cipx version        # prints: opik-cipx $version"
} >&2
