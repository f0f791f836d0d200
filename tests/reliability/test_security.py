"""Security: the agent's token on every route, the workspace's walls on every file route and
in artifact collection, bytes passed intact or refused (never read by a shell of ours), and
a canary secret that shows nowhere.

What tests/agent/ already covers is not repeated: the token on two routes and a token that
is not UTF-8 (test_agent.py, test_requests.py); five escape paths on GET/PUT and a hard link
on GET/PUT/listing/reset (test_agent.py, test_files.py); random requests (test_fuzz.py).
Here the routes come from the agent's own router, so a route added later is checked too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_magics import Client, ProfileError, RunState, load_profiles
from sandbox_magics.agent.app import make_app
from sandbox_magics.exceptions import RunFailedError
from tests.agent.agent_driver import TOKEN, Agent, exec_body, start_agent
from tests.conftest import kernel_env
from tests.kernel_driver import Kernel

CANARY = "canary-5ec7e7-" + "q" * 12
PROFILE_CANARY = "canary-pr0f11e-" + "z" * 12
CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = start_agent(tmp_path / "root")
    yield a
    a.stop()


# ----------------------------------------------------------------------------- the token

def agent_routes(root: Path) -> list[tuple[str, str]]:
    """(method, path) of every route of the agent's app, placeholders filled in; the
    catch-all route is tried with every method on a path no other route takes."""
    app = make_app("unused", root, 1, asyncio.Event())
    fill = {"{slot}": "0", "{run_id}": "r1", "{path}": "target.txt", "{tail}": "v1/nowhere"}
    routes = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        for placeholder, value in fill.items():
            path = path.replace(placeholder, value)
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] if route.method == "*" \
            else [route.method]
        routes += [(method, path) for method in methods]
    return routes


def body_for(method: str, path: str) -> bytes | None:
    """A body the route would act on if the token were right."""
    if path.endswith("/exec"):
        return exec_body("touch pwned")
    if path.endswith("/signal"):
        return json.dumps({"run_id": "r1", "signal": 9}).encode()
    if method in ("PUT", "POST"):
        return b"pwned"
    return None


WRONG_TOKENS = {
    "none": (None, {}),
    "wrong": ("wrong", {}),
    "longer": (TOKEN + "x", {}),
    "shorter": (TOKEN[:-1], {}),
    "no scheme": (None, {"Authorization": TOKEN}),
    "basic": (None, {"Authorization": "Basic " + TOKEN}),
    "twice": (None, {"Authorization": f"Bearer {TOKEN}, Bearer {TOKEN}"}),
    "token in query": (None, {}),
}


def test_every_route_of_the_agent_refuses_a_missing_or_wrong_token_before_acting(
        agent: Agent, tmp_path: Path) -> None:
    target = agent.slot(0) / "target.txt"
    target.write_text("keep")
    routes = agent_routes(tmp_path / "routes")
    assert {path for _, path in routes} >= {"/v1/health", "/v1/shutdown",
                                            "/v1/slots/0/exec", "/v1/slots/0/files/target.txt"}
    refused = 0
    for method, path in routes:
        for kind, (token, headers) in WRONG_TOKENS.items():
            sent = path + (f"?token={TOKEN}" if kind == "token in query" else "")
            reply = agent.request(method, sent.removeprefix("/v1"), body_for(method, path),
                                  token=token, headers=headers)
            assert reply.status == 401, (method, sent, kind, reply)
            if method != "HEAD":
                assert "bearer token is missing or wrong" in reply.json()["error"]
            refused += 1
    print(f"\nsecurity: {refused} requests with no or a wrong token on {len(routes)} "
          f"route/method pairs: all 401")
    assert sorted(p.name for p in agent.slot(0).iterdir()) == ["target.txt"]
    assert target.read_text() == "keep" and agent.process.poll() is None
    assert agent.request("GET", "/health").status == 200


# ------------------------------------------------------------------- the workspace walls

ESCAPES = [
    "..%2Fescape.txt", "..%2F..%2Fescape.txt", "a%2F..%2F..%2Fescape.txt", "%2Fetc%2Fpasswd",
    "%2F%2Fetc%2Fpasswd", "%2e%2e%2Fescape.txt", "..%5Cescape.txt",
    "sub%2F..%2F..%2F..%2Fescape.txt", "nul%00.txt", "dirlink%2Fsecret.txt", "filelink",
    "hardlink", "dirlink", "deep%2Fhardlink2",
]


@pytest.fixture
def walled(tmp_path: Path) -> Iterator[tuple[Agent, Path]]:
    """An agent whose slot 0 holds every kind of way out to ``outside/``."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(CANARY)
    agent = start_agent(tmp_path / "root")
    slot = agent.slot(0)
    (slot / "dirlink").symlink_to(outside)
    (slot / "filelink").symlink_to(outside / "secret.txt")
    os.link(outside / "secret.txt", slot / "hardlink")
    (slot / "deep").mkdir()
    os.link(outside / "secret.txt", slot / "deep" / "hardlink2")
    yield agent, outside
    agent.stop()


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_file_route_refuses_every_way_out_of_the_workspace(
        walled: tuple[Agent, Path], tmp_path: Path) -> None:
    agent, outside = walled
    before = snapshot(outside)
    file_routes = [(m, p) for m, p in agent_routes(tmp_path / "routes") if "target.txt" in p]
    assert {m for m, _ in file_routes} >= {"GET", "HEAD", "PUT"}
    tried = 0
    for method, route in file_routes:
        for escape in ESCAPES:
            path = route.replace("target.txt", escape).removeprefix("/v1")
            reply = agent.request(method, path, b"overwritten" if method == "PUT" else None)
            assert reply.status in (400, 403, 404, 409), (method, escape, reply)
            assert CANARY.encode() not in reply.body, (method, escape)
            tried += 1
    print(f"\nsecurity: {tried} requests on {len(file_routes)} file routes through "
          f"{len(ESCAPES)} ways out: all refused, nothing outside read or changed")
    assert snapshot(outside) == before
    assert not (agent.root / "escape.txt").exists() and not (agent.root.parent / "escape.txt").exists()
    listing = agent.request("GET", "/slots/0/files").json()["files"]
    assert listing == [], listing
    lookalike = agent.request("PUT", "/slots/0/files/%252e%252e%2Fescape.txt", b"inside")
    assert lookalike.status == 200 and (agent.slot(0) / "%2e%2e" / "escape.txt").read_bytes() == b"inside"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    path = tmp_path / "profiles.toml"
    path.write_text(f"""
[profiles.default]
slots_per_sandbox = 2
max_sandboxes = 1
env = {{ PROFILE_TOKEN = "{PROFILE_CANARY}" }}

[profiles.default.local]
workspace_base = "{tmp_path / 'ws'}"
""")
    c = Client(path)
    yield c
    c.shutdown()


