"""A local release mirror: GitHub-style release downloads and the releases API on 127.0.0.1.

``ReleaseMirror.publish`` lays out a release whose archive holds a stand-in binary (a bash
script in the PyInstaller onedir layout); a test can also copy a real build into ``root``.
The ``mirror`` fixture (tests/conftest.py) serves one from the test's tmp dir.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = "acme/opik-cipx"

# The stand-in binary: `version`, plus `ensure-running`/`stop` when the release has them. Its
# "gateway" is a sleep whose argv[0] names the version, recorded in $CIPX_HOME/gateway.pid like
# the real daemon's pidfile, so a test can tell which version is serving.
FAKE_BINARY = r"""#!/usr/bin/env bash
set -euo pipefail
v=@VERSION@
commands=" version proxy @COMMANDS@ "
home=${CIPX_HOME:-$HOME/.opik-cipx}
cmd=${1:-}
case "$commands" in *" $cmd "*) ;; *) echo "opik-cipx: invalid choice: '$cmd'" >&2; exit 2 ;; esac
if [ "${2:-}" = --help ]; then echo "usage: opik-cipx $cmd"; exit 0; fi
mkdir -p "$home"
echo "$v $cmd" >> "$home/calls.log"
alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' /proc/$1/stat | cut -c1)" != Z ]; }
case "$cmd" in
  version) echo "opik-cipx @REPORTED@" ;;
  ensure-running)
    if [ -f "$home/gateway.pid" ] && alive "$(cut -d' ' -f1 "$home/gateway.pid")"; then exit 0; fi
    nohup bash -c "exec -a opik-cipx-gateway-$v sleep 120" >/dev/null 2>&1 &
    echo "$! - 0" > "$home/gateway.pid" ;;
  stop)
    pid=$(cut -d' ' -f1 "$home/gateway.pid")
    kill -TERM "$pid"
    while alive "$pid"; do sleep 0.05; done
    rm -f "$home/gateway.pid" ;;
esac
"""


def fake_binary(version: str, *, commands: str = "ensure-running stop status", reported: str | None = None) -> bytes:
    text = FAKE_BINARY.replace("@VERSION@", version).replace("@COMMANDS@", commands)
    return text.replace("@REPORTED@", reported or version).encode()


def make_archive(binary: bytes) -> bytes:
    """A tar.gz laid out like the PyInstaller onedir bundle build/build.sh produces."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in (
            ("opik-cipx/opik-cipx", binary, 0o755),
            ("opik-cipx/_internal/base_library.zip", b"stand-in", 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class ReleaseMirror:
    """Serves <root>/<tag>/<file> under /dl/ and the releases API under /api/."""

    root: Path
    latest: str | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def release_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/dl"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def publish(
        self,
        version: str,
        platforms: tuple[str, ...] = ("linux-amd64",),
        *,
        commands: str = "ensure-running stop status",
        reported: str | None = None,
        sums: bool = True,
        omit_sum_for: tuple[str, ...] = (),
    ) -> Path:
        release = self.root / f"v{version}"
        release.mkdir(parents=True, exist_ok=True)
        lines = []
        for platform in platforms:
            name = f"opik-cipx-{platform}.tar.gz"
            data = make_archive(fake_binary(version, commands=commands, reported=reported))
            (release / name).write_bytes(data)
            if platform not in omit_sum_for:
                lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
        # A line for another platform, as a multi-platform release has.
        lines.append(f"{'0' * 64}  opik-cipx-other-os.tar.gz\n")
        if sums:
            (release / "SHA256SUMS").write_text("".join(sorted(lines)))
        return release

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@contextmanager
def serve_release_mirror(root: Path) -> Iterator[ReleaseMirror]:
    """Serve <root>/<tag>/<file> under /dl/ and the releases API under /api/ until the block ends."""
    state = ReleaseMirror(root=root)
    state.root.mkdir()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server dispatches GET to
            state.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            if self.path == f"/api/repos/{REPO}/releases/latest" and state.latest is not None:
                body = json.dumps({"tag_name": state.latest, "name": state.latest, "draft": False}).encode()
                self._answer(200, body, "application/json")
                return
            if self.path.startswith("/dl/"):
                target = (state.root / self.path[len("/dl/"):]).resolve()
                if target.is_file() and state.root.resolve() in target.parents:
                    self._answer(200, target.read_bytes(), "application/octet-stream")
                    return
            self._answer(404, b'{"message": "Not Found"}', "application/json")

        def _answer(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
