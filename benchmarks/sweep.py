"""Case 10: a 1,000-item sweep of ``echo`` from one ``%%sandbox --map`` cell over 16 slots,
in a real kernel with its live view, vs ipyparallel's ``LoadBalancedView.map`` of the same
commands on 16 engines (measured in the same run): items per second, the kernel's RSS
growth, and the most widget updates one view got in a second."""

from __future__ import annotations

import time

from tests.kernel_driver import peak_rss, rss

from ._harness import Row, kernel
from .streaming import widget_rate
from .throughput import ipyparallel_rate

MB = 2**20


def run(quick: bool) -> list[Row]:
    n, width = (40, 4) if quick else (1000, 16)
    with kernel(slots=width // 2, sandboxes=2) as k:
        k.execute(f"%%sandbox bash --profile bench --name warm --map i=0..{width - 1}\necho $i")
        k.execute("_.wait(120)")
        before, first = rss(k.pid), len(k.messages)
        with peak_rss(k.pid) as peak:
            reply = k.execute(f"%%sandbox bash --profile bench --name bench --map i=0..{n - 1}\n"
                              "echo $i")
            done = k.execute(f"sweep = _\nsweep.wait(900)\nprint(sweep.counts()['succeeded'])",
                             timeout=900)
            elapsed = time.monotonic() - reply.sent
        assert done.stdout.strip() == str(n), done.stdout + done.stderr
        growth = (peak[0] - before) / MB
        k.drain(1.5)
        updates = widget_rate(k, first)
    mine = n / elapsed
    ipp = None if quick else ipyparallel_rate(n, width)  # case 2 already starts one when quick
    rows = [Row("10 sweep", f"{n}-item `--map` sweep of `echo $i` over {width} slots vs "
                f"ipyparallel LoadBalancedView.map, {width} engines", f"{mine:.0f} items/s",
                f"{ipp:.0f} items/s" if ipp else "ipyparallel not run",
                mine / ipp if ipp else None, "> 1×", mine > ipp if ipp else None),
            Row("10 sweep", f"{n}-item sweep with its live view: kernel RSS growth",
                f"{growth:.1f} MB", "–", None, "< 64 MB", growth < 64),
            Row("10 sweep", "sweep view: widget updates per second (busiest widget)",
                f"{updates}/s", "–", None, "≤ 2/s", updates <= 2)]
    return rows
