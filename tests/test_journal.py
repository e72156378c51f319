"""The capture journal: finished calls survive kill -9 and are replayed once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from opik_cipx.capture.exchange import build_exchange
from opik_cipx.model import Outcome
from opik_cipx.proxy import journal
from opik_cipx.proxy.recorder import HeaderList, Recorder
from opik_cipx.server import Gateway
from tests.support.fake_anthropic import FakeAnthropic


def recorder(n: int) -> Recorder:
    rec = Recorder("POST", "/v1/messages", CIMultiDictProxy(CIMultiDict({"x-claude-code-session-id": "s", "x-api-key": "k"})))
    rec.body = b'{"model":"claude-opus-4-6","messages":[{"role":"user","content":"q%d"}]}' % n
    rec.response_head(200, ((b"content-type", b"application/json"),))
    rec.chunk(b'{"type":"message","model":"claude-opus-4-6","content":[],"usage":{"input_tokens":5,"output_tokens":1}}')
    rec.finish()
    return rec


def test_a_journaled_recorder_rebuilds_the_same_exchange(tmp_path: Path) -> None:
    rec = recorder(1)
    (payload,) = journal.read_frames(_write(tmp_path / "j", [rec]))
    again = journal.load(payload)
    a, b = build_exchange(rec, None), build_exchange(again, None)
    assert a.to_dict() == b.to_dict()
    assert "x-api-key" not in b.request_headers  # redaction still applies on replay


def test_bytes_split_across_reads_come_back_whole(tmp_path: Path) -> None:
    rec = recorder(1)
    body = rec.body
    rec.body_parts = [body[:10], body[10:30], body[30:]]  # as the proxy appends what it reads
    rec.chunk(b"")
    rec.chunk(b"tail")
    again = journal.load(next(iter(journal.read_frames(_write(tmp_path / "j", [rec])))))
    assert again.body == body and again.chunks == rec.chunks and again.times == rec.times


def test_a_frame_holds_the_response_whole_and_its_pieces_as_arrays(tmp_path: Path) -> None:
    rec = recorder(1)
    for i in range(500):
        rec.chunk(b"data: %d\n\n" % i)
    parts, size = journal.dump_parts(rec)
    assert len(parts) == 4 and parts[-1] is rec.response  # head, fields, body, response: no copy
    frame = journal.dump(rec)
    assert size == len(frame)
    again = journal.load(frame[4:])
    assert again.chunks == rec.chunks and again.times == rec.times and again.response == rec.response


def test_v3_frames_with_piece_sizes_still_replay() -> None:
    # _V3 (before the response was one buffer): piece sizes and times as lists in the fields.
    import pickle
    import struct

    rec = recorder(2)
    rec.chunk(b"tail")
    state: dict[str, Any] = {name: getattr(rec, name) for name in journal._FIELDS}
    state.update(times=list(rec.times), request_headers=list(rec.request_headers.items()),
                 body_sizes=[len(rec.body)], chunk_sizes=[len(c) for c in rec.chunks])
    meta = pickle.dumps(state)
    payload = b"\x03" + struct.pack(">Q", 7) + struct.pack(">I", len(meta)) + meta + rec.body + bytes(rec.response)
    assert journal.generation_of(payload) == 7
    again = journal.load(payload)
    assert again.chunks == rec.chunks and list(again.times) == list(rec.times)
    assert build_exchange(again, None).to_dict() == build_exchange(rec, None).to_dict()


def test_frames_from_the_previous_layout_still_replay(tmp_path: Path) -> None:
    # Before raw-bytes frames, the whole recorder was one pickle; an upgrade must still replay those.
    import pickle

    rec = recorder(3)
    state = {name: getattr(rec, name) for name in journal._FIELDS}
    state.update(body=rec.body, chunks=rec.chunks, times=list(rec.times),
                 request_headers=list(rec.request_headers.items()))
    again = journal.load(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    assert build_exchange(again, None).to_dict() == build_exchange(rec, None).to_dict()


def test_a_frame_whose_fields_disagree_with_its_bytes_is_refused() -> None:
    frame = journal.dump(recorder(1))
    with pytest.raises(ValueError, match="describe"):
        journal.load(frame[4:-1])


def test_a_torn_last_frame_is_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path / "j", [recorder(1), recorder(2)])
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # killed in the middle of the second write
    assert len(list(journal.read_frames(path))) == 1


def test_journal_empties_only_when_every_call_is_confirmed(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "j")
    recs = [recorder(i) for i in range(3)]
    for rec in recs:
        j.append(rec)
    j.flush()
    j.confirm([recs[0].id, recs[1].id])
    j.flush()
    assert len(list(journal.read_frames(j.path))) == 3
    j.confirm([recs[2].id])
    j.flush()
    assert list(journal.read_frames(j.path)) == []
    # Confirmed before its append ran: never written at all.
    late = recorder(9)
    j.confirm([late.id])
    j.append(late)
    j.flush()
    assert list(journal.read_frames(j.path)) == []
    j.close()
    assert j.path.stat().st_size == 0  # a clean stop leaves nothing behind


def test_a_rewound_journal_reuses_its_file_and_never_replays_what_it_held(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "j")
    old = [recorder(i) for i in range(4)]
    for rec in old:
        j.seal(rec)
    size = j.path.stat().st_size
    j.confirm([rec.id for rec in old])
    j.flush()
    new = recorder(7)
    j.seal(new)
    assert new.frame is not None and new.frame[0] == 0  # written over the first old frame
    assert j.path.stat().st_size == size  # no new blocks
    assert [journal.load(p).id for p in journal.read_frames(j.path)] == [new.id]
    assert journal.read_at(os.open(j.path, os.O_RDONLY), *new.frame, new.id).body == new.body


def test_a_torn_frame_over_a_rewound_journal_hides_the_stale_frames_behind_it(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "j")
    old = [recorder(i) for i in range(4)]
    for rec in old:
        j.seal(rec)
    before = j.path.read_bytes()
    j.confirm([rec.id for rec in old])
    j.flush()
    new = recorder(8)
    j.seal(new)  # the same size as old[0]: it lands exactly on it
    assert new.frame == old[0].frame
    end = new.frame[1]
    # Killed mid-write: the frame's last bytes and its end mark never reached the file, so
    # old[1], whole and well-formed, follows the torn frame.
    data = bytearray(j.path.read_bytes())
    data[end - 10 : end + 4] = before[end - 10 : end + 4]
    j.path.write_bytes(bytes(data))
    assert journal.load(bytes(data[end + 4 : end + old[1].frame[1]])).id == old[1].id
    replayed = list(journal.take_over(j.path))
    assert not {r.id for r in replayed} & {o.id for o in old}


def test_take_over_keeps_an_interrupted_replay(tmp_path: Path) -> None:
    path = tmp_path / "capture.journal"
    _write(path, [recorder(1)])
    first = list(journal.take_over(path))  # start-up 1 dies before finish_replay
    _write(path, [recorder(2)])
    second = list(journal.take_over(path))
    assert [r.id for r in first] == [second[0].id] and len(second) == 2
    journal.finish_replay(path)
    assert list(journal.take_over(path)) == []


async def test_a_restarted_gateway_stores_what_its_killed_predecessor_journaled(
    upstream: FakeAnthropic, make_settings: Any
) -> None:
    settings = make_settings(upstream_url=upstream.url)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    recs = [recorder(i) for i in range(5)]
    # As a kill -9 leaves it: calls journaled, nothing stored.
    _write(settings.spool_dir / "capture.journal", recs)
    async with Gateway(settings) as gw:
        assert gw.capture is not None and gw.spool is not None
        for _ in range(100):
            if await gw.capture.drain(5) and len(await gw.spool.calls(limit=10)) == 5:
                break
            await asyncio.sleep(0.05)
        rows = await gw.spool.calls(limit=10)
        assert sorted(r.id for r in rows) == sorted(r.id for r in recs)
        # A normal call after the replay is stored too, and nothing is replayed twice.
        async with aiohttp.ClientSession() as s:
            async with s.post(gw.url + "/v1/messages", data=recs[0].body, headers={"x-api-key": "k"}) as r:
                await r.read()
        assert await gw.capture.drain(5)
        assert len(await gw.spool.calls(limit=10)) == 6
    assert not (settings.spool_dir / "capture.journal.replay").exists()
    assert (settings.spool_dir / "capture.journal").stat().st_size == 0


def _write(path: Path, recs: list[Recorder]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        for rec in recs:
            fh.write(journal.dump(rec))
    return path


def test_credentials_never_reach_the_journal_file(tmp_path: Path) -> None:
    rec = Recorder("POST", "/v1/messages", HeaderList([(b"x-api-key", b"sk-ant-JOURNALSECRET"),
                                                       (b"Authorization", b"Bearer OAUTHSECRET"),
                                                       (b"Cookie", b"s=COOKIESECRET"), (b"anthropic-version", b"1")]))
    rec.body = b"{}"
    rec.finish()
    raw = _write(tmp_path / "j", [rec]).read_bytes()
    for secret in (b"JOURNALSECRET", b"OAUTHSECRET", b"COOKIESECRET"):
        assert secret not in raw
    (payload,) = journal.read_frames(tmp_path / "j")
    # Only the kind of credential survives, so the replayed call is labelled like the live one.
    assert journal.load(payload).request_headers.items() == [("anthropic-version", "1"), ("x-cipx-credential", "api_key")]


def test_a_replayed_oauth_call_keeps_its_credential_kind_not_its_token(tmp_path: Path) -> None:
    headers = [(b"Authorization", b"Bearer sk-ant-oat01-SECRET"), (b"anthropic-beta", b"oauth-2025-04-20")]
    rec = Recorder("POST", "/v1/messages", HeaderList(headers))
    rec.body = b"{}"
    rec.finish()
    (payload,) = journal.read_frames(_write(tmp_path / "j", [rec]))
    live, replayed = build_exchange(rec, None), build_exchange(journal.load(payload), None)
    assert live.request_headers["x-cipx-credential"] == replayed.request_headers["x-cipx-credential"] == "oauth"
    assert b"SECRET" not in (tmp_path / "j").read_bytes()
    assert "SECRET" not in repr(replayed.to_dict())


@pytest.mark.parametrize("per_call", [1, 7, 4096])
def test_write_all_finishes_short_writes_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_call: int) -> None:
    # The kernel may write less than asked (signals, full disks, pipes): every byte must still
    # land once and in order, across more buffers than one pwritev takes.
    parts = [b"", *(bytes([65 + i % 26]) * (1 + i % 9) for i in range(1500)), b"tail"]
    real = os.pwritev
    calls: list[int] = []

    def short(fd: int, buffers: list[Any], offset: int) -> int:
        assert len(buffers) <= 512
        assert len(calls) < 20_000, "write_all is not making progress"
        calls.append(len(buffers))
        return real(fd, [b"".join(bytes(b) for b in buffers)[:per_call]], offset)

    monkeypatch.setattr(journal.os, "pwritev", short)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        journal.write_all(fd, parts, 10)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" * 10 + b"".join(parts)
    assert len(calls) > 2  # more than one batch, or short writes, were taken


def test_a_frame_written_before_the_package_moved_still_loads() -> None:
    # Written by the flat-module build (opik_cipx.capture.Recorder, Outcome pickled by path) just
    # before the sub-package move: a journal left by a killed gateway must replay after an upgrade.
    frame = (Path(__file__).parent / "fixtures" / "journal" / "v3-frame-2026-12.bin").read_bytes()
    rec = journal.load(frame[4:])
    assert rec.id == "0123456789abcdef0123456789abcdef" and rec.forced_outcome is Outcome.TRUNCATED
    ex = build_exchange(rec, None)
    assert ex.session_id == "sess-1" and "x-api-key" not in ex.request_headers
    assert ex.outcome is Outcome.TRUNCATED and ex.usage is not None and ex.usage.input_tokens == 5


def test_frames_name_no_module_of_ours(tmp_path: Path) -> None:
    # Frames must not depend on where our classes live: no pickled reference into opik_cipx.
    rec = recorder(4)
    rec.upstream_broke("reset")
    frame = journal.dump(rec)
    assert b"opik_cipx" not in frame
    assert journal.load(frame[4:]).forced_outcome is Outcome.TRUNCATED


def test_an_interrupted_replay_keeps_the_calls_journaled_after_it(tmp_path: Path) -> None:
    # Real journals end with an end mark and carry their own generation: a second journal
    # appended to the first would be read as stale. Each is replayed on its own.
    path = tmp_path / "capture.journal"
    j = journal.Journal(path)
    first = recorder(1)
    j.seal(first)
    j.close()
    assert [r.id for r in journal.take_over(path)] == [first.id]  # start-up 1 dies here
    j = journal.Journal(path)
    second = recorder(2)
    j.seal(second)
    j.close()
    assert [r.id for r in journal.take_over(path)] == [first.id, second.id]
    journal.finish_replay(path)
    assert list(journal.take_over(path)) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("capture")] == []


@pytest.mark.slow  # a subprocess or a flood of connections, several seconds
def test_recovery_reads_a_large_journal_one_frame_at_a_time(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "capture.journal"
    with path.open("wb") as fh:
        for i in range(48):
            rec = recorder(i)
            rec.body = b'{"pad":"' + b"x" * 1_000_000 + b'"}'  # 48 MB of journal
            fh.write(journal.dump(rec))
    # Peak memory of a fresh process replaying it: bounded by a frame or two, not the file.
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report pytest's.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from opik_cipx.proxy import journal\n"
        "def hwm():\n"
        "    line = next(x for x in Path('/proc/self/status').read_text().splitlines() if x.startswith('VmHWM'))\n"
        "    return int(line.split()[1])\n"
        "base = hwm()\n"
        "n = sum(1 for _ in journal.take_over(Path(sys.argv[1])))\n"
        "print(n, (hwm() - base) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "gateway")})
    count, grew_mib = map(int, out.stdout.split())
    assert count == 48 and grew_mib < 16, f"replaying a 48 MB journal grew the process by {grew_mib} MiB"


def test_response_credentials_never_reach_the_journal_file(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "j")
    rec = recorder(1)
    rec.response_head(200, ((b"content-type", b"application/json"), (b"Set-Cookie", b"__cf_bm=CFSECRET; HttpOnly"),
                            (b"set-cookie2", b"old=COOKIE2SECRET"), (b"x-auth-token", b"TOKENSECRET"),
                            (b"WWW-Authenticate", b"Bearer realm=REALMSECRET"),
                            (b"anthropic-ratelimit-tokens-remaining", b"7")))
    j.seal(rec)
    raw = j.path.read_bytes()
    for secret in (b"CFSECRET", b"COOKIE2SECRET", b"TOKENSECRET", b"REALMSECRET"):
        assert secret not in raw
    (payload,) = journal.read_frames(j.path)
    # What capture needs of the head is still there.
    assert journal.load(payload).response_headers == (
        (b"content-type", b"application/json"), (b"anthropic-ratelimit-tokens-remaining", b"7"))
    j.close()
