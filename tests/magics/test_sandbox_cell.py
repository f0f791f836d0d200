"""%%sandbox in a real IPython kernel: streaming, flags, sessions, errors as the user sees them."""

from __future__ import annotations

import re
from pathlib import Path

from tests.kernel_driver import Kernel, pid_alive, wait_until


def test_first_line_arrives_before_the_command_ends(kernel: Kernel, tmp_path: Path) -> None:
    seen = tmp_path / "tick-1-seen"

    def on_stream(text: str) -> None:
        if "tick 1" in text:
            seen.touch()
    reply = kernel.execute(f"""
        %%sandbox bash
        echo "hello from $PWD"; echo tick 1
        for i in $(seq 200); do [ -e {seen} ] && break; sleep 0.1; done
        [ -e {seen} ] && echo "tick 2: the cell showed tick 1 while this ran"
    """, on_stream=on_stream)
    assert reply.status == "ok", reply.error
    assert "hello from " in reply.stdout
    assert "tick 2: the cell showed tick 1 while this ran" in reply.stdout


def test_python_cell_with_profile_timeout_and_env(kernel: Kernel) -> None:
    reply = kernel.execute("""
        %%sandbox python --profile high-memory --timeout 30 --env MODE=fast --env X=a=b
        import os; print(os.environ["MODE"], os.environ["X"])
    """)
    assert reply.status == "ok", reply.error
    assert reply.stdout == "fast a=b\n"


def test_session_files_persist_between_cells_and_other_runs_start_clean(kernel: Kernel) -> None:
    first = kernel.execute("%%sandbox bash --session prep\necho 42 > answer.txt; pwd")
    second = kernel.execute("%%sandbox bash --session prep\ncat answer.txt; pwd")
    assert second.stdout.splitlines() == ["42", first.stdout.strip()]
    fresh = kernel.execute("%%sandbox bash\nls")
    assert fresh.status == "ok" and "answer.txt" not in fresh.stdout
    ended = kernel.execute("%sandbox end-session prep")
    assert ended.stdout.startswith("Session 'prep' ended")
    again = kernel.execute("%%sandbox bash --session prep\nls")
    assert again.status == "ok" and "answer.txt" not in again.stdout
    assert kernel.execute("%sandbox end-session nope").usage_error == "No session 'nope' is open."


