"""The magic line as a shell user reads it, in a real kernel."""

from __future__ import annotations

import re
from pathlib import Path

from tests.kernel_driver import Kernel, Reply


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
    assert cancelled.stdout.startswith(f"Run {run_id}: ")
    assert cancelled.stdout.endswith("now cancelled.\n")


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
    assert cancelled.stdout.endswith("already-finished; now succeeded.\n")


def test_unknown_flag_still_names_the_valid_options(kernel: Kernel) -> None:
    reply = kernel.execute('%%sandbox bash --bogus "a b"\necho never')
    assert reply.usage_error is not None
    assert reply.usage_error.startswith("unrecognized arguments: --bogus a b; valid options are: ")
    reply = kernel.execute("%sandbox wait --bogus")
    assert reply.usage_error == "unrecognized arguments: --bogus; valid options are: --timeout."