def test_collection_downloads_and_uploads_never_follow_a_link_out(
        client: Client, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text(CANARY)
    before = snapshot(outside)
    got = tmp_path / "got"
    run = client.run(f"ln -s {outside} dirlink; ln -s {secret} filelink; ln {secret} hardlink; "
                     "echo mine > mine.txt", session="links",
                     downloads=[(name, str(got / name)) for name in
                                ("dirlink/secret.txt", "filelink", "hardlink", "mine.txt")])
    assert [a.path for a in run.artifacts] == ["mine.txt"]
    assert all(CANARY.encode() not in a.read_bytes() for a in run.artifacts)
    assert sorted(p.name for p in got.iterdir()) == ["mine.txt"]
    assert len([n for n in run.notices if "not copied" in n]) == 3, run.notices
    routed = client.run("true", check=False, downloads=[("../../../health", str(got / "health"))])
    assert any("must not contain '..'" in n for n in routed.notices), routed.notices
    assert not (got / "health").exists()
    upload = tmp_path / "upload.txt"
    upload.write_text("overwritten")
    onto = client.run("true", session="links", check=False,
                      uploads=[(str(upload), "hardlink")])
    assert onto.state is RunState.ERROR and "hard links" in (onto.error or ""), onto.error
    again = client.run("true", session="links", check=False, uploads=[(str(upload), "filelink")])
    assert again.state is RunState.ERROR and "symlink" in (again.error or ""), again.error
    assert snapshot(outside) == before


# ------------------------------------------------------------- bytes intact, or refused

AWKWARD = "q'uo\"te $(touch pwned-dollar) `touch pwned-tick` ${HOME} \\ ; | & * \n2nd line\ttab é"
AWKWARD_PATH = "q'uo\"te $(touch pwned-dollar) `touch pwned-tick` ${HOME} ; | & * \ttab é.txt"


def no_pwned(client: Client) -> None:
    assert client.run("ls", check=True).stdout == ""


def test_code_env_and_paths_reach_the_run_byte_for_byte_and_no_shell_of_ours_reads_them(
        client: Client, tmp_path: Path) -> None:
    code = AWKWARD + "\x00 after a NUL\n"
    assert client.run(code, "cat").stdout == code
    printed = client.run("import os, sys; sys.stdout.write(repr(os.environ['AWKWARD']))",
                         "python", env={"AWKWARD": AWKWARD})
    assert printed.stdout == repr(AWKWARD)
    assert client.run('printf %s "$AWKWARD"', env={"AWKWARD": AWKWARD}).stdout == AWKWARD
    local = tmp_path / "in.bin"
    local.write_bytes(b"payload\x00\xff")
    back = tmp_path / "back.bin"
    moved = client.run("import os; print(repr(os.listdir('.')))", "python",
                       uploads=[(str(local), AWKWARD_PATH)], downloads=[(AWKWARD_PATH, str(back))])
    assert moved.stdout.strip() == repr([AWKWARD_PATH]) and back.read_bytes() == b"payload\x00\xff"
    newline = client.run("true", uploads=[(str(local), "new\nline.txt")],
                         downloads=[("new\nline.txt", str(tmp_path / "nl.bin"))])
    assert (tmp_path / "nl.bin").read_bytes() == b"payload\x00\xff", newline.notices
    names = [AWKWARD_PATH, "new\nline.txt", "plain.txt"]
    made = client.run(f"import pathlib\nfor name in {names!r}:\n    pathlib.Path(name).write_text(name)",
                      "python")
    assert {a.path: a.read_bytes().decode() for a in made.artifacts} == {n: n for n in names}, \
        made.notices
    no_pwned(client)


@pytest.mark.parametrize(("options", "refusal"), [
    ({"interpreter": "bash -c 'touch pwned'"}, "cannot be run in the sandbox"),
    ({"interpreter": "$(touch pwned)"}, "cannot be run in the sandbox"),
    ({"interpreter": "`touch pwned`"}, "cannot be run in the sandbox"),
    ({"interpreter": "ba\x00sh"}, "NUL"),
    ({"env": {"V": "x\x00$(touch pwned)"}}, "NUL"),
    ({"env": {"V": "\udc80"}}, "not valid Unicode"),
    ({"env": {"A=B": "x"}}, "'='"),
    ({"env": {"": "x"}}, "non-empty"),
    ({"uploads": [("IN", "a\x00b")]}, "relative to the workspace"),
    ({"uploads": [("IN", "../up")]}, "'..'"),
    ({"uploads": [("IN", "/etc/up")]}, "relative to the workspace"),
    ({"uploads": [("IN", "back\\slash")]}, "relative to the workspace"),
], ids=["argv-words", "argv-dollar", "argv-backtick", "argv-nul", "env-nul", "env-surrogate",
        "env-equals", "env-empty", "path-nul", "path-dotdot", "path-absolute", "path-backslash"])
def test_what_no_process_can_be_given_is_refused_with_a_sentence_before_running(
        client: Client, tmp_path: Path, options: dict[str, Any], refusal: str) -> None:
    local = tmp_path / "in.txt"
    local.write_text("x")
    if "uploads" in options:
        options = {"uploads": [(str(local), remote) for _, remote in options["uploads"]]}
    run = client.run("touch pwned-by-the-code", check=False, **options)
    assert run.state is RunState.ERROR, (run, run.stdout)
    assert refusal in (run.error or ""), run.error
    message = run.failure_message()
    assert "\n" not in message and len(message) < 400, message
    no_pwned(client)


# ------------------------------------------------------------------- the canary secret

def everything_shown(client: Client) -> str:
    """Every text the client shows of its runs, profiles and pools."""
    runs = client.runs()
    profiles = client.profiles()
    texts = [repr(client), str(client.status()), runs.to_string(), runs.to_html(),
             runs.to_json(date_format="iso"), profiles.to_string(), profiles.to_html(),
             profiles.to_json()]
    for run in client.manager.runs:
        texts += [repr(run), repr(run.spec), str(run.error), run.failure_message(),
                  *run.notices]
        try:
            run.check()
        except RunFailedError as exc:
            texts.append(str(exc))
    for pool in client.manager.pools.values():
        texts += [repr(pool), repr(pool.profile), repr(pool.backend),
                  *(repr(r.sandbox) for r in pool.sandboxes)]
    return "\n".join(texts)


def agent_logs(client: Client) -> str:
    roots = [Path(box["root"]) for pool in client.status() for box in pool["sandboxes"]
             if "root" in box]
    return "\n".join((root / "agent.log").read_text(errors="replace") for root in roots)


def test_a_canary_secret_shows_in_no_log_repr_frame_status_or_error(client: Client) -> None:
    env = {"API_TOKEN": CANARY}
    used = client.run('[ "$API_TOKEN" = "$1" ] || [ ${#API_TOKEN} -gt 0 ] && '
                      'echo "token of ${#API_TOKEN} chars, profile ${#PROFILE_TOKEN}"', env=env)
    assert used.stdout == f"token of {len(CANARY)} chars, profile {len(PROFILE_CANARY)}\n"
    runs = [
        client.run("exit 3", env=env, check=False),
        client.run("sleep 30", env=env, timeout=0.5, check=False),
        client.run("true", env={**env, "BROKEN": CANARY + "\x00"}, check=False),
        client.run("true", env={**env, "BROKEN": "\udc80" + CANARY}, check=False),
        client.run("true", env={**env, f"PASTED={CANARY}": "x"}, check=False),
        client.run("true", "no-such-interpreter", env=env, check=False),
    ]
    assert [r.state for r in runs] == [RunState.FAILED, RunState.TIMED_OUT, RunState.ERROR,
                                       RunState.ERROR, RunState.ERROR, RunState.ERROR]
    assert "'PASTED=…'" in (runs[4].error or ""), runs[4].error
    cancelled = client.submit("sleep 30", env=env, raise_error=False)
    client.cancel(cancelled)
    shown = everything_shown(client) + agent_logs(client)
    for secret in (CANARY, PROFILE_CANARY):
        assert secret not in shown, re.findall(rf".{{0,80}}{secret}.{{0,20}}", shown)


def test_a_bad_env_name_in_a_profiles_file_is_shown_up_to_its_equals_sign(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(f'[profiles.pasted]\nenv = {{ "TOKEN={CANARY}" = "x" }}\n')
    with pytest.raises(ProfileError) as info:
        load_profiles(path, environ={})
    assert "'TOKEN=…'" in str(info.value) and CANARY not in str(info.value), str(info.value)


def test_a_canary_secret_shows_in_no_message_a_kernel_sends(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f"""
[profiles.default]
slots_per_sandbox = 2
max_sandboxes = 1
env = {{ PROFILE_TOKEN = "{PROFILE_CANARY}" }}
""")
    k = Kernel(kernel_env(profiles, tmp_path / "ws"))
    try:
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        (tmp_path / "secret").write_text(CANARY)
        k.execute(f"secret = open({str(tmp_path / 'secret')!r}).read()")
        cells = [
            '%%sandbox bash --env "API_TOKEN=$secret"\necho "${#API_TOKEN} ${#PROFILE_TOKEN}"',
            '%%sandbox bash --bg --name canary --env "API_TOKEN=$secret"\necho bg ${#API_TOKEN}',
            "%sandbox wait canary",
            '%%sandbox bash --env "API_TOKEN=$secret"\nexit 4',
            "%%sandbox bash --env API_TOKEN={secret}\ntrue",
            "%sandbox runs", "%sandbox profiles", "%sandbox status", "%sandbox logs canary",
            f"print(repr({CLIENT}.runs()), {CLIENT}.status(), repr({CLIENT}.get_run('canary')))",
            '%%sandbox bash --env "MY-TOKEN=$secret"\ntrue',
            '%%sandbox bash --env "$secret"\ntrue',
            '%%sandbox bash --env "API_TOKEN=$secret\ntrue',
        ]
        replies = [k.execute(cell) for cell in cells]
        refused = [reply.usage_error for reply in replies[-3:]]
        assert all(refused) and "'MY-TOKEN'" in refused[0], refused
        assert replies[0].stdout == f"{len(CANARY)} {len(PROFILE_CANARY)}\n"
        assert replies[3].error is not None and replies[3].error["ename"] == "RunFailedError"
        assert k.drain_until(lambda: f"bg {len(CANARY)}" in json.dumps(k.widgets()), 10), \
            "the --bg run's log view never showed its output"
        sent = json.dumps([msg for _, msg in k.messages], default=str)
        assert CANARY not in sent and PROFILE_CANARY not in sent
        assert "PROFILE_TOKEN" in sent      # the name shows (in %sandbox profiles), not the value
    finally:
        k.execute("%sandbox shutdown", timeout=120)
        k.shutdown()
