"""``python -m tests.nomad_standin --port N``: serve the Nomad stand-in until interrupted.

Prints one JSON line ``{"address": ..., "root": ...}`` once it listens, then a hint on
stderr. Point python-nomad (or ``NOMAD_ADDR``) at the address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path

from .server import StandIn


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.nomad_standin", description=__doc__)
    parser.add_argument("--port", type=int, default=4646, help="port (0: pick a free one)")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder for allocation directories (default: a new temporary one)")
    parser.add_argument("--token", default=None,
                        help="require this ACL token in X-Nomad-Token (default: ACLs off)")
    parser.add_argument("--cpu", type=int, default=16000, help="the node's CPU in MHz")
    parser.add_argument("--memory", type=int, default=32768, help="the node's memory in MB")
    parser.add_argument("--node-address", default="127.0.0.1",
                        help="the address the client node advertises for its allocations")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="nomad-standin-"))
    standin = StandIn(root, token=args.token, cpu_mhz=args.cpu, memory_mb=args.memory,
                      node_address=args.node_address)
    address = await standin.start(args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"address": address, "root": str(root)}), flush=True)
    print(f"Nomad stand-in serving on {address} (allocations in {root}); set "
          f"NOMAD_ADDR={address}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await standin.stop()


if __name__ == "__main__":
    asyncio.run(main())
