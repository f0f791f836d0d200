"""The magic line parser without a kernel: shell word splitting, flags, and a fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from sandbox_magics.magics._args import parse_downloads, parse_env, parse_uploads, split_line
from sandbox_magics.magics.sandbox import SandboxMagics, _captures, _parse

PARSERS = [SandboxMagics.sandbox, *SandboxMagics._commands.values()]


@pytest.mark.parametrize(("line", "words"), [
    ("", []),
    ("  \t ", []),
    ("bash", ["bash"]),
    ('--env "MSG=a b"', ["--env", "MSG=a b"]),
    ("--name 'my run'", ["--name", "my run"]),
    ("--env A=c\\ d", ["--env", "A=c d"]),
    ('--env "Q=say \\"hi\\""', ["--env", 'Q=say "hi"']),
    ("--env 'A=it'\"'\"'s'", ["--env", "A=it's"]),
    ("--env 'A=$HOME' --env 'B=\\n'", ["--env", "A=$HOME", "--env", "B=\\n"]),
    ("--env A=x#y # kept", ["--env", "A=x#y", "#", "kept"]),
    ('--name ""', ["--name", ""]),
    ("--name 'café €'\n--bg", ["--name", "café €", "--bg"]),
])
def test_line_splits_into_words_as_a_posix_shell_does(line: str, words: list[str]) -> None:
    assert split_line(line) == words


@pytest.mark.parametrize(("line", "reason"), [
    ('--name "my run', "a quote is not closed"),
    ("logs 'my run", "a quote is not closed"),
    ('--env "A=b\\', "it ends with a backslash that escapes nothing"),
    ("wait r1\\", "it ends with a backslash that escapes nothing"),
])
def test_bad_quoting_is_one_usage_error_sentence(line: str, reason: str) -> None:
    with pytest.raises(UsageError) as caught:
        split_line(line)
    assert str(caught.value) == ("Cannot split the line into words (it is not shown: $var and "
                                 f"{{expr}} may have put a secret in it): {reason}; check the quotes.")


@pytest.mark.parametrize(("line", "pairs", "named"), [
    ('--env "A=s3cret', None, None),
    ("--env MY-TOKEN=s3cret", ["MY-TOKEN=s3cret"], "'MY-TOKEN'"),
    ("--env =s3cret", ["=s3cret"], "''"),
    ("--env A=1 --env s3cret", ["A=1", "s3cret"], "without '='"),
], ids=["unclosed-quote", "bad-name", "empty-name", "no-equals"])
def test_a_refused_env_pair_names_its_name_and_never_shows_its_value(
        line: str, pairs: list[str] | None, named: str | None) -> None:
    with pytest.raises(UsageError) as caught:
        args = _parse(SandboxMagics.sandbox, line)
        assert args.env == pairs
        parse_env(args.env)
    message = str(caught.value)
    assert "s3cret" not in message and "\n" not in message, message
    assert named is None or named in message, message


def test_cell_line_flags_come_out_unquoted() -> None:
    args = _parse(SandboxMagics.sandbox,
                  "python --env \"MSG=a b\" --name 'my run' --out o --err e --timeout 2")
    assert (args.interpreter, args.env, args.name) == ("python", ["MSG=a b"], "my run")
    assert (args.out, args.err, args.timeout) == ("o", "e", 2.0)
    defaults = _parse(SandboxMagics.sandbox, "")
    assert (defaults.interpreter, defaults.out, defaults.err) == ("bash", None, None)


def test_subcommand_arguments_come_out_unquoted() -> None:
    assert _parse(SandboxMagics._commands["logs"], '"my run"').run == "my run"
    args = _parse(SandboxMagics._commands["wait"], "'a b' c --timeout 5")
    assert (args.runs, args.timeout) == (["a b", "c"], 5.0)


@pytest.mark.parametrize("line", ["--out 1x", "--err a.b", "--out class", "--out ''"])
def test_capture_variable_must_be_an_identifier(line: str) -> None:
    with pytest.raises(UsageError, match=r"^--(out|err) takes a Python variable name, got "):
        _parse(SandboxMagics.sandbox, line)


@pytest.mark.parametrize(("out", "err", "captures"), [
    (None, None, {}),
    ("o", None, {"o": "stdout"}),
    (None, "e", {"e": "stderr"}),
    ("o", "e", {"o": "stdout", "e": "stderr"}),
    ("both", "both", {"both": None}),
])
def test_each_capture_variable_stores_its_streams(
        out: str | None, err: str | None, captures: dict[str, str | None]) -> None:
    assert _captures(out, err) == captures


FLAGS = ["--env", "--out", "--err", "--timeout", "--name", "--bg", "--no-raise-error",
         "--profile", "--session", "--upload", "--download", "--purge", "-", "--"]
VALUES = [" ", "\t", '"', "'", "\\", "=", ":", "/", "..", "#", "$x", "{1+1}", "a b", "bash", "r1",
          "1x", "nan", "-1", "1e999", "MSG=a b", "~", "~no-such-user/x", "x:~no-such-user/y"]
WORDS = st.one_of(st.sampled_from(FLAGS + VALUES),
                  st.tuples(st.sampled_from(FLAGS), st.sampled_from(VALUES)).map(" ".join))
LINES = st.one_of(st.text(), st.lists(WORDS).map(" ".join), st.lists(WORDS).map("".join))


@settings(max_examples=300, deadline=None)
@given(LINES)
def test_any_line_parses_or_is_a_usage_error(line: str) -> None:
    for magic in PARSERS:
        try:
            _parse(magic, line)
        except UsageError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=1000, deadline=None)
@given(LINES)
def test_any_cell_line_gives_run_options_or_a_usage_error(line: str) -> None:
    try:
        args = _parse(SandboxMagics.sandbox, line)
        parse_env(args.env), parse_uploads(args.upload), parse_downloads(args.download)
    except UsageError as exc:
        assert "\n" not in str(exc)
