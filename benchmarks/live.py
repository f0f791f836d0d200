"""Case 11: a kernel session's round trip. ``x += 1`` as a ``%%sandbox python --kernel``
cell vs the same as an ipyparallel ``%%px`` cell on one local engine, both in one real
kernel (median cell time, execute_request to reply); and a ``plt.show()`` whose PNG comes
back from the kernel session vs the same plot shown inline by the notebook kernel itself."""

from __future__ import annotations

import statistics

from ._harness import Row, kernel

PLOT = ("import matplotlib.pyplot as plt\nplt.figure(figsize=(4, 3))\nplt.plot(range(100))\n"
        "plt.show()")


def median_cell(k: object, code: str, n: int) -> float:
    times = []
    for _ in range(n):
        reply = k.execute(code)  # type: ignore[attr-defined]
        assert reply.status == "ok", reply.error or reply.stderr
        times.append(reply.replied - reply.sent)
    return statistics.median(times)


def run(quick: bool) -> list[Row]:
    n = 10 if quick else 100
    with kernel() as k:
        k.execute("%%sandbox python --kernel --profile bench\nx = 0")
        ours = median_cell(k, "%%sandbox python --kernel --profile bench\nx += 1", n)
        plot = median_cell(k, f"%%sandbox python --kernel --profile bench\n{PLOT}", max(3, n // 10))
        setup = k.execute("import ipyparallel as ipp\ncluster = ipp.Cluster(n=1, log_level=40)\n"
                          "rc = cluster.start_and_connect_sync()\nrc.wait_for_engines(1, timeout=120)\n"
                          "rc[:].activate()\n%px x = 0", timeout=180)
        assert setup.status == "ok", setup.error or setup.stderr
        try:
            px = median_cell(k, "%%px\nx += 1", n)
        finally:
            k.execute("rc.close()\ncluster.stop_cluster_sync()", timeout=120)
        k.execute("%matplotlib inline")
        local_plot = median_cell(k, PLOT, max(3, n // 10))
    return [Row("11 live", f"`x += 1` in a kernel session vs ipyparallel `%%px`, one local "
                f"engine (median of {n})", f"{ours * 1000:.1f} ms", f"{px * 1000:.1f} ms",
                ours / px, "≤ 1×", ours <= px),
            Row("11 live", "`plt.show()` to the PNG in the cell: kernel session vs inline in "
                "the notebook's own kernel", f"{plot * 1000:.0f} ms", f"{local_plot * 1000:.0f} ms",
                plot / local_plot, "–", None)]
