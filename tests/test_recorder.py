"""The Recorder: one buffer and two arrays per response, read back as the pieces that came."""

from __future__ import annotations

from array import array

from opik_cipx.proxy.recorder import HeaderList, Recorder


def _rec() -> Recorder:
    return Recorder("POST", "/v1/messages", HeaderList([(b"content-type", b"application/json")]))


def test_pieces_come_back_as_read_with_their_times() -> None:
    rec = _rec()
    pieces = [b"event: a\n", b"", b"data: {}\n\n", b"x" * 70_000]
    for piece in pieces:
        rec.chunk(piece)
    assert rec.chunks == pieces
    assert bytes(rec.response) == b"".join(pieces) and rec.size == sum(map(len, pieces))
    assert len(rec.times) == len(pieces) and list(rec.times) == sorted(rec.times)


def test_a_response_is_machine_numbers_not_an_object_per_piece() -> None:
    # What keeps a long stream's memory small and in one place: no bytes or float object per event.
    rec = _rec()
    for _ in range(1000):
        rec.chunk(b"data: {}\n\n")
    assert isinstance(rec.response, bytearray)
    assert isinstance(rec.ends, array) and isinstance(rec.times, array)
    assert rec.ends[-1] == len(rec.response) == 10_000


def test_the_buffer_still_grows_after_its_pieces_were_read() -> None:
    rec = _rec()
    rec.chunk(b"one")
    assert rec.chunks == [b"one"]  # the view over the buffer is released again
    rec.chunk(b"two")
    assert rec.chunks == [b"one", b"two"]


def test_setting_chunks_replaces_the_response() -> None:
    rec = _rec()
    rec.chunk(b"old")
    rec.chunks = [b"a", b"bc"]
    assert rec.chunks == [b"a", b"bc"] and bytes(rec.response) == b"abc"


def test_release_drops_the_bytes_and_their_bookkeeping() -> None:
    rec = _rec()
    rec.body = b"request"
    rec.chunk(b"response")
    rec.release()
    assert rec.released and rec.size == 0 and rec.chunks == []
    assert len(rec.ends) == 0 and len(rec.times) == 0


def test_pieces_are_made_one_at_a_time_and_the_buffer_is_free_again_after() -> None:
    rec = _rec()
    for piece in (b"a", b"bb", b"ccc"):
        rec.chunk(piece)
    it = rec.pieces()
    assert next(it) == b"a"  # a generator: capture reads a long stream without a list of it
    assert list(it) == [b"bb", b"ccc"]
    rec.chunk(b"d")  # the view over the buffer ended with the iteration
    assert rec.chunks == [b"a", b"bb", b"ccc", b"d"]
