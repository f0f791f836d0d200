"""Random and malformed requests to one real agent: never a 5xx, the agent stays healthy,
and nothing beside the slot workspaces and the runs' kept output is created or changed.

Slot 0 holds lures that lead out of it (a symlink to a sentinel folder beside the root, a
symlink and a hard link to a file in it); they are put back before each example, since
a fuzzed reset or upload may remove them. Runs are limited to programs that end at once
and write nothing (``true``, ``echo``, ``cat``...): the agent confines its file API, not
what a run does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from sandbox_magics.agent import protocol
from sandbox_magics.agent.app import OUTPUT_FOLDER
from tests.agent.agent_driver import LOG_NAME, TOKEN, start_agent

SAFE_PROGRAMS = ["true", "false", "echo", "cat", "printf", "no-such-program", "./missing", "/"]
_MISSING = object()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8)


def _runnable(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` seven times in eight, else ``other`` (``one_of`` would merge repeats)."""
    return st.sampled_from([valid] * 7 + [other]).flatmap(lambda strategy: strategy)


def _field(valid: st.SearchStrategy[Any],
           invalid: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    """A body field: mostly ``valid``; else any JSON value, or the field left out."""
    return _mostly(valid, invalid | st.just(_MISSING))


def _json_object(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.fixed_dictionaries(fields).map(
        lambda body: json.dumps({k: v for k, v in body.items() if v is not _MISSING}).encode())


run_id = st.sampled_from(["r1", "fuzz"])
seconds = st.floats(min_value=0.01, max_value=0.5)
exec_line = _json_object(
    run_id=_field(run_id),
    argv=_field(st.builds(lambda program, args: [program, *args], st.sampled_from(SAFE_PROGRAMS),
                          st.lists(st.text(max_size=20), max_size=4)),
                json_values.filter(lambda v: not _runnable(v))),
    env=_field(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)),
    stdin=_mostly(st.just(_MISSING), json_values),
)
exec_body = st.builds(lambda line, stdin: line if stdin is None else line + b"\n" + stdin,
                      exec_line, st.none() | st.binary(max_size=100))
signal_body = _json_object(run_id=_field(run_id), signal=_field(st.integers(-1, 70)))
raw_body = st.none() | st.binary(max_size=200)

segment = st.sampled_from([
    "..", ".", "", "%00", "%2F", "%2e%2e", "%2F..%2F..%2F", "%2Fetc%2Fpasswd", "%ff", "~", "a",
    "lure", "lure-file", "hard", "slot-1", "x" * 300,
]) | st.text(max_size=20).map(lambda text: quote(text, safe=""))
slot = _mostly(st.sampled_from(["0", "0", "1"]),
               st.sampled_from(["2", "-1", "00", "x", "9" * 30, ""]))
file_url = st.builds(lambda s, p: f"/slots/{s}/files/{p}", slot,
                     st.lists(segment, min_size=1, max_size=6).map("/".join))


def _slot_url(route: str) -> st.SearchStrategy[str]:
    return slot.map(lambda s: f"/slots/{s}/{route}")


offset = _mostly(st.integers(0, 40).map(str),
                 st.integers(-5, 10**20).map(str) | st.text(max_size=6).map(lambda t: quote(t, safe="")))
run_url = st.builds(lambda s, r: f"/slots/{s}/runs/{r}", slot, _mostly(run_id, segment))
output_url = st.builds(lambda url, o: f"{url}/output?offset={o}", run_url, offset)


execs = st.tuples(st.just("POST"), _slot_url("exec"), _mostly(exec_body, raw_body))
aimed = st.one_of(
    execs,
    st.tuples(st.just("POST"), _slot_url("signal"), _mostly(signal_body, raw_body)),
    st.tuples(st.just("POST"), _slot_url("reset"), raw_body),
    st.tuples(st.sampled_from(["GET", "HEAD"]), _slot_url("files"), st.none()),
    st.tuples(st.sampled_from(["GET", "HEAD"]), file_url, st.none()),
    st.tuples(st.just("PUT"), file_url, st.binary(max_size=1000)),
    st.tuples(st.sampled_from(["GET", "HEAD"]), run_url | output_url, st.none()),
)
anything = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    file_url | _slot_url("exec") | st.sampled_from(["/health", "/", "/slots", "/slots/0"])
    | st.text(max_size=30).map(lambda text: "/" + quote(text, safe="/")),
    exec_body | raw_body)
