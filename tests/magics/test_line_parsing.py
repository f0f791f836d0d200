"""The magic line as a shell user reads it, and %%script's --out/--err, in a real kernel."""

from __future__ import annotations

import re
from pathlib import Path

from tests.kernel_driver import Kernel, Reply


def printed(kernel: Kernel, expression: str) -> str:
    """What ``print(expression)`` shows in the kernel."""
    reply = kernel.execute(f"print({expression})")
    assert reply.status == "ok", reply.error
    return reply.stdout


def shown_run_id(reply: Reply) -> str:
    """The id of the run whose view a ``--bg`` cell displayed."""
    match = re.search(r"Run (r\d+)", reply.data[0]["text/plain"])
    assert match is not None, reply.data
    return match.group(1)


def assert_quote_error(reply: Reply) -> None:
    assert reply.usage_error is not None, (reply.status, reply.stderr, reply.error)
    assert reply.stderr.count("\n") == 1 and reply.usage_error.count(". ") == 0
    assert reply.usage_error.endswith("check the quotes.")
    assert reply.stdout == ""


def test_env_value_with_spaces_reaches_the_run_unquoted(kernel: Kernel) -> None:
    reply = kernel.execute("""
        %%sandbox bash --env "MSG=a b" --env 'SQ=it is' --env ESC=c\\ d
        echo "[$MSG] [$SQ] [$ESC]"
    """)
    assert reply.status == "ok", reply.error
    assert reply.stdout == "[a b] [it is] [c d]\n"


