"""The modal backend on the real ``modal`` package, against the local stand-in of Modal's API."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from sandbox_magics import identity
from sandbox_magics.backends import make_backend
from sandbox_magics.backends.base import ExecRequest, Exited, Health, Output, Started
from sandbox_magics.backends.modal import ModalSandbox
from sandbox_magics.exceptions import ProfileError, SandboxLostError, SandboxStartError
from sandbox_magics.identity import Identity
from sandbox_magics.profiles import Profile
from tests.kernel_driver import pid_alive, wait_until
from tests.modal_standin.fixtures import CANARY_VALUE, Running, modal_env, standin  # noqa: F401,F811

ROOT = Path(__file__).resolve().parents[2]


def run(coro_fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(*args), timeout))


def profile(**fields: Any) -> Profile:
    modal_table = fields.pop("modal", {})
    return Profile(name=fields.pop("name", "mp"), backend="modal", slots_per_sandbox=2,
                   engine_tables={"modal": {"app_name": "tests", **modal_table}}, **fields)


async def started(p: Profile, me: Identity | None = None) -> ModalSandbox:
    me = me or Identity()
    backend = make_backend(p, me)
    tags = {**me.tags(p.name), identity.NAME: f"{p.name}-1"}
    sandbox = await backend.create(p, tags)
    assert isinstance(sandbox, ModalSandbox)
    return sandbox


async def collect(process: Any, on_output: Callable[[Output], Awaitable[None]] | None = None
                  ) -> tuple[list[Any], Exited]:
    events: list[Any] = []
    async for event in process:
        events.append(event)
        if isinstance(event, Output) and on_output is not None:
            await on_output(event)
    await process.aclose()
    assert isinstance(events[-1], Exited)
    return events, events[-1]


def pin(package: str) -> str:
    """The version of ``package`` that constraints.txt pins (what CI installs)."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip() == package:
            return version.strip()
    raise AssertionError(f"constraints.txt pins no {package}")


def text(events: list[Any], stream: str) -> str:
    return b"".join(e.data for e in events if isinstance(e, Output) and e.stream == stream).decode()


def test_the_installed_modal_is_the_pinned_one_and_the_stand_in_serves_every_rpc_it_calls(
        modal_env: Running) -> None:
    import modal
    pinned = pin("modal")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["modal"]
    assert len(extra) == 1 and SpecifierSet(extra[0][len("modal"):]).contains(pinned), extra
    assert modal.__version__ == pinned, (
        f"modal {modal.__version__} is installed but the backend and its stand-in are written "
        f"against {pinned}; re-check the stand-in against the new client, then move the pin.")

    async def scenario() -> None:
        sandbox = await started(profile(gpu="T4"))          # the V1 family
        await collect(await sandbox.exec(0, ExecRequest("r0", ("sh",), stdin="echo v1")))
        await sandbox.heartbeat({"extra": "1"})
        await sandbox.terminate()
        sandbox = await started(profile())                   # the V2 family
        events, _ = await collect(await sandbox.exec(0, ExecRequest("r1", ("sh",), stdin="echo hi")))
        await sandbox.upload(0, Path(__file__), "t.py")
        await sandbox.list_files(0)
        await sandbox.reset(0)
        await sandbox.terminate()
    run(scenario)
    unserved = modal_env.standin.unserved
    assert not unserved, (f"the modal client called RPCs the stand-in does not serve: "
                          f"{', '.join(sorted(set(unserved)))}")


def test_exec_streams_stdout_and_stderr_chunk_by_chunk_with_the_body_on_stdin(
        modal_env: Running, tmp_path: Path) -> None:
    go = tmp_path / "go"
    body = f"""
echo "first line"
echo "to stderr" >&2
while [ ! -e {go} ]; do sleep 0.02; done
echo "after the handshake"
exit 3
"""

    async def scenario() -> tuple[list[Any], Exited, bool]:
        sandbox = await started(profile())
        process = await sandbox.exec(1, ExecRequest("r1", ("bash",), env={"MODE": "x"}, stdin=body))
        seen_before_end = False

        async def on_output(event: Output) -> None:
            nonlocal seen_before_end
            if b"first line" in event.data:
                seen_before_end = True
                go.touch()
        events, exited = await collect(process, on_output)
        await sandbox.terminate()
        return events, exited, seen_before_end
    events, exited, seen = run(scenario)
    assert seen, "the first line did not arrive while the command still ran"
    assert text(events, "stdout") == "first line\nafter the handshake\n"
    assert text(events, "stderr") == "to stderr\n"
    assert isinstance(events[0], Started) and events[0].pgid
    assert (exited.exit_code, exited.signal, exited.workspace_empty) == (3, None, True)


