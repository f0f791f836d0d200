"""Malformed requests get a 4xx with a one-sentence JSON reason before anything runs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.agent_driver import TOKEN, Agent, Reply
from tests.kernel_driver import peak_rss

RUNS = {"run_id": "r1", "argv": ["touch", "ran"]}
_MISSING = object()


def _body(base: dict[str, Any], **fields: Any) -> bytes:
    body = {**base, **fields}
    return json.dumps({k: v for k, v in body.items() if v is not _MISSING}).encode()


def _assert_refused(reply: Reply, status: int = 400) -> str:
    assert reply.status == status, reply
    error = reply.json()
    assert list(error) == ["error"] and error["error"] and "\n" not in error["error"]
    return str(error["error"])


P = pytest.param
NOT_AN_OBJECT = [
    P(b"[]", id="list"), P(b"{", id="cut-short"), P(b"", id="empty"), P(None, id="no-body"),
    P(b"null", id="null"), P(b'"text"', id="string"), P(b"\xff\xfe{}", id="not-utf8"),
    P(b"[" * 100_000, id="deeply-nested"),
    P(b'{\n"run_id": "r1", "argv": ["touch", "ran"]}', id="json-over-two-lines"),
]
BAD_EXEC = [
    P(_body(RUNS, run_id=_MISSING), id="run_id-missing"),
    P(_body(RUNS, run_id=""), id="run_id-empty"),
    P(_body(RUNS, run_id=5), id="run_id-number"),
    P(_body(RUNS, argv=_MISSING), id="argv-missing"),
    P(_body(RUNS, argv=[]), id="argv-empty"),
    P(_body(RUNS, argv="touch ran"), id="argv-string"),
    P(_body(RUNS, argv=["touch", 1]), id="argv-number"),
    P(_body(RUNS, argv=["touch", "r\u0000an"]), id="argv-nul"),
    P(_body(RUNS, argv=["touch", "\ud800"]), id="argv-lone-surrogate"),
    P(_body(RUNS, env={"A=B": "x"}), id="env-name-with-equals"),
    P(_body(RUNS, env={"": "x"}), id="env-name-empty"),
    P(_body(RUNS, env={"A\u0000": "x"}), id="env-name-nul"),
    P(_body(RUNS, env={"A": "x\u0000"}), id="env-value-nul"),
    P(_body(RUNS, env={"A": "\udc00"}), id="env-value-lone-surrogate"),
    P(_body(RUNS, env={"A": 1}), id="env-value-number"),
    P(_body(RUNS, env=["A=x"]), id="env-list"),
    P(_body(RUNS, stdin="touch ran"), id="stdin-in-the-json"),
    P(_body(RUNS, argv=5) + b"\ntouch ran", id="argv-number-then-stdin"),
]


@pytest.mark.parametrize("body", NOT_AN_OBJECT + BAD_EXEC)
def test_a_malformed_exec_is_refused_before_anything_runs(agent: Agent, body: bytes | None) -> None:
    _assert_refused(agent.request("POST", "/slots/0/exec", body))
    assert not (agent.slot(0) / "ran").exists()
    assert agent.request("GET", "/health").json()["running"] == []


def test_a_refusal_says_which_field_was_wrong_and_what_it_should_be(agent: Agent) -> None:
    error = _assert_refused(agent.request("POST", "/slots/0/exec", _body(RUNS, argv="touch")))
    assert error == 'argv must be a non-empty list of strings, got: "touch"'
    error = _assert_refused(agent.request("POST", "/slots/0/exec", _body(RUNS, stdin="x")))
    assert error == ("stdin is the rest of the exec body, after the JSON line; "
                     "send it there instead of as a JSON field")
    error = _assert_refused(agent.request("POST", "/slots/0/exec", _body(RUNS, env={"A=B": "x"})))
    assert error == "env names must be non-empty and without '=', got: \"A=B\""


def test_a_refused_env_value_is_named_by_its_variable_and_never_quoted(agent: Agent) -> None:
    for value in ("s3cret\u0000canary", "s3cret\ud800canary", 7):
        error = _assert_refused(agent.request("POST", "/slots/0/exec",
                                              _body(RUNS, env={"API_KEY": value})))
        assert "API_KEY" in error and "not shown" in error and "s3cret" not in error, error


def test_argv_too_large_for_the_os_is_refused_and_a_program_that_cannot_run_says_why(
        agent: Agent) -> None:
    error = _assert_refused(agent.request("POST", "/slots/0/exec",
                                          _body(RUNS, argv=["echo", "x" * 200_000])))
    assert "E2BIG" in error
    (agent.slot(0) / "no-shebang").write_text("echo hi\n")
    (agent.slot(0) / "no-shebang").chmod(0o755)
    result = agent.run(0, "", argv=["./no-shebang"])
    assert result.exit is not None and result.exit["reason"] == "not-found"
    assert "Exec format error" in result.exit["error"]
    assert agent.request("GET", "/health").json()["running"] == []


def test_a_token_that_is_not_utf8_is_refused_as_a_wrong_token(agent: Agent) -> None:
    _assert_refused(agent.request("GET", "/health", token=b"\xff\xfe\x80"), 401)
    assert agent.request("GET", "/health").status == 200


@pytest.mark.parametrize(("route", "chunked", "named"), [
    ("exec", False, "the exec's JSON line"), ("exec", True, "the exec's JSON line"),
    ("signal", True, "the request body"),
], ids=["exec-declared", "exec-chunked", "signal-chunked"])
def test_json_over_the_limit_is_refused_without_reading_it_into_memory(
        agent: Agent, route: str, chunked: bool, named: str) -> None:
    body = json.dumps({**RUNS, "signal": 9, "env": {"BIG": "x" * (200 * 2**20)}}).encode()
    with peak_rss(agent.process.pid) as peak:
        before = peak[0]
        if chunked:
            body_sent: bytes | Iterator[bytes] = (body[i:i + 2**20] for i in range(0, len(body), 2**20))
        else:
            body_sent = body
        error = _assert_refused(agent.request("POST", f"/slots/0/{route}", body_sent), 413)
    assert error.startswith(f"{named} is larger than the agent takes (16 MiB)")
    assert peak[0] - before < 64 * 2**20
    assert not (agent.slot(0) / "ran").exists()
    assert agent.request("GET", "/health").status == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_as_its_content_encoding_is_refused(
        agent: Agent, encoding: str) -> None:
    headers = {"Content-Encoding": encoding}
    _assert_refused(agent.request("POST", "/slots/0/exec", _body(RUNS), headers=headers))
    _assert_refused(agent.request("PUT", "/slots/0/files/up.txt", b"not " + encoding.encode() * 99,
                                  headers=headers))
    assert not (agent.slot(0) / "ran").exists() and not (agent.slot(0) / "up.txt").exists()


def test_head_of_a_file_gives_its_size_without_a_body(agent: Agent) -> None:
    (agent.slot(0) / "f.txt").write_text("hello")
    assert agent.request("HEAD", "/slots/0/files/f.txt") == (200, b"")
    assert agent.request("GET", "/slots/0/files/f.txt") == (200, b"hello")
    assert "Traceback" not in agent.log


def test_unknown_routes_and_methods_get_a_json_reason(agent: Agent) -> None:
    error = _assert_refused(agent.request("GET", "/nowhere"), 404)
    assert error.startswith("the agent has no route '/v1/nowhere'; its routes are /v1/health, ")
    error = _assert_refused(agent.request("GET", "/slots/0/exec"), 405)
    assert error == "'/v1/slots/0/exec' does not take GET; use POST"
    _assert_refused(agent.request("GET", "/health", token=None), 401)


@pytest.mark.parametrize("path", ["/health", "/nowhere"])
def test_an_expect_header_other_than_100_continue_is_refused_even_if_not_utf8(
        agent: Agent, path: str) -> None:
    for expect in (b"bogus", b"\x80\xff"):
        _assert_refused(agent.request("GET", path, headers={"Expect": expect}), 417)


def test_expect_100_continue_gets_an_interim_answer_before_the_body_is_sent(agent: Agent) -> None:
    body = _body({"run_id": "r1", "argv": ["echo", "went on"]})
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/slots/0/exec HTTP/1.1\r\nHost: agent\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while b"went on" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"went on\n" in answer
