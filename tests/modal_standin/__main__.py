"""``python -m tests.modal_standin --port N``: serve the Modal stand-in until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from .server import StandIn


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.modal_standin", description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--root", type=Path, default=None,
                        help="folder for the sandboxes' files (default: a new temporary folder)")
    parser.add_argument("--max-running", type=int, default=None,
                        help="refuse more running sandboxes than this, as a quota would")
    parser.add_argument("--secrets", type=Path, default=None,
                        help='a JSON file {"secret-name": {"KEY": "value"}} of named secrets')
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="modal-standin-"))
    secrets = json.loads(args.secrets.read_text()) if args.secrets else {}
    standin = StandIn(root, max_running=args.max_running, secrets_=secrets)
    await standin.start(args.port)
    print(f"Modal stand-in serving on {standin.url} (sandboxes in {root}); set "
          f"MODAL_SERVER_URL={standin.url} MODAL_TOKEN_ID=x MODAL_TOKEN_SECRET=y", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await standin.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