def test_run_named_with_spaces_is_found_by_logs_and_cancel(kernel: Kernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    started = kernel.execute(f'%%sandbox bash --bg --name "my run"\n'
                             f"while [ ! -e {go} ]; do sleep 0.05; done")
    assert started.status == "ok", started.error
    run_id = shown_run_id(started)
    logs = kernel.execute('%sandbox logs "my run"')
    assert logs.status == "ok", logs.stderr
    assert run_id in logs.data[0]["text/plain"] and "my run" in logs.data[0]["text/plain"]
    cancelled = kernel.execute("%sandbox cancel 'my run'")
    assert cancelled.status == "ok", cancelled.stderr
    assert cancelled.stdout.startswith(f"Run {run_id} (my run): ")
    assert cancelled.stdout.endswith("its state is cancelled.\n")


def test_unclosed_quote_is_one_usage_error_sentence(kernel: Kernel) -> None:
    for code in ['%%sandbox bash --name "my run\necho never',
                 "%%sandbox bash --env 'A=b\necho never",
                 '%sandbox logs "my run',
                 "%sandbox cancel 'my run",
                 "%sandbox wait r1\\",
                 '%sandbox "logs']:
        assert_quote_error(kernel.execute(code))


def test_dollar_var_and_brace_expr_are_expanded_before_the_line_is_split(kernel: Kernel) -> None:
    kernel.execute('x = "a b"\nrun_name = "expanded run"')
    reply = kernel.execute("""
        %%sandbox bash --env "MSG=$x" --env N={1+1} --name "$run_name"
        echo "[$MSG] [$N]"
    """)
    assert reply.status == "ok", reply.error
    assert reply.stdout == "[a b] [2]\n"
    cancelled = kernel.execute('%sandbox cancel "$run_name"')
    assert cancelled.status == "ok", cancelled.stderr
    assert cancelled.stdout.endswith("it had already ended; its state is succeeded.\n")


def test_unknown_flag_still_names_the_valid_options(kernel: Kernel) -> None:
    reply = kernel.execute('%%sandbox bash --bogus "a b"\necho never')
    assert reply.usage_error is not None
    assert reply.usage_error.startswith("unrecognized arguments: --bogus a b; valid options are: ")
    assert "--err" in reply.usage_error and "--out" in reply.usage_error
    reply = kernel.execute("%sandbox wait --bogus")
    assert reply.usage_error == "unrecognized arguments: --bogus; valid options are: --timeout."


def test_out_captures_stdout_which_is_not_printed_while_stderr_still_is(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox sh --out captured\necho out 1; echo err >&2; echo out 2")
    assert reply.status == "ok", reply.error
    assert reply.stdout == "" and reply.stderr == "err\n"
    assert printed(kernel, "repr(captured)") == "'out 1\\nout 2\\n'\n"


def test_err_captures_stderr_which_is_not_printed_while_stdout_still_is(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox sh --err problems\necho out; echo err 1 >&2; echo err 2 >&2")
    assert reply.status == "ok", reply.error
    assert reply.stdout == "out\n" and reply.stderr == ""
    assert printed(kernel, "repr(problems)") == "'err 1\\nerr 2\\n'\n"


def test_capture_holds_invalid_utf8_replaced_and_split_characters_whole(kernel: Kernel) -> None:
    reply = kernel.execute(r"""
        %%sandbox python --out text
        import sys
        data = "€".encode() * 3 + b"\xff"
        for i in range(len(data)):
            sys.stdout.buffer.write(data[i:i + 1]); sys.stdout.flush()
    """)
    assert reply.status == "ok" and reply.stdout == "", reply.error
    assert printed(kernel, "text == '€€€\\ufffd'") == "True\n"


def test_out_and_err_naming_one_variable_interleave_the_streams(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox sh --out both --err both\necho one; echo two >&2; echo three")
    assert reply.status == "ok" and reply.stdout == "" and reply.stderr == "", reply.error
    lines = printed(kernel, "both").removesuffix("\n").splitlines()
    assert sorted(lines) == ["one", "three", "two"] and lines.index("one") < lines.index("three")


def test_failing_run_binds_its_capture_before_raising(kernel: Kernel) -> None:
    kernel.execute("out = err = 'stale'")
    reply = kernel.execute("%%sandbox sh --out out --err err\necho partial; echo why >&2; exit 3")
    assert reply.error is not None and reply.error["ename"] == "RunFailedError"
    assert reply.stdout == "" and reply.stderr == ""
    assert printed(kernel, "repr(out), repr(err)") == "'partial\\n' 'why\\n'\n"


def test_unknown_user_home_in_a_transfer_path_is_a_usage_error(kernel: Kernel) -> None:
    for flag, spec, path in [("--upload", "~no-such-user/data.csv", "~no-such-user/data.csv"),
                             ("--download", "out.csv:~no-such-user/out.csv",
                              "~no-such-user/out.csv")]:
        reply = kernel.execute(f"%%sandbox sh {flag} {spec}\necho never")
        assert reply.usage_error == (f"{flag} {spec}: cannot expand {path!r}: "
                                     "'~no-such-user' names no home folder here."), flag


def test_capture_variable_must_be_an_identifier(kernel: Kernel) -> None:
    for flag, name in [("--out", "1x"), ("--err", "a.b"), ("--out", "class")]:
        reply = kernel.execute(f"%%sandbox sh {flag} {name}\necho never")
        assert reply.usage_error == f"{flag} takes a Python variable name, got {name!r}.", flag


def test_bg_binds_the_stream_at_once_and_reads_it_to_the_end(
        kernel: Kernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    reply = kernel.execute(f"%%sandbox bash --bg --out log --err errors\n"
                           f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second")
    assert reply.status == "ok", reply.error
    run_id = shown_run_id(reply)
    shown = printed(kernel, "repr(log)")
    assert re.fullmatch(f"<RunStream {run_id} stdout (queued|running)>\n", shown)
    early = kernel.execute("log.read(timeout=0.01)")
    assert early.error is not None and early.error["ename"] == "WaitTimeoutError"
    go.touch()
    assert printed(kernel, "repr(log.read(timeout=30))") == "'first\\nsecond\\n'\n"
    assert printed(kernel, "str(log) == log.read() and str(errors) == ''") == "True\n"