def test_stderr_goes_to_the_cells_stderr(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox sh\necho out; echo err >&2")
    assert reply.stdout == "out\n" and reply.stderr == "err\n"


def test_nonzero_exit_raises_one_line_error_with_code_and_run_id(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash\necho partial; exit 3")
    assert reply.status == "error" and reply.stdout == "partial\n"
    assert reply.error is not None and reply.error["ename"] == "RunFailedError"
    assert re.search(r"Run r\d+ .* exited with code 3", reply.error["evalue"])
    assert len(reply.error["traceback"]) == 1


def test_no_raise_error_keeps_going(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --no-raise-error\nexit 4")
    assert reply.status == "ok" and reply.error is None


def test_no_raise_error_still_says_why_a_run_could_not_run(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox no-such-interpreter --no-raise-error\necho hi")
    assert reply.status == "ok" and reply.error is None
    assert "[sandbox] Run r" in reply.stderr and "cannot be run in the sandbox" in reply.stderr


def test_unknown_profile_is_an_unknown_profile_error_listing_profiles(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --profile nope\necho hi")
    assert reply.error is not None and reply.error["ename"] == "UnknownProfileError"
    assert reply.error["evalue"] == ("Unknown profile 'nope'; valid profiles are: "
                                     "default, high-memory, priced, pytorch-gpu, tiny.")


def test_bad_flags_are_usage_errors(kernel: Kernel) -> None:
    for line, expected in [
        ("--bogus", "unrecognized arguments: --bogus; valid options are: --bg, --download, "
                    "--env, --err, --fail-fast, --kernel, --map, --map-from, --max-parallel, "
                    "--name, --no-raise-error, --out, --profile, --pull, --push, --raise-error, "
                    "--retries, --session, --timeout, --upload, --zip."),
        ("--timeout soon", "--timeout takes a number of seconds"),
        ("--timeout -1", "--timeout must be more than 0"),
        ("--env NOEQUALS", "--env takes NAME=VALUE"),
    ]:
        reply = kernel.execute(f"%%sandbox bash {line}\necho hi")
        assert reply.usage_error is not None and expected in reply.usage_error, line
        assert "\n" not in reply.usage_error


def test_timeout_kills_the_run_and_frees_the_slot(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --profile tiny --timeout 1\necho started; sleep 30")
    assert reply.error is not None and "exceeded its timeout of 1 s" in reply.error["evalue"]
    assert reply.replied - reply.sent < 10
    after = kernel.execute("%%sandbox bash --profile tiny\necho free")
    assert after.stdout == "free\n"


def test_missing_interpreter_says_so(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox no-such-interpreter\nwhatever")
    assert reply.error is not None
    assert "'no-such-interpreter' cannot be run in the sandbox" in reply.error["evalue"]


def test_gpu_profile_runs_and_says_no_gpu_is_reserved_once(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --profile pytorch-gpu\necho ran")
    assert reply.status == "ok" and reply.stdout == "ran\n"
    assert "reserves no GPU" in reply.stderr
    again = kernel.execute("%%sandbox bash --profile pytorch-gpu\necho again")
    assert again.stdout == "again\n" and "reserves no GPU" not in again.stderr


def test_utf8_split_across_chunks_prints_whole(kernel: Kernel) -> None:
    reply = kernel.execute("""
        %%sandbox python
        import sys
        data = ("€" * 50000).encode()
        for i in range(0, len(data), 7):
            sys.stdout.buffer.write(data[i:i + 7]); sys.stdout.flush()
    """)
    assert reply.status == "ok" and reply.stdout == "€" * 50000


def test_interrupt_kills_remote_process_group_and_frees_slot(kernel: Kernel) -> None:
    seen: list[str] = []

    def on_stream(text: str) -> None:
        seen.append(text)
        if "pids" in text:
            kernel.manager.interrupt_kernel()

    reply = kernel.execute(
        "%%sandbox bash --profile tiny\nsleep 300 & echo pids $$ $!; wait",
        on_stream=on_stream)
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    shell_pid, child_pid = map(int, re.search(r"pids (\d+) (\d+)", "".join(seen)).groups())
    assert wait_until(lambda: not pid_alive(shell_pid) and not pid_alive(child_pid), 15)
    assert "process group was interrupted (SIGINT)" in reply.stderr
    after = kernel.execute("%%sandbox bash --profile tiny\necho slot free")
    assert after.stdout == "slot free\n", after.error


def test_profiles_and_runs_are_dataframes(kernel: Kernel) -> None:
    reply = kernel.execute("%sandbox profiles")
    html = reply.data[0]["text/html"]
    assert "pytorch-gpu" in html and "slots_per_sandbox" in html
    ran = kernel.execute("%%sandbox sh --name frame-row --no-raise-error\necho framed; exit 5")
    assert ran.status == "ok" and ran.stdout == "framed\n", ran.error
    reply = kernel.execute(
        "import pandas\nruns = %sandbox runs\nrow = runs[runs['name'] == 'frame-row'].iloc[-1]\n"
        "print(isinstance(runs, pandas.DataFrame), list(runs.columns)[:4], row['profile'],\n"
        "      row['interpreter'], row['state'], int(row['exit_code']), int(row['output_bytes']))")
    assert reply.stdout == ("True ['name', 'profile', 'backend', 'interpreter'] "
                            "default sh failed 5 7\n"), reply.error


def test_unknown_subcommand_lists_the_valid_ones(kernel: Kernel) -> None:
    reply = kernel.execute("%sandbox frobnicate")
    assert reply.usage_error is not None
    assert ("cancel, end-session, kernels, logs, profiles, route, runs, sandbox-log, scale, "
            "shutdown, status" in reply.usage_error)