requests = _mostly(_mostly(aimed, execs), anything)

no_crlf = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
token = _mostly(st.just(TOKEN), st.none() | no_crlf)
headers = _mostly(st.just({}), st.dictionaries(
    st.sampled_from(["Content-Type", "Content-Encoding", "Accept", "Accept-Encoding", "Range",
                     "Expect", "Cookie", "X-Fuzz"]),
    no_crlf | st.sampled_from([b"gzip", b"deflate", b"br", b"application/json",
                               b"application/json; charset=bogus", b"bytes=5-1",
                               b"100-continue"]),
    max_size=3))


def _snapshot(base: Path, root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``base`` except the slot workspaces, the runs' kept output and the
    agent's log: folders by name, files by mode, size, modification time and content."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if not d.startswith("slot-") and d != OUTPUT_FOLDER]
            filenames = [f for f in filenames if f != LOG_NAME]
        for name in dirnames:
            seen[os.path.relpath(os.path.join(dirpath, name), base)] = ("folder",)
        for name in filenames:
            full = os.path.join(dirpath, name)
            st_ = os.lstat(full)
            digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
            seen[os.path.relpath(full, base)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, digest)
    return seen


class Fuzzed:
    """The agent under fuzz, its sentinel folder and what lies beside the workspaces."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sentinel = base / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "file.txt").write_text("keep")
        self.agent = start_agent(base / "root")
        self.before = _snapshot(base, self.agent.root)

    def lure(self) -> None:
        """Put back the ways out of slot 0 that an earlier example removed."""
        slot = self.agent.slot(0)
        if not os.path.lexists(slot / "lure"):
            (slot / "lure").symlink_to(self.sentinel)
        if not os.path.lexists(slot / "lure-file"):
            (slot / "lure-file").symlink_to(self.sentinel / "file.txt")
        if not os.path.lexists(slot / "hard"):
            os.link(self.sentinel / "file.txt", slot / "hard")

    def beside_the_workspaces(self) -> dict[str, tuple[Any, ...]]:
        return _snapshot(self.base, self.agent.root)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    f = Fuzzed(tmp_path_factory.mktemp("fuzz"))
    yield f
    f.agent.stop()


def _route(path: str) -> str:
    """The route a fuzzed path aims at, to tell apart in the statistics."""
    parts = path.split("/")
    return parts[3] if parts[1] == "slots" and len(parts) > 3 else "other"


def _frames_end_with_exit(data: bytes) -> bool:
    kind = None
    while data:
        kind, length = protocol.HEADER.unpack(data[:protocol.HEADER.size])
        data = data[protocol.HEADER.size + length:]
    return kind == protocol.EXIT


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # they judge the strategies, not the agent
@given(request=requests, token=token, headers=headers)
def test_random_requests_never_get_a_5xx_nor_touch_anything_outside_the_workspaces(
        fuzzed: Fuzzed, request: tuple[str, str, bytes | None], token: str | bytes | None,
        headers: dict[str, bytes]) -> None:
    method, path, body = request
    assume("shutdown" not in path)
    fuzzed.lure()
    agent = fuzzed.agent
    reply = agent.request(method, path, body, token=token, headers=headers)
    event(f"{method} {_route(path)} -> {reply.status}")  # see --hypothesis-show-statistics
    assert reply.status < 500, (reply, agent.log[-2000:])
    if (method, reply.status) in (("POST", 200), ("GET", 200)) and \
            (path.endswith("/exec") or "/output?" in path):
        assert _frames_end_with_exit(reply.body), reply
    assert agent.process.poll() is None, agent.log[-2000:]
    health = agent.request("GET", "/health")
    assert health.status == 200 and health.json()["running"] == [], health
    assert fuzzed.beside_the_workspaces() == fuzzed.before
    assert (fuzzed.sentinel / "file.txt").read_text() == "keep"

