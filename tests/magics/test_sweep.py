"""``%%sandbox ... --map`` sweeps in a real kernel: the item set of each grid form, a
sweep where some items fail (the rest succeed, ``df`` says which, ``%sandbox wait``
names them), retries, ``retry_failed``, ``--fail-fast``, and results joined from
``result.json``, ``metrics.csv`` or a last JSON line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel

CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"
PROFILES = """
[profiles.default]
slots_per_sandbox = 4
max_sandboxes = 2
idle_timeout = 60
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    root = tmp_path_factory.mktemp("sweeps")
    (root / "profiles.toml").write_text(PROFILES)
    k = Kernel(kernel_env(root / "profiles.toml", root / "ws"))
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    assert k.execute(f"import os; os.chdir({str(root)!r})").status == "ok"
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


def frame(k: Kernel, expression: str) -> dict[str, dict[str, object]]:
    """``expression`` (a DataFrame in the kernel) as {row: {column: value}}."""
    reply = k.execute(f"print({expression}.to_json(orient='index'))", timeout=120)
    assert reply.status == "ok", (reply.error, reply.stderr)
    return json.loads(reply.stdout)


@pytest.mark.parametrize(("flags", "setup", "items"), [
    ("--map a=1,2 --map b=0..2", "", {f"s[a={a},b={b}]" for a in "12" for b in "012"}),
    ("--map a=1,2 --map b=x,y --zip", "", {"s[a=1,b=x]", "s[a=2,b=y]"}),
    ("--map lr=$lrs", "lrs = '1e-4,3e-4'", {"s[lr=1e-4]", "s[lr=3e-4]"}),
    ("--map-from rows", "import pandas as pd; rows = pd.DataFrame({'k': [1, 2], 'v': ['p', 'q']})",
     {"s[k=1,v=p]", "s[k=2,v=q]"}),
])
def test_each_grid_form_runs_exactly_its_items(kernel: Kernel, flags: str, setup: str,
                                               items: set[str]) -> None:
    if setup:
        assert kernel.execute(setup).status == "ok"
    reply = kernel.execute(f"%%sandbox bash --name s {flags}\necho \"$SANDBOX_PARAMS\"\n"
                           "cat params.json")
    assert reply.status == "ok", reply.error
    rows = frame(kernel, "_.wait(60).df")
    assert set(rows) == items
    for name, row in rows.items():
        params = dict(part.split("=") for part in name[2:-1].split(","))
        assert json.loads(row["last_line"]) == params, row
        assert row["state"] == "succeeded" and row["attempts"] == 1


SOME_FAIL = """
%%sandbox bash --name twelve --map i=0..11 {flags}
echo "{{\\"square\\": $((i * i))}}" > result.json
if [ $((i % 4)) = 3 ]; then echo "item $i fails" >&2; exit 1; fi
echo "item $i ok"
"""


def test_failed_items_leave_the_rest_and_wait_retries_and_retry_failed_say_which(
        kernel: Kernel) -> None:
    reply = kernel.execute(SOME_FAIL.format(flags="--retries 2"))
    assert reply.status == "ok", reply.error
    assert kernel.execute("sweep = _\nsweep.join(120)").status == "ok"
    rows = frame(kernel, "sweep.df")
    failed = {n for n, r in rows.items() if r["state"] == "failed"}
    assert failed == {"twelve[i=3]", "twelve[i=7]", "twelve[i=11]"}
    assert all(rows[n]["attempts"] == 3 and rows[n]["exit_code"] == 1 for n in failed)
    assert all(r["state"] == "succeeded" and r["attempts"] == 1
               for n, r in rows.items() if n not in failed)
    assert [rows[f"twelve[i={i}]"]["square"] for i in range(12)] == [i * i for i in range(12)]
    assert rows["twelve[i=3]"]["last_line"] == "item 3 fails"

    waited = kernel.execute("%sandbox wait twelve")
    assert waited.status == "error" and waited.error["ename"] == "SweepFailedError"
    message = waited.error["evalue"]
    assert "3 of 12 item(s) did not succeed" in message
    assert all(f"i={i} (exit 1)" in message for i in (3, 7, 11)), message

    retried = kernel.execute("before = {i.name: len(i.runs) for i in sweep.items}\n"
                             "sweep.retry_failed(); sweep.join(120)\n"
                             "print(sorted(i.name for i in sweep.items "
                             "if len(i.runs) != before[i.name]))")
    assert retried.stdout.strip() == "['twelve[i=11]', 'twelve[i=3]', 'twelve[i=7]']"
    listed = frame(kernel, f"{CLIENT}.sweeps()")
    assert any(r["name"] == "twelve" and r["succeeded"] == 9 and r["failed"] == 3
               for r in listed.values()), listed


