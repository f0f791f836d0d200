"""Run the sandbox agent: ``python -m sandbox_magics.agent --root DIR --slots K``.

The bearer token is the first line of stdin (or ``$SANDBOX_AGENT_TOKEN`` where an engine can
only pass environment); never argv, which ``ps`` shows, and stdin keeps it out of
``/proc/<pid>/environ``, which the runs could read. Where the environment is written in a
spec others read (a Nomad job), ``$SANDBOX_AGENT_TOKEN_SHA256`` gives only the token's
hex SHA-256, and the agent checks the digest of each token sent. Once listening it prints
one JSON line ``{"port": ..., "pid": ...}`` on stdout.

It exits on SIGTERM/SIGINT, on ``POST /v1/shutdown``, and after ``--idle-timeout``
seconds without a request, a running command or a detached run kept for a client. Its
owner is its ``--parent-pid`` while that process lives, else any client's requests (the
pool's health checks are its heartbeats). When the parent dies, the runs that are not
detached are killed, and the agent exits unless it keeps a detached run (one going, or
whose end no client has read). Once no owner has been seen for ``--heartbeat-window``
seconds, the agent stops its runs (SIGINT, SIGTERM, then SIGKILL) and exits: a detached
run outlives its kernel by that window at most, unless another client comes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

from aiohttp import web

from . import process, protocol
from .auth import TokenDigest
from .app import (DEFAULT_MAX_OUTPUT_MB, DEFAULT_MAX_UPLOAD_MB, SLOTS, idle_seconds, make_app,
                  owner_gone, stop_runs, unseen_seconds)

WATCH_INTERVAL = 0.5
TOKEN_SHA256_ENV = "SANDBOX_AGENT_TOKEN_SHA256"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox_magics.agent", description=__doc__)
    parser.add_argument("--root", required=True, type=Path, help="directory for slot workspaces")
    parser.add_argument("--slots", type=int, default=1, help="number of slot workspaces")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (0: pick a free one)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process is no longer our parent")
    parser.add_argument("--idle-timeout", type=float, default=600.0,
                        help="exit after this many idle seconds (0: never)")
    parser.add_argument("--heartbeat-window", type=float, default=900.0,
                        help="stop the runs and exit once no parent nor request has been "
                             "seen for this many seconds (0: never)")
    parser.add_argument("--nice", type=int, default=0,
                        help="lower the priority of the agent and its runs by this much")
    parser.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                        help="refuse file uploads larger than this many MiB "
                             f"(default {DEFAULT_MAX_UPLOAD_MB})")
    parser.add_argument("--max-output-mb", type=int, default=DEFAULT_MAX_OUTPUT_MB,
                        help="keep at most this many MiB of a run's output, its head and "
                             f"its latest (default {DEFAULT_MAX_OUTPUT_MB})")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error(f"--slots must be at least 1, got {args.slots}")
    for flag in ("--max-upload-mb", "--max-output-mb"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    return args


async def serve(args: argparse.Namespace, token: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    process.become_subreaper()
    app = make_app(token, args.root, args.slots, stop, max_upload_mb=args.max_upload_mb,
                   max_output_mb=args.max_output_mb)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    watcher = asyncio.ensure_future(_watch(app, args, stop))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        await runner.cleanup()
        process.kill_strays()


async def _watch(app: web.Application, args: argparse.Namespace, stop: asyncio.Event) -> None:
    parent = args.parent_pid
    window = args.heartbeat_window
    while not stop.is_set():
        await asyncio.sleep(WATCH_INTERVAL)
        if not any(slot.busy for slot in app[SLOTS]):
            for pid in process.kill_strays():
                _say(f"killed process {pid} that outlived its run")
        if parent is not None and os.getppid() != parent:
            parent = None
            if not owner_gone(app):
                _say("parent process is gone; exiting")
                stop.set()
            else:
                _say(f"parent process is gone; keeping its detached runs until no client "
                     f"has come for {window:g} s")
        elif parent is None and window > 0 and unseen_seconds(app) > window:
            _say(f"no client for {window:g} s (--heartbeat-window); stopping runs and exiting")
            await stop_runs(app, "owner-gone")
            stop.set()
        elif args.idle_timeout > 0 and idle_seconds(app) > args.idle_timeout:
            _say("idle timeout reached; exiting")
            stop.set()


def _say(line: str) -> None:
    print(f"agent: {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    digest = os.environ.pop(TOKEN_SHA256_ENV, "").strip()
    if digest and not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        print(f"agent: ${TOKEN_SHA256_ENV} must be 64 hex digits (a SHA-256)", file=sys.stderr)
        return 2
    token = (TokenDigest(digest) if digest else os.environ.pop(protocol.TOKEN_ENV, "")
             or sys.stdin.readline().strip())
    if not token:
        print(f"agent: give the bearer token as the first line of stdin or in "
              f"${protocol.TOKEN_ENV} (or its SHA-256 in ${TOKEN_SHA256_ENV})", file=sys.stderr)
        return 2
    asyncio.run(serve(args, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
