"""Attribution speed: CPU time to attribute (and allocate) Claude Code-shaped request bodies.

Bodies are grown from a real recorded Claude Code request (tests/fixtures) by
appending realistic turns — tool calls with 2–8 KB results and assistant text —
until they reach the target size. CPU time is ``time.process_time`` (this
process only), best of several repeats, so other load on the machine does not
inflate it much. Target: 1 MB attributed in ≤ 5 ms CPU.

Usage: python bench/attribution_bench.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gateway"))

from opik_cipx.attribute import allocate, attribute_request  # noqa: E402
from opik_cipx.model import Usage  # noqa: E402
from opik_cipx.pricing import PriceTable  # noqa: E402

SEED = ROOT / "tests" / "fixtures" / "claude_code" / "opus48" / "02-after-bash.json"
KB = 1024


def grown_body(size: int, seed: int = 7) -> bytes:
    """The recorded request plus tool-call turns until the JSON reaches ``size`` bytes."""
    rng = random.Random(seed)
    body = json.loads(SEED.read_bytes())
    words = ["stock", "aisle", "widget", "report", "inventory", "warehouse", "check", "record", "mistake", "total"]
    turn = 0
    while len(json.dumps(body, separators=(",", ":"))) < size:
        turn += 1
        tool_id = f"toolu_{turn:024d}"
        output = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randint(25, 100)))
        body["messages"] += [
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look at that. " + " ".join(rng.choice(words) for _ in range(30))},
                {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": f"cat report{turn}.txt", "description": "read"}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": output, "is_error": False}]},
        ]
    # Compact, as Claude Code (JSON.stringify) sends it.
    return json.dumps(body, separators=(",", ":")).encode()


def cpu_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(5):
            fn()
        best = min(best, (time.process_time() - t0) / 5)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rates = PriceTable.builtin().rates("claude-opus-4-8", at=time.time(), prompt_tokens=250_000)
    print("| body | attribute ms CPU | allocate ms CPU | json.loads ms CPU (reference) |")
    print("|---|---|---|---|")
    for size in (120 * KB, 1024 * KB):
        body = grown_body(size)
        usage = Usage(input_tokens=900, cache_creation_input_tokens=12_000, cache_read_input_tokens=len(body) // 4,
                      output_tokens=300)
        attr = attribute_request(body)
        assert attr.unattributed_bytes == 0, attr.unattributed_bytes
        # Default arguments bind this round's body, attribution and usage into each timed lambda.
        a = cpu_ms(lambda body=body: attribute_request(body), args.repeat)
        b = cpu_ms(lambda attr=attr, usage=usage: allocate(attr, usage, rates, [{"type": "text", "text": "ok"}]),
                   args.repeat)
        c = cpu_ms(lambda body=body: json.loads(body), args.repeat)
        print(f"| {len(body) // KB} KB | {a:.2f} | {b:.2f} | {c:.2f} |")


if __name__ == "__main__":
    main()