def test_a_large_body_goes_through_stdin_past_the_64_kib_argument_cap(modal_env: Running) -> None:
    body = "\n".join(f"echo line-{i}-{'x' * 60}" for i in range(3000)) + "\n"   # ~200 KiB

    async def scenario() -> tuple[list[Any], Exited]:
        sandbox = await started(profile())
        try:
            return await collect(await sandbox.exec(0, ExecRequest("r2", ("sh",), stdin=body)))
        finally:
            await sandbox.terminate()
    events, exited = run(scenario)
    assert len(body) > 64 * 1024 and exited.exit_code == 0
    assert text(events, "stdout").count("\n") == 3000


def test_signal_reaches_the_runs_process_group_through_a_second_exec(
        modal_env: Running, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    body = f"sleep 300 & echo $! > {marker}; echo ready; wait\n"

    groups: list[int] = []

    async def scenario() -> tuple[Exited, int, int]:
        sandbox = await started(profile())
        process = await sandbox.exec(0, ExecRequest("r3", ("bash",), stdin=body))
        events: list[Any] = []
        async for event in process:
            events.append(event)
            if isinstance(event, Output) and b"ready" in event.data:
                groups.append(os.getpgid(int(marker.read_text())))
                assert await process.signal(signal.SIGTERM) is True
        await process.aclose()
        assert await process.signal(signal.SIGTERM) is False      # it has ended
        await sandbox.terminate()
        started_event = next(e for e in events if isinstance(e, Started))
        return events[-1], started_event.pgid, int(marker.read_text())
    exited, pgid, child = run(scenario)
    assert (exited.exit_code, exited.signal) == (-signal.SIGTERM, signal.SIGTERM)
    assert groups == [pgid], "the run's child was not in the recorded process group"
    assert wait_until(lambda: not pid_alive(child), 5), "the background child survived the group signal"


def test_a_missing_interpreter_is_a_not_found_exit(modal_env: Running) -> None:
    async def scenario() -> Exited:
        sandbox = await started(profile())
        try:
            return (await collect(await sandbox.exec(0, ExecRequest("r4", ("no-such-interpreter",),
                                                                    stdin="x"))))[1]
        finally:
            await sandbox.terminate()
    exited = run(scenario)
    assert exited.reason == "not-found" and "no-such-interpreter" in (exited.error or "")


def test_a_sandbox_terminated_underneath_a_run_fails_it_with_modals_reason(modal_env: Running, tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    async def scenario() -> tuple[str | None, Any]:
        sandbox = await started(profile())
        process = await sandbox.exec(0, ExecRequest("r5", ("sh",), stdin=f"echo $$ > {marker}; echo ready; sleep 300"))
        it = process.__aiter__()
        while not isinstance(event := await it.__anext__(), Output):
            pass
        assert event.data == b"ready\n"
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(modal_env.standin.terminate(
            sandbox.sb.object_id, "the container ran out of memory (OOM)"), modal_env.loop))
        with pytest.raises(SandboxLostError) as lost:
            async for _ in it:
                pass
        await process.aclose()
        health = await sandbox.health()
        await sandbox.terminate()
        return str(lost.value), health
    message, health = run(scenario)
    assert message == ("Modal sandbox mp-1 ended while run r5 ran: Modal terminated it (the "
                       "container ran out of memory (OOM)).")
    assert health == Health(False, "Modal terminated it (the container ran out of memory (OOM))")
    assert wait_until(lambda: not pid_alive(int(marker.read_text())), 5)


def test_every_sandbox_has_a_name_tags_timeout_and_idle_timeout(modal_env: Running) -> None:
    me = Identity()

    async def scenario() -> ModalSandbox:
        return await started(profile(idle_timeout=90, lifetime=900), me)
    sandbox = run(scenario)
    box = modal_env.standin.boxes[sandbox.sb.object_id]
    assert box.name == f"mp-1-{me.client_id}"
    assert box.tags[identity.CLIENT] == me.client_id and box.tags[identity.NAME] == "mp-1"
    assert (box.definition.timeout_secs, box.definition.idle_timeout_secs) == (900, 180)
    run(sandbox.terminate)


def test_modals_idle_limit_outlasts_two_heartbeats_so_a_warm_sandbox_is_kept(
        modal_env: Running) -> None:
    """Execs are activity to Modal, health polls are not; the pool's heartbeat is an exec a
    minute, so an idle limit under two minutes would end a warm (min_sandboxes) sandbox."""
    sandbox = run(started, profile(idle_timeout=10, min_sandboxes=1))
    box = modal_env.standin.boxes[sandbox.sb.object_id]
    assert box.definition.idle_timeout_secs == 120
    run(sandbox.terminate)


def test_settings_are_validated_with_the_profile_and_key_named() -> None:
    from sandbox_magics.backends import settings_of
    with pytest.raises(ProfileError, match=r"profile 'mp' key 'modal.workdir' must be an absolute path"):
        settings_of(profile(modal={"workdir": "relative"}))
    with pytest.raises(ProfileError, match=r"'modal.bogus' is not a modal setting"):
        settings_of(profile(modal={"bogus": 1}))
    with pytest.raises(ProfileError, match=r"'modal.timeout' must be at most 86400 seconds"):
        settings_of(profile(modal={"timeout": 100000}))
    settings = settings_of(profile(modal={"volumes": {"data": "/data"}, "pip": ["numpy"]}))
    assert hash(settings) and settings.volumes["data"] == "/data"


def test_no_credentials_is_one_sentence_saying_how_to_create_them(
        modal_env: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    with pytest.raises(SandboxStartError) as error:
        run(started, profile())
    assert str(error.value) == ("No Modal credentials were found: run `modal token new` (or set "
                                "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET) and try again.")


@pytest.mark.parametrize("fields, expected", [
    ({"image": "registry.example/does-not-exist:1"},
     r"The image of profile 'mp' \(registry.example/does-not-exist:1\) failed to build on Modal: "
     r".*does-not-exist.*; check its image and pip settings\."),
    ({"gpu": "V100"}, r"Modal rejected GPU type 'V100' of profile 'mp': GPU type 'V100' is not "
                      r"available.*; set the profile's gpu to a type Modal offers\."),
    ({"secrets": ("nope",)}, r"Modal could not find something profile 'mp' names: Secret 'nope' "
                             r"not found.*"),
    ({"modal": {"pip": ["sandbox-magics-slow-build-30"], "build_timeout": 1}},
     r"The image of profile 'mp' did not build within 1 s \(the modal table's build_timeout\)\."),
])
def test_start_failures_are_one_readable_sentence(modal_env: Running, fields: dict[str, Any],
                                                  expected: str) -> None:
    with pytest.raises(SandboxStartError) as error:
        run(started, profile(**fields))
    assert re.fullmatch(expected, str(error.value)), str(error.value)
    assert "\n" not in str(error.value)


def test_a_quota_refusal_is_one_sentence(modal_env: Running) -> None:
    modal_env.standin.max_running = len(modal_env.standin.running())
    try:
        with pytest.raises(SandboxStartError) as error:
            run(started, profile())
    finally:
        modal_env.standin.max_running = None
    assert re.fullmatch(r"Modal refused a new sandbox for profile 'mp', a quota or rate limit: "
                        r"Sandbox quota exceeded.*; wait for sandboxes to end, lower "
                        r"max_sandboxes, or raise the limit in your Modal workspace\.", str(error.value))


def test_discover_finds_running_sandboxes_with_our_tags(modal_env: Running) -> None:
    me = Identity()

    async def scenario() -> tuple[list[Any], list[Any]]:
        p = profile(name="disc")
        first = await started(p, me)
        await started(profile(name="other"), me)
        backend = make_backend(p, me)
        found = await backend.discover(p)
        await first.terminate()
        return found, await backend.discover(p)
    found, after = run(scenario)
    assert [s.tags[identity.NAME] for s in found] == ["disc-1"]
    assert found[0].tags[identity.CLIENT] == me.client_id and after == []


def test_a_profile_secret_reaches_the_command_and_its_value_never_our_process(
        modal_env: Running) -> None:
    async def scenario() -> tuple[list[Any], Exited, ModalSandbox]:
        sandbox = await started(profile(secrets=("canary",)))
        events, exited = await collect(await sandbox.exec(0, ExecRequest(
            "r6", ("sh",), stdin='[ -n "$CANARY_SECRET" ] && echo "secret of ${#CANARY_SECRET} chars"')))
        await sandbox.terminate()
        return events, exited, sandbox
    events, exited, sandbox = run(scenario)
    assert text(events, "stdout") == f"secret of {len(CANARY_VALUE)} chars\n"
    assert CANARY_VALUE not in repr(events) + repr(sandbox) + repr(sandbox.describe())


def test_files_move_through_the_sandbox_filesystem(modal_env: Running, tmp_path: Path) -> None:
    local = tmp_path / "in.txt"
    local.write_text("payload\n")

    async def scenario() -> tuple[list[Any], list[Any], str, list[Any]]:
        sandbox = await started(profile())
        await sandbox.upload(1, local, "data/in.txt")
        events, _ = await collect(await sandbox.exec(1, ExecRequest(
            "r7", ("sh",), stdin="cat data/in.txt; mkdir -p out; echo result > out/r.txt")))
        listed = await sandbox.list_files(1)
        await sandbox.download(1, "out/r.txt", tmp_path / "back" / "r.txt")
        with pytest.raises(Exception, match="no such file"):
            await sandbox.download(1, "missing.txt", tmp_path / "missing.txt")
        await sandbox.reset(1)
        after = await sandbox.list_files(1)
        await sandbox.terminate()
        return events, listed, (tmp_path / "back" / "r.txt").read_text(), after
    events, listed, downloaded, after = run(scenario)
    assert text(events, "stdout") == "payload\n" and events[-1].workspace_empty is False
    assert sorted(f.path for f in listed) == ["data/in.txt", "out/r.txt"]
    assert all(f.size > 0 and f.mtime > 0 for f in listed)
    assert downloaded == "result\n" and after == []


def _live_skip_reason() -> str | None:
    if os.environ.get("MODAL_LIVE") != "1":
        return ("live Modal test, opt-in: set MODAL_LIVE=1 with Modal credentials to run it "
                "(it starts one small sandbox on your account)")
    config = Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")
    if not os.environ.get("MODAL_TOKEN_ID") and not (config.exists() and "token_id" in config.read_text()):
        return "MODAL_LIVE=1 but no Modal credentials: run `modal token new` or set MODAL_TOKEN_ID/SECRET"
    return None


@pytest.mark.skipif(_live_skip_reason() is not None, reason=str(_live_skip_reason()))
def test_live_modal_runs_a_command_with_stdin_files_tags_discover_and_terminate(
        tmp_path: Path) -> None:
    """On the real Modal: the same calls the stand-in serves, end to end."""
    from tests.modal_standin.fixtures import reset_modal_client
    reset_modal_client()
    p = profile(modal={"app_name": "sandbox-magics-tests"}, lifetime=600)
    me = Identity()
    (tmp_path / "in.txt").write_text("uploaded\n")

    async def scenario() -> tuple[str, str, bool, bool, str]:
        sandbox = await started(p, me)
        try:
            events, _ = await collect(await sandbox.exec(0, ExecRequest(
                "live", ("sh",), stdin="cat in.txt; echo from stdin; echo made > out.txt",
                files={"note.txt": "a small file\n"})))
            await sandbox.upload(1, tmp_path / "in.txt", "in.txt")
            events, _ = await collect(await sandbox.exec(1, ExecRequest(
                "live2", ("sh",), stdin="cat in.txt; echo from stdin; echo made > out.txt")))
            await sandbox.download(1, "out.txt", tmp_path / "out.txt")
            tagged = sandbox.tags[identity.CLIENT] == me.client_id
            backend = make_backend(p, me)
            found = [s.id for s in await backend.discover(p)]
            return (text(events, "stdout"), (tmp_path / "out.txt").read_text(), tagged,
                    sandbox.id in found, sandbox.id)
        finally:
            await sandbox.terminate()
    out, downloaded, tagged, discovered, sandbox_id = run(scenario, timeout=600)
    assert out == "uploaded\nfrom stdin\n" and downloaded == "made\n"
    assert tagged and discovered

    async def listed_after() -> list[str]:
        return [s.id for s in await make_backend(p, me).discover(p)]
    assert sandbox_id not in run(listed_after, timeout=120), "terminate left it running"


def test_a_detached_run_whose_owner_stops_heartbeating_is_stopped_after_the_window(
        modal_env: Running, tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"

    async def scenario() -> tuple[list[Any], list[Any], Exited, int]:
        sandbox = await started(profile(heartbeat_window=2))
        process = await sandbox.exec(0, ExecRequest(
            "bg", ("bash",), stdin=f"sleep 300 & echo $! > {marker}; echo up; wait",
            detach=True))
        async for event in process:
            if isinstance(event, Output) and b"up" in event.data:
                break
        await process.aclose()  # the kernel goes; the run goes on, then its window passes
        kept = await sandbox.kept_runs()
        _, exited = await collect(await sandbox.follow(0, "bg"))
        after = await sandbox.kept_runs()
        await sandbox.terminate()
        return kept, after, exited, int(marker.read_text())
    kept, after, exited, child = run(scenario)
    assert [(k.run_id, k.slot, k.running) for k in kept] == [("bg", 0, True)]
    assert exited.reason == "owner-gone" and exited.signal is not None, exited
    assert after == [], "a run followed to its end is still listed as kept"
    assert not pid_alive(child), "the run's child outlived the stop"