def test_fail_fast_cancels_the_items_that_had_not_started(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --name ff --no-raise-error --map i=0..9 "
                           "--max-parallel 2 --fail-fast\n"
                           "if [ $i = 1 ]; then exit 1; fi; sleep 0.2")
    assert reply.status == "ok", reply.error
    rows = frame(kernel, "_.wait(120).df")
    states = [rows[f"ff[i={i}]"]["state"] for i in range(10)]
    assert states[1] == "failed"
    assert states.count("cancelled") >= 6, states
    assert all(rows[f"ff[i={i}]"]["attempts"] == 0
               for i in range(10) if states[i] == "cancelled" and i > 3), rows


def test_metrics_csv_columns_are_joined_on_the_parameters(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox python --name m --map lr=0.1,0.2\n"
                           "import os\n"
                           "open('metrics.csv', 'w').write('loss,acc\\n%s,0.9\\n' % os.environ['lr'])")
    assert reply.status == "ok", reply.error
    rows = frame(kernel, "_.wait(60).df")
    assert {n: (r["lr"], r["loss"], r["acc"]) for n, r in rows.items()} == {
        "m[lr=0.1]": ("0.1", 0.1, 0.9), "m[lr=0.2]": ("0.2", 0.2, 0.9)}


def test_a_sweep_that_cannot_be_made_is_one_sentence_and_runs_nothing(kernel: Kernel) -> None:
    before = kernel.execute(f"print(len({CLIENT}.manager.runs))").stdout
    out = kernel.execute("%%sandbox bash --map a=1 --out x\necho")
    assert out.usage_error and "a sweep keeps each item's" in out.usage_error
    assert kernel.execute("rows = [{'a': 1}]").status == "ok"
    both = kernel.execute("%%sandbox bash --map a=1 --map-from rows\necho")
    assert both.usage_error and "not both" in both.usage_error
    empty = kernel.execute("%%sandbox bash --map b=\necho")
    assert empty.error["ename"] == "SweepError" and "needs values" in empty.error["evalue"]
    assert empty.error["traceback"] == [f"SweepError: {empty.error['evalue']}"]
    assert kernel.execute(f"print(len({CLIENT}.manager.runs))").stdout == before


def check_a_sweep_runs_every_item(kernel: Kernel, profile: str) -> None:
    """A 6-item sweep on ``profile``: every item succeeds with its result, and an item
    read its params.json, which it does not leave as an artifact."""
    reply = kernel.execute(f"%%sandbox bash --profile {profile} --name six --map i=0..5\n"
                           "cat params.json; echo; ls; echo \"{\\\"sq\\\": $((i * i))}\"")
    assert reply.status == "ok", reply.error
    got = kernel.execute("df = _.wait(120).df\nprint(sorted(zip(df['i'], df['sq'])), "
                         "set(df['state']))")
    assert got.stdout.strip() == (f"{sorted((str(i), i * i) for i in range(6))} "
                                  "{'succeeded'}"), got.stdout + got.stderr
    seen = kernel.execute("print(repr(_.logs(3).stdout), [a.path for a in _.artifacts(3)])")
    assert seen.stdout.strip() == """'{"i": "3"}\\nparams.json\\n{"sq": 9}\\n' []""", seen.stdout
