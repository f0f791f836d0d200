"""Every run's output is kept by its slot: replayed from any offset with both streams in
order, followed live, read again after a detached run's client went away; the run-state
route; refusals of unknown runs and bad offsets."""

from __future__ import annotations

import hashlib
import json
import signal
import sys
from pathlib import Path

import pytest

from sandbox_magics.agent import protocol
from sandbox_magics.agent.app import OUTPUT_FOLDER
from tests.agent.agent_driver import Agent, Result, collect, exec_body, start_agent
from tests.kernel_driver import pid_alive, wait_until

MIB = 2**20
OUTPUT = (protocol.STDOUT, protocol.STDERR)
# Three rounds of a line on stdout, then one on stderr, each written once the test has
# seen the one before (it touches go-N in the workspace), so the order is known.
TAKING_TURNS = ("n=0; for i in 1 2 3; do for s in out err; do n=$((n+1)); "
                "if [ $s = out ]; then echo \"out $i\"; else echo \"err $i\" >&2; fi; "
                "until [ -e go-$n ]; do sleep 0.01; done; done; done; exit 3")
TURNS = [(protocol.STDOUT, b"out 1\n"), (protocol.STDERR, b"err 1\n"),
         (protocol.STDOUT, b"out 2\n"), (protocol.STDERR, b"err 2\n"),
         (protocol.STDOUT, b"out 3\n"), (protocol.STDERR, b"err 3\n")]


