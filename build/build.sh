#!/usr/bin/env bash
# Builds the release archive for the platform it runs on:
#   dist/opik-cipx-<os>-<arch>.tar.gz  (one top-level dir `opik-cipx/`: the onedir bundle)
#   dist/SHA256SUMS                     (sha256sum format; lines for other platforms are kept)
#
# Usage: bash build/build.sh [VERSION]
#   VERSION defaults to $CIPX_BUILD_VERSION, else opik_cipx.__version__; a leading `v` is dropped
#   so a tag name (v0.2.0) can be passed as is.
# Environment:
#   PYTHON      interpreter for the throwaway build venv (default python3; must be >= 3.11)
#   CIPX_DIST   output dir (default <repo>/dist)
#   CIPX_WORK   scratch dir (default <repo>/build/work; wiped at start)
#
# Only PyPI (through pip and its usual configuration) is contacted. The venv holds the runtime
# dependencies from pyproject.toml plus PyInstaller, never the test or dev extras, so nothing
# but the gateway's own dependency closure can end up in the binary.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
dist=${CIPX_DIST:-$root/dist}
work=${CIPX_WORK:-$root/build/work}

die() { echo "build.sh: $*" >&2; exit 1; }

case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) die "unsupported OS $(uname -s): releases are built for linux and darwin" ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) die "unsupported architecture $(uname -m): releases are built for amd64 and arm64" ;;
esac

version=${1:-${CIPX_BUILD_VERSION:-}}
if [ -z "$version" ]; then
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/gateway/opik_cipx/__init__.py")
fi
version=${version#v}
[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z.+-]*$ ]] || die "bad version '$version'"

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$python is older than 3.11"

name="opik-cipx-$os-$arch"
started=$(date +%s)
echo "build.sh: building $name version $version" >&2

rm -rf "$work"
mkdir -p "$work" "$dist"

# A staged copy of the package with the version baked into __init__.py: the source tree is never
# rewritten, and the binary reports the release it ships in.
mkdir -p "$work/src"
cp -R "$root/gateway/opik_cipx" "$work/src/opik_cipx"
find "$work/src" -name __pycache__ -type d -prune -exec rm -rf {} +
init="$work/src/opik_cipx/__init__.py"
grep -q '^__version__ = ' "$init" || die "no __version__ line in gateway/opik_cipx/__init__.py"
sed "s/^__version__ = .*/__version__ = \"$version\"/" "$init" > "$init.new"
mv "$init.new" "$init"

# Runtime dependencies exactly as pyproject.toml declares them (markers included).
"$python" - "$root/pyproject.toml" > "$work/requirements.txt" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"]))
for spec in project["optional-dependencies"]["build"]:
    print(spec)
PY

"$python" -m venv "$work/venv"
venv_py="$work/venv/bin/python"
# pip's chatter goes to a log, shown only when the install fails.
"$venv_py" -m pip install --disable-pip-version-check -r "$work/requirements.txt" \
  > "$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; die "pip install of the build venv failed"; }

# PYTHONPATH as well as the spec's pathex: the spec's collect_* helpers import the package in a
# subprocess before Analysis runs.
CIPX_BUILD_SRC="$work/src" PYTHONPATH="$work/src" "$venv_py" -m PyInstaller \
  --noconfirm --clean --log-level WARN \
  --distpath "$work/pyi-dist" --workpath "$work/pyi-work" \
  "$root/build/opik-cipx.spec"

bundle="$work/pyi-dist/opik-cipx"
[ -x "$bundle/opik-cipx" ] || die "PyInstaller produced no $bundle/opik-cipx"

# The frozen binary must report the baked version before anything is published.
reported=$("$bundle/opik-cipx" version)
[ "$reported" = "opik-cipx $version" ] || die "frozen binary reports '$reported', expected 'opik-cipx $version'"

archive="$dist/$name.tar.gz"
tmp_archive="$archive.tmp"
# Owner/group normalised so the archive does not leak the builder's account.
if tar --version 2>/dev/null | grep -q 'GNU tar'; then
  tar -C "$work/pyi-dist" --owner=0 --group=0 --numeric-owner -czf "$tmp_archive" opik-cipx
else
  tar -C "$work/pyi-dist" --uid 0 --gid 0 -czf "$tmp_archive" opik-cipx
fi
mv "$tmp_archive" "$archive"

if command -v sha256sum >/dev/null 2>&1; then
  sum=$(cd "$dist" && sha256sum "$name.tar.gz")
else
  sum=$(cd "$dist" && shasum -a 256 "$name.tar.gz")
fi
# One line per platform: a maintainer builds on each platform into the same dist/ and uploads
# one SHA256SUMS covering them all.
sums="$dist/SHA256SUMS"
touch "$sums"
{ grep -v "  $name.tar.gz\$" "$sums" || true; echo "$sum"; } | sort -k2 > "$sums.tmp"
mv "$sums.tmp" "$sums"

# Report: archive size and cold `version` time (first run after extraction, from a fresh copy so
# the page cache holds nothing of it but what tar just wrote), then a warm median.
size=$(wc -c < "$archive" | tr -d ' ')
probe="$work/probe"
mkdir -p "$probe"
tar -C "$probe" -xzf "$archive"
timing=$("$python" - "$probe/opik-cipx/opik-cipx" <<'PY'
import statistics, subprocess, sys, time
exe = sys.argv[1]
def once() -> float:
    t = time.perf_counter()
    subprocess.run([exe, "version"], check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000
cold = once()
warm = statistics.median(once() for _ in range(5))
print(f"{cold:.0f} {warm:.0f}")
PY
)
rm -rf "$probe" "$work/venv"
read -r cold_ms warm_ms <<< "$timing"

echo "build.sh: $archive" >&2
echo "build.sh: size $((size / 1024 / 1024)) MiB ($size bytes; target <= 40 MiB)" >&2
echo "build.sh: 'opik-cipx version' cold ${cold_ms} ms, warm median ${warm_ms} ms (target <= 300 ms)" >&2
echo "build.sh: done in $(( $(date +%s) - started )) s" >&2
# Machine-readable summary on stdout for CI and tests.
printf 'archive=%s\nversion=%s\nsize_bytes=%s\ncold_version_ms=%s\nwarm_version_ms=%s\n' \
  "$archive" "$version" "$size" "$cold_ms" "$warm_ms"
