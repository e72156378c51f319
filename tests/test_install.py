"""install.sh against a local release mirror and a fake GitHub releases API on 127.0.0.1.

The archives hold a stand-in binary (a bash script in the onedir layout) so these tests pin down
the installer itself -- platform detection, version resolution, verification, atomic layout,
restart of a running gateway -- in seconds; tests/test_frozen.py installs the real frozen build.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.release import REPO, ReleaseMirror, fake_binary, make_archive

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SH = ROOT / "install.sh"
TOKEN = "ghp_test_token_123"

# install.sh runs for real (downloads, stand-in gateways started and stopped): slow as a module.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None, reason="install.sh tests need curl")]


@dataclass
class Installer:
    home: Path
    cipx_home: Path
    install_dir: Path
    env: dict[str, str]

    @property
    def entry(self) -> Path:
        return self.install_dir / "opik-cipx"

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        merged = {**self.env, **env}
        return subprocess.run(
            ["bash", str(INSTALL_SH), *args], env=merged, capture_output=True, text=True, timeout=90
        )

    def installed_version(self) -> str:
        out = subprocess.run([str(self.entry), "version"], env=self.env, capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def gateway_pid(self) -> int | None:
        pidfile = self.cipx_home / "gateway.pid"
        if not pidfile.exists():
            return None
        return int(pidfile.read_text().split()[0])

    def calls(self) -> list[str]:
        log = self.cipx_home / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


@pytest.fixture
def installer(tmp_path: Path, isolated_home: Path, mirror: ReleaseMirror) -> Iterator[Installer]:
    cipx_home = isolated_home / ".opik-cipx"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(isolated_home),
        "CIPX_HOME": str(cipx_home),
        "CIPX_REPO": REPO,
        "CIPX_RELEASE_BASE_URL": mirror.release_base,
        "CIPX_API_BASE_URL": mirror.api_base,
        "TMPDIR": str(tmpdir),
        "NO_PROXY": "127.0.0.1",
    }
    inst = Installer(home=isolated_home, cipx_home=cipx_home, install_dir=cipx_home / "bin", env=env)
    started: set[int] = set()
    # Remember every stand-in gateway so none outlives the test, whatever failed.
    original_run = inst.run

    def run_and_track(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        result = original_run(*args, **extra)
        pid = inst.gateway_pid()
        if pid is not None:
            started.add(pid)
        return result

    inst.run = run_and_track  # type: ignore[method-assign]
    inst.track = started  # type: ignore[attr-defined]
    try:
        yield inst
    finally:
        pid = inst.gateway_pid()
        if pid is not None:
            started.add(pid)
        for pid in started:
            if alive(pid) and "opik-cipx-gateway-" in cmdline(pid):
                os.kill(pid, signal.SIGTERM)


def start_gateway(inst: Installer) -> int:
    out = subprocess.run([str(inst.entry), "ensure-running"], env=inst.env, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    pid = inst.gateway_pid()
    assert pid is not None and alive(pid)
    inst.track.add(pid)  # type: ignore[attr-defined]
    return pid


def fake_uname(tmp_path: Path, kernel: str, machine: str) -> str:
    bindir = tmp_path / "fake-uname"
    bindir.mkdir()
    script = bindir / "uname"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in -s) echo {kernel} ;; -m) echo {machine} ;; *) echo {kernel} ;; esac\n'
    )
    script.chmod(0o755)
    return f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"


# --- version resolution ------------------------------------------------------------------------


def test_without_a_version_installs_the_latest_release_named_by_the_api(
    mirror: ReleaseMirror, installer: Installer
) -> None:
    mirror.publish("0.1.0")
    mirror.publish("0.2.0")
    mirror.latest = "v0.2.0"

    result = installer.run()

    assert result.returncode == 0, result.stderr
    assert installer.installed_version() == "opik-cipx 0.2.0"
    assert f"/api/repos/{REPO}/releases/latest" in mirror.paths()
    assert "/dl/v0.2.0/opik-cipx-linux-amd64.tar.gz" in mirror.paths()
    assert "opik-cipx setup" in result.stderr


@pytest.mark.parametrize("how", ["argument", "argument-with-v", "env"])
def test_a_pinned_version_is_installed_without_asking_the_api(
    mirror: ReleaseMirror, installer: Installer, how: str
) -> None:
    mirror.publish("0.1.0")
    mirror.publish("0.2.0")
    mirror.latest = "v0.2.0"

    if how == "argument":
        result = installer.run("0.1.0")
    elif how == "argument-with-v":
        result = installer.run("v0.1.0")
    else:
        result = installer.run(CIPX_VERSION="0.1.0")

    assert result.returncode == 0, result.stderr
    assert installer.installed_version() == "opik-cipx 0.1.0"
    assert not any(p.startswith("/api/") for p in mirror.paths())


def test_gh_token_is_sent_as_a_bearer_token_on_every_request(mirror: ReleaseMirror, installer: Installer) -> None:
    mirror.publish("0.2.0")
    mirror.latest = "v0.2.0"

    result = installer.run(GH_TOKEN=TOKEN)

    assert result.returncode == 0, result.stderr
    assert len(mirror.seen) == 3  # latest, archive, SHA256SUMS
    assert all(s.headers.get("authorization") == f"Bearer {TOKEN}" for s in mirror.seen)
    assert TOKEN not in result.stderr + result.stdout


def test_without_gh_token_no_authorization_header_is_sent(mirror: ReleaseMirror, installer: Installer) -> None:
    mirror.publish("0.2.0")
    mirror.latest = "v0.2.0"

    result = installer.run()

    assert result.returncode == 0, result.stderr
    assert mirror.seen and all("authorization" not in s.headers for s in mirror.seen)


# --- verification ------------------------------------------------------------------------------


def test_a_tampered_archive_is_refused_and_the_installed_version_stays(
    mirror: ReleaseMirror, installer: Installer
) -> None:
    mirror.publish("0.1.0")
    assert installer.run("0.1.0").returncode == 0
    release = mirror.publish("0.2.0")
    archive = release / "opik-cipx-linux-amd64.tar.gz"
    # Same release, archive swapped after SHA256SUMS was written.
    archive.write_bytes(make_archive(fake_binary("0.2.0") + b"\n# evil\n"))

    result = installer.run("0.2.0")

    assert result.returncode == 5
    assert "checksum mismatch" in result.stderr
    assert installer.installed_version() == "opik-cipx 0.1.0"
    releases = sorted(p.name for p in (installer.install_dir / ".opik-cipx-releases").iterdir())
    assert len(releases) == 1 and releases[0].startswith("0.1.0-")


def test_an_archive_without_a_checksum_line_is_refused(mirror: ReleaseMirror, installer: Installer) -> None:
    mirror.publish("0.2.0", omit_sum_for=("linux-amd64",))

    result = installer.run("0.2.0")

    assert result.returncode == 5
    assert "no line for opik-cipx-linux-amd64.tar.gz" in result.stderr
    assert not installer.entry.exists()


def test_a_release_without_sha256sums_is_refused(mirror: ReleaseMirror, installer: Installer) -> None:
    mirror.publish("0.2.0", sums=False)

    result = installer.run("0.2.0")

    assert result.returncode == 5
    assert "no SHA256SUMS" in result.stderr
    assert not installer.entry.exists()


def test_a_binary_that_reports_another_version_is_not_installed(mirror: ReleaseMirror, installer: Installer) -> None:
    mirror.publish("0.2.0", reported="0.1.9")

    result = installer.run("0.2.0")

    assert result.returncode == 6
    assert "opik-cipx 0.1.9" in result.stderr
    assert not installer.entry.exists()


# --- layout and upgrades -----------------------------------------------------------------------


def test_layout_is_an_entry_symlink_into_a_versioned_bundle_inside_a_private_state_dir(
    mirror: ReleaseMirror, installer: Installer
) -> None:
    mirror.publish("0.1.0")

    assert installer.run("0.1.0").returncode == 0

    entry = installer.entry
    assert entry.is_symlink()
    target = os.readlink(entry)
    assert target.startswith(".opik-cipx-releases/0.1.0-") and target.endswith("/opik-cipx")
    assert (entry.resolve().parent / "_internal" / "base_library.zip").is_file()
    assert (installer.cipx_home.stat().st_mode & 0o777) == 0o700
    assert not list((installer.install_dir / ".opik-cipx-releases").glob(".staging.*"))


def test_custom_install_dir_is_honoured(mirror: ReleaseMirror, installer: Installer, tmp_path: Path) -> None:
    mirror.publish("0.1.0")
    target = tmp_path / "opt" / "bin"

    result = installer.run("0.1.0", CIPX_INSTALL_DIR=str(target))

    assert result.returncode == 0, result.stderr
    assert (target / "opik-cipx").is_symlink()
    assert not installer.entry.exists()
    assert f'export PATH="{target}:$PATH"' in result.stderr


def test_upgrade_while_the_gateway_runs_stops_it_with_the_cli_and_starts_the_new_version(
    mirror: ReleaseMirror, installer: Installer
) -> None:
    mirror.publish("0.1.0")
    mirror.publish("0.2.0")
    assert installer.run("0.1.0").returncode == 0
    old_pid = start_gateway(installer)

    result = installer.run("0.2.0")

    assert result.returncode == 0, result.stderr
    assert installer.installed_version() == "opik-cipx 0.2.0"
    assert not alive(old_pid)
    new_pid = installer.gateway_pid()
    assert new_pid is not None and new_pid != old_pid and alive(new_pid)
    assert "opik-cipx-gateway-0.2.0" in cmdline(new_pid)
    assert "0.2.0 stop" in installer.calls() and "0.2.0 ensure-running" in installer.calls()
    assert "gateway restarted on 0.2.0" in result.stderr


def test_upgrade_falls_back_to_sigterm_when_the_binaries_have_no_stop_command(
    mirror: ReleaseMirror, installer: Installer
) -> None:
    mirror.publish("0.1.0", commands="ensure-running")
    mirror.publish("0.2.0", commands="ensure-running")
    assert installer.run("0.1.0").returncode == 0
    old_pid = start_gateway(installer)

    result = installer.run("0.2.0")

    assert result.returncode == 0, result.stderr
    assert "SIGTERM" in result.stderr
    assert not alive(old_pid)
    assert not any(c.endswith(" stop") for c in installer.calls())
    new_pid = installer.gateway_pid()
    assert new_pid is not None and "opik-cipx-gateway-0.2.0" in cmdline(new_pid)


def test_reinstalling_the_same_version_while_it_runs_restarts_it_and_keeps_one_rollback(
    mirror: ReleaseMirror, installer: Installer
) -> None:
    mirror.publish("0.1.0")
    mirror.publish("0.2.0")
    assert installer.run("0.1.0").returncode == 0
    assert installer.run("0.2.0").returncode == 0
    first_pid = start_gateway(installer)

    result = installer.run("0.2.0")

    assert result.returncode == 0, result.stderr
    assert not alive(first_pid)
    new_pid = installer.gateway_pid()
    assert new_pid is not None and alive(new_pid) and "opik-cipx-gateway-0.2.0" in cmdline(new_pid)
    # The bundle just replaced is kept for rollback; the 0.1.0 one before it is gone.
    releases = sorted(p.name for p in (installer.install_dir / ".opik-cipx-releases").iterdir())
    assert len(releases) == 2 and all(name.startswith("0.2.0-") for name in releases)


def test_a_pidfile_naming_an_unrelated_process_is_left_alone(mirror: ReleaseMirror, installer: Installer) -> None:
    mirror.publish("0.1.0")
    installer.cipx_home.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (installer.cipx_home / "gateway.pid").write_text(f"{bystander.pid} - 0\n")
        result = installer.run("0.1.0")
        assert result.returncode == 0, result.stderr
        assert bystander.poll() is None
        assert "restarted" not in result.stderr
    finally:
        bystander.kill()
        bystander.wait()


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "machine", "needle"),
    [
        ("Linux", "riscv64", "unsupported CPU architecture 'riscv64'"),
        ("Linux", "i686", "unsupported CPU architecture 'i686'"),
        ("FreeBSD", "amd64", "unsupported operating system 'FreeBSD'"),
    ],
)
def test_unsupported_platform_fails_clearly_before_any_download(
    mirror: ReleaseMirror, installer: Installer, tmp_path: Path, kernel: str, machine: str, needle: str
) -> None:
    mirror.publish("0.1.0")

    result = installer.run("0.1.0", PATH=fake_uname(tmp_path, kernel, machine))

    assert result.returncode == 2
    assert needle in result.stderr
    assert "amd64" in result.stderr or "Linux" in result.stderr
    assert mirror.seen == []


def test_darwin_arm64_downloads_the_darwin_arm64_archive(
    mirror: ReleaseMirror, installer: Installer, tmp_path: Path
) -> None:
    # The stand-in binary is a script, so the darwin archive runs here too.
    mirror.publish("0.1.0", platforms=("linux-amd64", "darwin-arm64"))

    result = installer.run("0.1.0", PATH=fake_uname(tmp_path, "Darwin", "arm64"))

    assert result.returncode == 0, result.stderr
    assert "/dl/v0.1.0/opik-cipx-darwin-arm64.tar.gz" in mirror.paths()


def test_a_pinned_version_that_does_not_exist_fails_with_404(mirror: ReleaseMirror, installer: Installer) -> None:
    mirror.publish("0.1.0")

    result = installer.run("9.9.9")

    assert result.returncode == 4
    assert "v9.9.9" in result.stderr and "404" in result.stderr
    assert not installer.entry.exists()


def test_latest_with_no_published_release_fails_with_404(mirror: ReleaseMirror, installer: Installer) -> None:
    result = installer.run()

    assert result.returncode == 4
    assert "no published release" in result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_network_failure_on_download_fails_clearly(installer: Installer) -> None:
    base = f"http://127.0.0.1:{closed_port()}/dl"

    started = time.monotonic()
    result = installer.run("0.1.0", CIPX_RELEASE_BASE_URL=base)

    assert result.returncode == 3
    assert "network failure" in result.stderr and base in result.stderr
    assert time.monotonic() - started < 30
    assert not installer.entry.exists()


def test_network_failure_resolving_latest_fails_clearly(installer: Installer) -> None:
    result = installer.run(CIPX_API_BASE_URL=f"http://127.0.0.1:{closed_port()}/api")

    assert result.returncode == 3
    assert "network failure" in result.stderr and "latest release" in result.stderr


# --- wget, where curl is missing -----------------------------------------------------------------


def path_without_curl(tmp_path: Path) -> str:
    """A PATH with every tool of the real one except curl."""
    bindir = tmp_path / "no-curl"
    bindir.mkdir()
    for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        directory = Path(entry)
        if not directory.is_dir():
            continue
        for tool in directory.iterdir():
            link = bindir / tool.name
            if tool.name != "curl" and not link.exists() and tool.is_file() and os.access(tool, os.X_OK):
                link.symlink_to(tool)
    return str(bindir)


@pytest.mark.skipif(shutil.which("wget") is None, reason="needs wget")
def test_without_curl_wget_downloads_resolves_latest_and_sends_the_token(
    mirror: ReleaseMirror, installer: Installer, tmp_path: Path
) -> None:
    mirror.publish("0.2.0")
    mirror.latest = "v0.2.0"

    result = installer.run(PATH=path_without_curl(tmp_path), GH_TOKEN=TOKEN)

    assert result.returncode == 0, result.stderr
    assert installer.installed_version() == "opik-cipx 0.2.0"
    assert len(mirror.seen) == 3
    assert all(s.headers.get("authorization") == f"Bearer {TOKEN}" for s in mirror.seen)
    assert all("wget" in s.headers.get("user-agent", "").lower() for s in mirror.seen)


@pytest.mark.skipif(shutil.which("wget") is None, reason="needs wget")
def test_without_curl_a_missing_version_and_a_dead_mirror_still_fail_clearly(
    mirror: ReleaseMirror, installer: Installer, tmp_path: Path
) -> None:
    path = path_without_curl(tmp_path)

    missing = installer.run("9.9.9", PATH=path)
    dead = installer.run("0.1.0", PATH=path, CIPX_RELEASE_BASE_URL=f"http://127.0.0.1:{closed_port()}/dl")

    assert missing.returncode == 4 and "v9.9.9" in missing.stderr
    assert dead.returncode == 3 and "network failure" in dead.stderr
