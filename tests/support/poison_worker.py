"""A capture worker that dies, as a crashing parser would take the process down, on any call
whose request body holds :data:`PILL`. Run as a script; used through :func:`argv`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PILL = b"POISON-PILL-kills-the-capture-worker"


def argv() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gateway"))
    from opik_cipx.capture import pipeline, worker
    from opik_cipx.proxy.recorder import Recorder

    real = pipeline.prepare

    def prepare(rec: Recorder, *args: object, **kwargs: object) -> object:
        if PILL in rec.body:
            os._exit(70)  # no exception to catch, no reply: the parent sees its pipe close
        return real(rec, *args, **kwargs)  # type: ignore[arg-type]

    pipeline.prepare = prepare  # type: ignore[assignment]
    return worker.main()


if __name__ == "__main__":
    sys.exit(main())
