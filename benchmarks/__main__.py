"""``python -m benchmarks [--quick] [--only CASE ...]``: run the cases, print the table."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time

from ._harness import Row, table

CASES = ["per_run", "throughput", "streaming", "responsiveness", "pool_scale",
         "multiplexing", "cold_start", "modal_overhead", "nomad_overhead", "sweep", "live"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--only", nargs="+", choices=CASES, default=CASES, metavar="CASE",
                        help=f"cases to run (default all): {', '.join(CASES)}")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    started = time.perf_counter()
    for name in args.only:
        case_start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        rows.extend(module.run(args.quick))
        print(f"# {name}: {time.perf_counter() - case_start:.1f} s", file=sys.stderr, flush=True)
    print(f"sandbox_magics benchmarks{' (quick)' if args.quick else ''}: Python "
          f"{platform.python_version()}, {platform.machine()}, {_cpus()} CPUs, "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print(table(rows))
    return 0


def _cpus() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