def merged(output: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """``output`` with consecutive frames of one stream joined: what a run wrote, however
    it was cut into frames."""
    joined: list[tuple[int, bytes]] = []
    for kind, data in output:
        if joined and joined[-1][0] == kind:
            joined[-1] = (kind, joined[-1][1] + data)
        else:
            joined.append((kind, data))
    return joined


def from_offset(output: list[tuple[int, bytes]], offset: int) -> list[tuple[int, bytes]]:
    """What of ``output`` comes after its first ``offset`` bytes."""
    rest = []
    for kind, data in merged(output):
        if offset >= len(data):
            offset -= len(data)
            continue
        rest.append((kind, data[offset:]))
        offset = 0
    return rest


def run_taking_turns(agent: Agent) -> Result:
    """Run `TAKING_TURNS` in slot 0 to its end, letting it go on after each line."""
    result = Result()
    for kind, payload in agent.frames(0, exec_body(TAKING_TURNS)):
        result.add(kind, payload)
        if kind in OUTPUT:
            (agent.slot(0) / f"go-{len(result.output)}").touch()
    return result


def test_the_kept_output_replays_both_streams_in_order_from_any_offset(agent: Agent) -> None:
    streamed = run_taking_turns(agent)
    assert streamed.output == TURNS and streamed.exit_code == 3
    total = sum(len(data) for _, data in TURNS)
    assert streamed.exit is not None and streamed.exit["bytes"] == total
    assert streamed.start is not None and streamed.start["offset"] == 0
    for offset in (0, 9, 12, 20, total - 1, total):
        replayed = agent.replay(0, "r1", offset)
        assert merged(replayed.output) == from_offset(TURNS, offset), offset
        assert replayed.exit == streamed.exit and replayed.dropped == []
        assert replayed.start == {**streamed.start, "offset": offset}
    state = agent.state(0, "r1")
    assert state["state"] == "ended" and state["bytes"] == total and state["read"] is True
    assert state["exit"] == streamed.exit and state["detached"] is False


def test_a_follower_gets_what_was_kept_then_the_output_as_it_comes(agent: Agent) -> None:
    script = "echo before; until [ -e go ]; do sleep 0.01; done; echo after >&2; exit 4"
    frames = agent.frames(0, exec_body(script, run_id="live"))
    assert next(frames)[0] == protocol.START and next(frames) == (protocol.STDOUT, b"before\n")
    follower = Result()
    for kind, payload in agent.output_frames(0, "live", 3):
        follower.add(kind, payload)
        if kind == protocol.STDOUT:
            (agent.slot(0) / "go").touch()
    assert follower.output == [(protocol.STDOUT, b"ore\n"), (protocol.STDERR, b"after\n")]
    assert follower.exit is not None and follower.exit["exit_code"] == 4
    assert collect(frames).exit == follower.exit


def test_a_detached_run_outlives_its_client_and_replays_whole(agent: Agent) -> None:
    script = ("echo started; until [ -e go ]; do sleep 0.01; done; "
              "for i in $(seq 1000); do echo line $i; echo warn $i >&2; done; exit 5")
    frames = agent.frames(0, exec_body(script, run_id="bg", detach=True))
    assert next(frames)[0] == protocol.START and next(frames) == (protocol.STDOUT, b"started\n")
    frames.close()
    assert wait_until(lambda: agent.state(0, "bg")["followers"] == 0, 15)
    assert agent.state(0, "bg")["state"] == "running"
    (agent.slot(0) / "go").touch()
    assert wait_until(lambda: agent.state(0, "bg")["state"] == "ended", 15)
    replayed = agent.replay(0, "bg")
    assert replayed.stdout == b"started\n" + b"".join(b"line %d\n" % i for i in range(1, 1001))
    assert replayed.stderr == b"".join(b"warn %d\n" % i for i in range(1, 1001))
    assert replayed.exit is not None and replayed.exit["exit_code"] == 5
    assert replayed.exit["reason"] is None
    state = agent.state(0, "bg")
    assert state["detached"] is True and state["read"] is True
    assert state["bytes"] == len(replayed.stdout) + len(replayed.stderr) == replayed.exit["bytes"]


def test_a_run_that_is_not_detached_is_killed_when_its_client_goes_away(agent: Agent) -> None:
    frames = agent.frames(0, exec_body("echo $$; sleep 300", run_id="fg"))
    assert next(frames)[0] == protocol.START
    kind, payload = next(frames)
    frames.close()
    assert wait_until(lambda: agent.state(0, "fg")["state"] == "ended", 15)
    exit_info = agent.state(0, "fg")["exit"]
    assert exit_info["reason"] == "client-gone" and exit_info["signal"] == signal.SIGKILL
    assert not pid_alive(int(payload))


def test_a_detached_run_found_by_its_id_can_be_signalled_while_followed(agent: Agent) -> None:
    script = "trap 'echo got TERM; exit 9' TERM; echo ready; while :; do sleep 0.05; done"
    frames = agent.frames(1, exec_body(script, run_id="bg", detach=True))
    assert next(frames)[0] == protocol.START
    frames.close()
    follower = Result()
    for kind, payload in agent.output_frames(1, "bg"):
        follower.add(kind, payload)
        if kind == protocol.STDOUT and len(follower.output) == 1:
            sent = agent.request("POST", "/slots/1/signal",
                                 json.dumps({"run_id": "bg", "signal": 15}).encode())
    assert sent.json() == {"delivered": True, "running": True}
    assert follower.stdout == b"ready\ngot TERM\n"
    assert follower.exit is not None and follower.exit["exit_code"] == 9
    assert follower.exit["reason"] == "cancelled"


def test_20_mb_of_random_output_replays_with_the_same_digest(agent: Agent) -> None:
    script = ("import random, sys\nrng = random.Random(7)\n"
              "for i in range(320):\n"
              "    (sys.stderr if i % 5 == 0 else sys.stdout).buffer.write(rng.randbytes(65536))\n")
    streamed = agent.run(0, script, run_id="big", argv=[sys.executable])
    assert streamed.exit_code == 0 and len(streamed.stdout) + len(streamed.stderr) == 20 * MIB
    replayed = agent.replay(0, "big")
    for stream in ("stdout", "stderr"):
        assert (hashlib.sha256(getattr(replayed, stream)).hexdigest()
                == hashlib.sha256(getattr(streamed, stream)).hexdigest()), stream
    assert merged(replayed.output) == merged(streamed.output)
    middle = 10 * MIB + 12345
    assert merged(agent.replay(0, "big", middle).output) == from_offset(streamed.output, middle)


def accounted(result: Result) -> int:
    """The output bytes a stream stands for: those it holds and those it says were dropped."""
    return len(result.stdout) + len(result.stderr) + sum(d["dropped"] for d in result.dropped)


def test_past_its_limit_the_log_keeps_the_head_and_the_latest_and_says_what_it_dropped(
        tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root", "--max-output-mb", "1")
    lines = b"".join(b"%099d\n" % i for i in range(1, 50001))
    try:
        script = "for i in $(seq 50000); do printf '%099d\\n' $i; done; echo done >&2"
        streamed = agent.run(0, script, run_id="flood")
        # A client that falls more than the limit behind meets a hole too: it never holds
        # the run up.
        assert streamed.exit is not None and streamed.exit["exit_code"] == 0
        assert accounted(streamed) == 5_000_005 == streamed.exit["bytes"]
        kept = sum(f.stat().st_size for f in (agent.root / OUTPUT_FOLDER / "slot-0").iterdir())
        assert kept <= MIB + 64 * 1024
        replayed = agent.replay(0, "flood")
        assert len(replayed.dropped) == 1 and accounted(replayed) == 5_000_005
        hole = replayed.dropped[0]
        head, tail = (replayed.stdout[:hole["offset"] - hole["dropped"]],
                      replayed.stdout[hole["offset"] - hole["dropped"]:])
        assert head and lines.startswith(head) and tail and lines.endswith(tail)
        assert replayed.stderr == b"done\n" and replayed.exit == streamed.exit
        assert agent.state(0, "flood")["dropped"] == hole["dropped"]
        inside = agent.replay(0, "flood", len(head) + 10)
        assert inside.dropped == [{"offset": hole["offset"], "dropped": hole["offset"] - len(head) - 10}]
    finally:
        agent.stop()


def test_a_follower_that_reads_nothing_never_holds_the_run_up_and_later_meets_a_hole(
        tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root", "--max-output-mb", "1")
    try:
        script = ("until [ -e go ]; do sleep 0.01; done; "
                  "for i in $(seq 200000); do printf '%099d\\n' $i; done")
        frames = agent.frames(0, exec_body(script, run_id="flood", detach=True))
        assert next(frames)[0] == protocol.START
        (agent.slot(0) / "go").touch()
        assert wait_until(lambda: agent.state(0, "flood")["state"] == "ended", 60)
        late = collect(frames)
        assert late.exit is not None and late.exit["exit_code"] == 0
        assert late.dropped and accounted(late) == 20_000_000
    finally:
        agent.stop()


def test_where_the_disk_refuses_the_output_the_log_goes_on_in_memory(tmp_path: Path) -> None:
    small_files = ["bash", "-c", 'ulimit -f 256 && exec "$@"', "launcher"]  # 256 KiB a file
    agent = start_agent(tmp_path / "root", launcher=small_files)
    try:
        script = "for i in $(seq 30000); do printf '%099d\\n' $i; [ $((i % 7)) = 0 ] && echo $i >&2; done; exit 0"
        streamed = agent.run(0, script, run_id="full")
        assert streamed.exit_code == 0 and len(streamed.stdout) == 3_000_000
        sizes = [f.stat().st_size for f in (agent.root / OUTPUT_FOLDER / "slot-0").iterdir()]
        assert sizes and max(sizes) <= 256 * 1024 and sum(sizes) < len(streamed.stdout)
        for offset in (0, 256 * 1024 - 3, 1_000_001):
            replayed = agent.replay(0, "full", offset)
            assert merged(replayed.output) == from_offset(streamed.output, offset), offset
            assert replayed.dropped == [] and replayed.exit == streamed.exit
    finally:
        agent.stop()


def test_a_run_that_swaps_its_output_folder_for_a_link_cannot_make_the_agent_serve_or_remove_a_file(
        agent: Agent, tmp_path: Path) -> None:
    lure = tmp_path / "lure"
    lure.mkdir()
    (lure / "0000000000000000.frames").write_bytes(b"canary")
    folder = agent.root / OUTPUT_FOLDER / "slot-0"
    agent.run(0, f"rm -r {folder} && ln -s {lure} {folder} && echo swapped", run_id="swap")
    assert agent.replay(0, "swap").stdout == b"swapped\n"
    assert agent.run(0, "echo next", run_id="next").stdout == b"next\n"
    assert agent.replay(0, "next").stdout == b"next\n"
    assert (lure / "0000000000000000.frames").read_bytes() == b"canary"
    assert [p.name for p in lure.iterdir()] == ["0000000000000000.frames"]


def test_the_next_exec_in_the_slot_replaces_the_kept_run(agent: Agent) -> None:
    agent.run(0, "echo one", run_id="first")
    agent.run(0, "echo two", run_id="second")
    reply = agent.request("GET", "/slots/0/runs/first")
    assert reply.status == 404
    assert reply.json() == {"error": "slot 0 keeps no run 'first': a slot keeps only its last "
                                     "run, and its last run is 'second'"}
    assert agent.replay(0, "second").stdout == b"two\n"
    files = list((agent.root / OUTPUT_FOLDER / "slot-0").iterdir())
    assert [f.name for f in files] == ["0000000000000000.frames"]


def test_a_reset_keeps_the_runs_output(agent: Agent) -> None:
    agent.run(0, "echo kept; touch artifact", run_id="r1")
    assert agent.request("POST", "/slots/0/reset").status == 200
    assert list(agent.slot(0).iterdir()) == []
    assert agent.replay(0, "r1").stdout == b"kept\n"


@pytest.mark.parametrize("path", ["/slots/1/runs/r1", "/slots/1/runs/r1/output"])
def test_a_run_the_slot_does_not_keep_is_a_404_sentence(agent: Agent, path: str) -> None:
    reply = agent.request("GET", path)
    assert reply.status == 404
    assert reply.json() == {"error": "slot 1 keeps no run 'r1': a slot keeps only its last "
                                     "run, and it has run nothing since the agent started"}


@pytest.mark.parametrize("path", ["/slots/0/runs/r1", "/slots/0/runs/r1/output?offset=0"])
def test_the_run_routes_want_the_token(agent: Agent, path: str) -> None:
    agent.run(0, "echo secret", run_id="r1")
    for token in (None, "wrong"):
        reply = agent.request("GET", path, token=token)
        assert reply.status == 401 and b"secret" not in reply.body


@pytest.mark.parametrize("offset", ["-1", "x", "1.5", "", "%C2%B2", "6"])
def test_an_offset_past_the_output_or_not_a_number_is_refused(agent: Agent, offset: str) -> None:
    agent.run(0, "echo five", run_id="r1")
    reply = agent.request("GET", f"/slots/0/runs/r1/output?offset={offset}")
    assert reply.status == 400
    assert reply.json()["error"].startswith("offset must be a whole number of bytes from 0 to 5 "
                                            "(the run's output so far), got: ")


def test_health_lists_each_slots_run(agent: Agent) -> None:
    agent.run(1, "echo hi", run_id="r7")
    runs = agent.request("GET", "/health").json()["runs"]
    assert [(r["slot"], r["run_id"], r["state"], r["bytes"]) for r in runs] == [(1, "r7", "ended", 3)]


def test_the_agent_removes_the_kept_output_when_it_exits(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root")
    agent.run(0, "echo hi")
    assert agent.request("POST", "/shutdown").status == 200
    assert agent.process.wait(timeout=30) == 0
    agent.stop()
    assert not (agent.root / OUTPUT_FOLDER).exists()
