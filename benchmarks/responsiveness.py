"""Case 4: round trip of ``1+1`` with 32 --bg runs streaming output, vs the same kernel idle."""

from __future__ import annotations

from tests.kernel_driver import Kernel

from ._harness import Row, kernel

STREAM = ("%%sandbox python --bg --profile bench --no-raise-error\n"
          "import time\nend = time.time() + {seconds}\n"
          "while time.time() < end:\n    print('step', time.time(), flush=True)\n    time.sleep(0.001)\n")


def percentiles(k: Kernel, n: int) -> tuple[float, float]:
    """p50 and p99 of the execute_request round trip of ``1+1``, in seconds."""
    samples = []
    for _ in range(n):
        reply = k.execute("1+1")
        samples.append(reply.replied - reply.sent)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def run(quick: bool) -> list[Row]:
    runs, n = (4, 20) if quick else (32, 200)
    with kernel(slots=8, sandboxes=max(1, runs // 8)) as k:
        idle = percentiles(k, n)
        for _ in range(runs):
            k.execute(STREAM.format(seconds=600))
        k.execute("import time; time.sleep(2)")
        loaded = percentiles(k, n)
    return [
        Row("4 responsiveness", f"`1+1` round trip p50, {runs} --bg runs streaming vs idle",
            f"{loaded[0] * 1e3:.1f} ms", f"{idle[0] * 1e3:.1f} ms", loaded[0] / idle[0], "–", None),
        Row("4 responsiveness", f"`1+1` round trip p99, {runs} --bg runs streaming vs idle",
            f"{loaded[1] * 1e3:.1f} ms", f"{idle[1] * 1e3:.1f} ms", loaded[1] / idle[1],
            "p99 ≤ 100 ms", loaded[1] <= 0.1),
    ]
