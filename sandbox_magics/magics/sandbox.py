"""``%%sandbox`` and ``%sandbox``: thin magics over `sandbox_magics.Client`.

Cell form: run the cell in a pooled sandbox, streaming its output into the cell. Line
form: ``%sandbox profiles|runs|status|logs RUN|cancel RUN|scale PROFILE N|shutdown``.

A line that cannot be parsed is IPython's `UsageError`; past that, the magics raise what
the `Client` raises (an unknown run, sandbox or profile, a refused scale, a wait that ends
first: each a `SandboxError`, shown as its one-line message).
"""

from __future__ import annotations

import argparse
import queue
import shlex
import sys
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from traitlets import Bool, Unicode, observe

from ..exceptions import RunFailedError, UnknownRunError, WaitTimeoutError
from ..kernel import Client
from ..kernel.cell import queue_listener, stream_to_cell
from ..kernel.live_cell import RemoteResult, outcome, run_in_cell
from ..manager import Stopped
from ..pool.cost import money
from ..runs import Run, RunState
from ..runs.words import stop_words
from ..sweeps import Sweep, SweepFailedError, from_rows, grid, parse_map
from ..widgets import ArtifactsView, Dashboard, RunLogView, SweepView
from ..widgets.runs_table import tidy
from ._args import (kernel_args, parse_downloads, parse_env, parse_uploads, run_args,
                    split_line, sweep_args)

if TYPE_CHECKING:
    import pandas as pd


DEFAULT_KERNEL_SESSION = "default"
"""The kernel session ``--kernel`` runs in without ``--session``: one per profile."""


def _scale_target(text: str) -> int | None:
    """A number of sandboxes, or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"%sandbox scale takes a number of sandboxes or auto, got {text!r}.") from None


@magics_class
class SandboxMagics(Magics):
    """Run cells in pooled sandboxes (local, Nomad, Modal)."""

    profiles_file = Unicode(
        "", config=True,
        help="TOML file of sandbox profiles; empty: $SANDBOX_MAGICS_PROFILES or built-ins only.",
    )
    raise_error = Bool(
        True, config=True,
        help="Whether a failed %%sandbox cell raises an error when neither "
             "--raise-error nor --no-raise-error is given.",
    )

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._client: Client | None = None
        self._log_views: weakref.WeakKeyDictionary[Run, RunLogView] = weakref.WeakKeyDictionary()
        self._sweep_views: weakref.WeakKeyDictionary[Sweep, SweepView] = weakref.WeakKeyDictionary()
        self._dashboard: Dashboard | None = None
        self.on_client: list[Callable[[Client], None]] = []  # called with each new client

    @property
    def client(self) -> Client:
        """The kernel's client, created on first use (loading the extension stays cheap)."""
        if self._client is None:
            self._client = Client(self.profiles_file or None)
            for hook in self.on_client:
                hook(self._client)
        return self._client

    @observe("profiles_file")
    def _profiles_file_changed(self, change: dict[str, Any]) -> None:
        if self._client is not None:
            self._client.profiles_file = change["new"] or None

    def close(self, purge: bool = False) -> Stopped:
        """Close the views and shut the client down; say what that stopped."""
        for view in [*self._log_views.values(), *self._sweep_views.values(),
                     *([self._dashboard] if self._dashboard else [])]:
            view.close()
        self._log_views.clear()
        self._sweep_views.clear()
        self._dashboard = None
        stopped = Stopped()
        if self._client is not None:
            stopped = self._client.shutdown(purge)
            self._client = None
        return stopped

    @magic_arguments()
    @kernel_args
    @sweep_args
    @run_args
    @argument("--routed", action="store_true", help=argparse.SUPPRESS)
    @line_cell_magic
    def sandbox(self, line: str, cell: str | None = None) -> Any:
        """Run the cell in a pooled sandbox, or manage the pools.

        ``%%sandbox [interpreter] [options]`` feeds the cell on stdin to ``interpreter``
        (default bash) in a free slot of ``--profile``; output streams into the cell as it
        is produced. A non-zero exit raises an error naming the exit code and the run id
        (``--no-raise-error`` to keep going). Interrupting the kernel kills the remote
        process group, frees the slot and ends the cell with KeyboardInterrupt. With
        ``--bg`` the cell returns a `Run` at once and shows its live log (``run = _``);
        such a run outlives its kernel (within its timeout, the profile's lifetime and
        heartbeat window), and a later kernel follows it with ``%sandbox attach RUN``.

        The line is split into words as a POSIX shell splits them, after IPython has
        expanded ``$var`` and ``{expr}`` in it: ``--env "MSG=$x"`` passes the value of
        ``x`` whole, spaces included; an unclosed quote is an error.

        ``--out VAR`` and ``--err VAR`` store the run's stdout and stderr in ``VAR``, as
        ``%%script`` does: a stream stored in a variable is not printed in the cell (the
        other one still is), and naming one variable for both stores them interleaved as
        the run wrote them. The variable holds the stream's full text, decoded as UTF-8
        with undecodable bytes replaced; it is set also when the run fails or is
        interrupted, before the error is raised. With ``--bg`` the variable is bound at
        once, as ``%%script --bg`` binds the pipe: to a `RunStream`, whose ``str()`` is
        the text so far and whose ``read()`` waits for the run to end and returns the
        whole text. The live log view of a ``--bg`` run shows both streams either way.

        Line form::

            %sandbox profiles             the profiles, as a DataFrame
            %sandbox runs [--all]         every run of this kernel and the one it restarted
                                          (--all: of every earlier kernel), as a DataFrame
            %sandbox attach RUN           follow a --bg run the kernel this one restarted
                                          started: its whole log, then live
            %sandbox status               every pool's sandboxes and slots
            %sandbox logs RUN             the live log of a run (id or name)
            %sandbox artifacts RUN        the files a run left: list, preview, download
            %sandbox wait [RUN ...]       wait for runs (default: all); raise if one failed
            %sandbox cancel RUN           stop a run
            %sandbox end-session NAME     free a --session's slot (its files are deleted)
            %sandbox sandbox-log NAME     the engine's log of a sandbox, also of a dead one
            %sandbox scale PROFILE N      keep N sandboxes of PROFILE running
            %sandbox budget DOLLARS [--hard]  cap what this kernel's sandboxes cost (off: none)
            %sandbox shutdown             stop every sandbox and run of this kernel (--bg
                                          runs, and those the previous kernel left, too)

        Examples::

            %%sandbox bash
            echo "hello from $PWD"

            %%sandbox python --profile high-memory --timeout 30 --env MODE=fast
            import os; print(os.environ["MODE"])

            %%sandbox bash --session prep
            echo 42 > answer.txt

            %%sandbox bash --bg --name "sweep 3e-4" --download metrics.csv
            python train.py --lr 3e-4 --out metrics.csv

            %%sandbox bash --out listing --err warnings
            ls -l; ls missing-file
        """
        if cell is None:
            return self._line(line)
        args = _parse(self.sandbox, line)
        self.client.profile(args.profile)  # an unknown profile fails before any upload
        raise_error = self.raise_error if args.raise_error is None else args.raise_error
        if args.kernel:
            return self._kernel_cell(cell, args, raise_error)
        if args.push or args.pull:
            raise UsageError("--push and --pull move the variables of a kernel session; add "
                             "--kernel (and --session NAME).")
        options = dict(profile=args.profile, timeout=args.timeout, env=parse_env(args.env),
                       session=args.session, name=args.name,
                       uploads=parse_uploads(args.upload), downloads=parse_downloads(args.download),
                       raise_error=raise_error)
        captures = _captures(args.out, args.err)
        if args.map or args.map_from is not None:
            if captures:
                raise UsageError("--out and --err take one run's output; a sweep keeps each "
                                 "item's: sweep.logs(item).stdout, or sweep.df's last_line.")
            options.pop("name")
            return self.client.map(cell, args.interpreter, params=self._grid(args),
                                   name=args.name, retries=args.retries,
                                   fail_fast=args.fail_fast, max_parallel=args.max_parallel,
                                   **options)
        if args.bg:
            run = self.client.submit(cell, args.interpreter, detach=True, **options)
            self.shell.user_ns.update({var: RunStream(run, s) for var, s in captures.items()})
            return run
        chunks: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        show = queue_listener(chunks)
        stored_in = {"stdout": args.out, "stderr": args.err}

        def listener(source: Run, stream: str, data: bytes) -> None:
            if stored_in.get(stream) is None:
                show(source, stream, data)
        run = self.client.submit(cell, args.interpreter, listener=listener, **options)
        try:
            stream_to_cell(self.client, run, chunks)
        finally:
            self.shell.user_ns.update({var: run.log.text(s) for var, s in captures.items()})
        if raise_error:
            run.check()
        elif run.state not in (RunState.SUCCEEDED, RunState.FAILED):
            print(f"[sandbox] {run.failure_message()}", file=sys.stderr)
        return None

    def _kernel_cell(self, cell: str, args: Any, raise_error: bool) -> RemoteResult | None:
        """Run the cell in the live kernel of ``--session``, as a local cell would run."""
        taken = [flag for flag, given in (("--bg", args.bg), ("--map", args.map),
                                          ("--map-from", args.map_from is not None),
                                          ("--out", args.out), ("--err", args.err),
                                          ("--upload", args.upload),
                                          ("--download", args.download),
                                          ("--env", args.env), ("--timeout", args.timeout))
                 if given]
        if taken:
            raise UsageError(f"--kernel runs the cell in a live kernel, which {', '.join(taken)} "
                             "does not apply to; leave it out, or run without --kernel.")
        interpreter = "python" if args.interpreter == "bash" else args.interpreter
        if "python" not in interpreter:
            raise UsageError(f"--kernel runs a Python kernel; give python (or a path to one), "
                             f"not {interpreter!r}.")
        missing = [name for name in args.push if name not in self.shell.user_ns]
        if missing:
            raise UsageError(f"--push: {', '.join(missing)} is not defined in this notebook.")
        session = args.session or DEFAULT_KERNEL_SESSION
        kernel = self.client.kernel(session, profile=args.profile, interpreter=interpreter)
        if args.routed:
            print(f"[sandbox] → kernel {session!r} ({args.profile})", file=sys.stderr, flush=True)
        reply = run_in_cell(self.client._loop, kernel.session, cell,
                            {name: self.shell.user_ns[name] for name in args.push}, args.pull)
        self.shell.user_ns.update(reply.pulled)
        return outcome(kernel.session, reply, raise_error)

    def _grid(self, args: Any) -> list[dict[str, str]]:
        """The parameter sets of ``--map``/``--zip`` or ``--map-from VAR``."""
        if args.map_from is None:
            return grid([parse_map(spec) for spec in args.map], args.zip)
        if args.map:
            raise UsageError("Give the parameters with --map or with --map-from, not both.")
        if args.map_from not in self.shell.user_ns:
            raise UsageError(f"--map-from {args.map_from}: no such variable in the notebook.")
        return from_rows(self.shell.user_ns[args.map_from])

    def display_sweep(self, sweep: Sweep) -> bool:
        """IPython's display hook for a `Sweep`: its live view, with a display id so that
        its final state replaces the text a frontend without widgets keeps."""
        if sweep not in self._sweep_views:
            self._sweep_views[sweep] = SweepView(sweep, self.client.every)
        view = self._sweep_views[sweep]
        view.display_handle = display(view, display_id=True)
        return True

    def log_view(self, run: Run) -> RunLogView:
        """The (cached) live log view of ``run``."""
        if run not in self._log_views:
            self._log_views[run] = RunLogView(run, self.client.every)
        return self._log_views[run]

    def display_run(self, run: Run) -> bool:
        """IPython's display hook for a `Run`: its live log view, shown with a display id
        so that its final state replaces the text a frontend without widgets keeps."""
        view = self.log_view(run)
        view.display_handle = display(view, display_id=True)
        return True

    def _line(self, line: str) -> Any:
        words = split_line(line)
        if not words:
            raise UsageError(f"%sandbox needs a subcommand: {', '.join(sorted(self._commands))}.")
        command = self._commands.get(words[0])
        if command is None:
            raise UsageError(f"Unknown %sandbox subcommand {words[0]!r}; valid subcommands "
                             f"are: {', '.join(sorted(self._commands))}.")
        return command(self, shlex.join(words[1:]))

    @magic_arguments()
    def _profiles(self, line: str) -> pd.DataFrame:
        _parse(self._profiles, line)
        return self.client.profiles()

    @magic_arguments()
    def _sweeps(self, line: str) -> pd.DataFrame:
        _parse(self._sweeps, line)
        return self.client.sweeps()

    @magic_arguments()
    @argument("--all", action="store_true",
              help="add the live --bg runs of every other kernel of this user")
    def _runs(self, line: str) -> pd.DataFrame:
        args = _parse(self._runs, line)
        return tidy(self.client.runs(all_kernels=args.all))

    @magic_arguments()
    @argument("run", help="run id or name, as %%sandbox runs shows it")
    def _attach(self, line: str) -> Run:
        """Follow a --bg run the kernel this one restarted started: the returned `Run`
        shows its whole log, then what comes; wait, cancel and its artifacts work as for a
        run of this kernel."""
        args = _parse(self._attach, line)
        return self.client.attach(args.run)

    @magic_arguments()
    def _status(self, line: str) -> None:
        _parse(self._status, line)
        if self._dashboard is None:
            self._dashboard = Dashboard(self.client)
        display(self._dashboard)

    @magic_arguments()
    @argument("run", help="run id or name")
    def _logs(self, line: str) -> None:
        args = _parse(self._logs, line)
        try:
            run = self.client.get_run(args.run)
        except UnknownRunError:
            run = self.client.attach(args.run)  # a --bg run the previous kernel left
        display(self.log_view(run))

    @magic_arguments()
    @argument("run", help="run id or name")
    def _artifacts(self, line: str) -> None:
        args = _parse(self._artifacts, line)
        display(ArtifactsView(self.client.get_run(args.run), self.client.every))

    @magic_arguments()
    @argument("runs", nargs="*",
              help="run or sweep ids or names (default: every unfinished run and sweep)")
    @argument("--timeout", type=float, default=None, help="give up after this many seconds")
    def _wait(self, line: str) -> None:
        """Wait for runs and sweeps; the views of those that ended show their final state
        before this returns, so a notebook run headless keeps it. Raises if one failed,
        naming it (for a sweep, the parameter sets that did not succeed)."""
        args = _parse(self._wait, line)
        runs: list[Run] = []
        sweeps: list[Sweep] = []
        for key in args.runs:
            try:
                runs.append(self.client.get_run(key))
            except UnknownRunError:
                sweeps.append(self.client.get_sweep(key))
        if not args.runs:
            runs = [r for r in self.client.manager.runs if not r.done]
            sweeps = [s for s in self.client.manager.sweeps.values() if not s.done]
        waits = [*runs, *sweeps]
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        try:
            for waited in waits:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                waited.join(left)
        except KeyboardInterrupt:
            going = ", ".join(w.id for w in waits if not w.done)
            print(f"Stopped waiting; the runs go on ({going}).")
            raise
        for view in [*self._log_views.values(), *self._sweep_views.values()]:
            if getattr(view, "run", None) in runs or getattr(view, "sweep", None) in sweeps:
                view.refresh()
        pending = [w.id for w in waits if not w.done]
        if pending:
            raise WaitTimeoutError(f"Still running after {args.timeout:g} s: "
                                   f"{', '.join(pending)}; they go on: wait again, or cancel them.")
        failed = [r for r in runs if r.spec.raise_error and r.state is not RunState.SUCCEEDED]
        failed_sweeps = [s for s in sweeps if s.spec.raise_error and s.failed]
        if failed_sweeps:
            raise SweepFailedError(" ".join(
                [*(r.failure_message() for r in failed), *(s.failure_message() for s in failed_sweeps)]),
                failed_sweeps[0].id, None)
        if failed:
            raise RunFailedError(" ".join(r.failure_message() for r in failed),
                                 failed[0].id, failed[0].exit_code)
        print(f"{len(runs)} run(s) and {len(sweeps)} sweep(s) finished." if sweeps
              else f"{len(runs)} run(s) finished.")

    @magic_arguments()
    @argument("sandbox", help="sandbox name, as %%sandbox status shows it")
    def _sandbox_log(self, line: str) -> None:
        """Print what the engine kept of a sandbox's own log (its agent's output), also for
        one that died lately: the first place to look when a sandbox was lost."""
        args = _parse(self._sandbox_log, line)
        text = self.client.sandbox_log(args.sandbox)
        print(text or f"The engine kept no log of sandbox {args.sandbox!r}.")

    @magic_arguments()
    @argument("session", help="session name, as given to --session")
    def _end_session(self, line: str) -> None:
        args = _parse(self._end_session, line)
        profiles = self.client.end_session(args.session)
        if not profiles:
            raise UsageError(f"No session {args.session!r} is open.")
        print(f"Session {args.session!r} ended; its slot in {', '.join(profiles)} is free "
              "and its files are gone.")

    @magic_arguments()
    @argument("run", help="run id or name")
    def _cancel(self, line: str) -> None:
        args = _parse(self._cancel, line)
        run = self.client.get_run(args.run)
        step = self.client.cancel(run)
        print(f"Run {run.id} ({run.name}): {stop_words(step)}; its state is {run.state.value}.")

    @magic_arguments()
    @argument("profile", help="profile name")
    @argument("sandboxes", type=_scale_target,
              help="sandboxes to keep running (at most the profile's max_sandboxes; 0 stops "
                   "them all), or auto to autoscale between the profile's bounds again")
    def _scale(self, line: str) -> None:
        args = _parse(self._scale, line)
        self.client.scale(args.profile, args.sandboxes)
        print(f"Profile {args.profile!r}: " + ("autoscaling." if args.sandboxes is None
                                               else f"{args.sandboxes} sandbox(es)."))

    @magic_arguments()
    @argument("--purge", action="store_true",
              help="also delete the local copies of artifacts and spilled logs")
    def _shutdown(self, line: str) -> None:
        args = _parse(self._shutdown, line)
        _ = self.client  # made now if need be: the previous kernel may have left --bg runs
        stopped = self.close(purge=args.purge)
        detached = f" ({stopped.detached} of them --bg)" if stopped.detached else ""
        cost = "" if stopped.cost == 0 else (
            f" This kernel's sandboxes cost {money(stopped.cost)} (estimated)." if stopped.cost
            else " What its sandboxes cost is unknown: give their profiles a price_per_hour.")
        print(f"Stopped {stopped.sandboxes} sandbox(es) and {stopped.runs} run(s){detached}; "
              f"nothing of this kernel is running.{cost}")

    @magic_arguments()
    @argument("dollars", help="dollars this kernel may spend on sandboxes, or off")
    @argument("--hard", action="store_true",
              help="once spent, also cancel the runs going and stop the sandboxes")
    def _budget(self, line: str) -> None:
        """Cap what this kernel's sandboxes may cost: once reached no new sandbox starts,
        and runs waiting for one fail saying so."""
        args = _parse(self._budget, line)
        dollars = None if args.dollars == "off" else _dollars(args.dollars)
        self.client.budget(dollars, hard=args.hard)
        spent = money(self.client.cost())
        print("No budget: sandboxes start as profiles allow." if dollars is None else
              f"Budget: {money(dollars)} for this kernel ({spent} spent so far)"
              + ("; once spent, the runs going are cancelled too." if args.hard else "."))

    @magic_arguments()
    def _kernels(self, line: str) -> pd.DataFrame:
        _parse(self._kernels, line)
        return self.client.kernels()

    @magic_arguments()
    @argument("off", nargs="?", help="off: every cell runs in this notebook again")
    @argument("--kernel", action="store_true", help="send every cell to a kernel session")
    @argument("--session", default=DEFAULT_KERNEL_SESSION, metavar="NAME",
              help="the kernel session (default: the profile's default one)")
    @argument("--profile", "-p", default="default", help="its profile")
    def _route(self, line: str) -> None:
        """Send every following cell to a kernel session, as ipyparallel's %autopx does,
        until ``%sandbox route off``; ``%sandbox`` lines always run here."""
        args = _parse(self._route, line)
        transformers = self.shell.input_transformers_cleanup
        for old in [t for t in transformers if isinstance(t, Route)]:
            transformers.remove(old)
        if args.off is not None:
            if args.off != "off" or args.kernel:
                raise UsageError("%sandbox route takes --kernel [--session NAME] [--profile P], "
                                 "or off.")
            print("Routing off: cells run in this notebook's kernel again.")
            return
        if not args.kernel:
            raise UsageError("%sandbox route takes --kernel [--session NAME] [--profile P], or off.")
        self.client.profile(args.profile)
        transformers.append(Route(args.session, args.profile))
        print(f"Every cell now runs in the kernel of session {args.session!r} ({args.profile}) "
              "until %sandbox route off; %sandbox lines run here.")

    _commands: dict[str, Callable[[SandboxMagics, str], Any]] = {
        "profiles": _profiles, "runs": _runs, "status": _status, "logs": _logs,
        "artifacts": _artifacts, "wait": _wait, "cancel": _cancel, "end-session": _end_session,
        "scale": _scale, "shutdown": _shutdown, "sandbox-log": _sandbox_log, "attach": _attach,
        "sweeps": _sweeps, "budget": _budget, "kernels": _kernels, "route": _route,
    }


class Route:
    """An input transformer: every cell but a ``%sandbox`` one becomes a kernel-session cell."""

    def __init__(self, session: str, profile: str) -> None:
        self.header = (f"%%sandbox python --kernel --routed --session {shlex.quote(session)} "
                       f"--profile {shlex.quote(profile)}\n")

    def __call__(self, lines: list[str]) -> list[str]:
        text = "".join(lines).lstrip()
        if not text or text.startswith(("%sandbox", "%%sandbox")):
            return lines
        return [self.header, *lines]


def _parse(magic: Callable[..., Any], line: str) -> Any:
    """``magic``'s arguments in ``line``, split by `split_line`, with the valid options
    named when a flag is not one of them."""
    parser = magic.parser  # type: ignore[attr-defined]
    try:
        return parser.parse_args(split_line(line))
    except UsageError as exc:
        if "unrecognized arguments" not in str(exc):
            raise
        flags = sorted({o for a in parser._actions for o in a.option_strings
                        if o.startswith("--") and a.help != argparse.SUPPRESS})
        raise UsageError(f"{exc}; valid options are: {', '.join(flags)}.") from None


def _dollars(text: str) -> float:
    try:
        value = float(text.lstrip("$"))
    except ValueError:
        raise UsageError(f"%sandbox budget takes a number of dollars or off, got {text!r}.") from None
    if not value >= 0:
        raise UsageError(f"A budget is 0 dollars or more, got {text!r}.")
    return value


def _captures(out: str | None, err: str | None) -> dict[str, str | None]:
    """Each ``--out``/``--err`` variable and the stream it stores (None: both, interleaved)."""
    if out is not None and out == err:
        return {out: None}
    return {var: stream for var, stream in ((out, "stdout"), (err, "stderr")) if var is not None}


class RunStream:
    """A ``--bg`` run's stream, bound by ``--out``/``--err``: ``str()`` is its text so far.

    The text is decoded as UTF-8 with undecodable bytes replaced; ``stream`` None means
    stdout and stderr interleaved as the run wrote them.
    """

    def __init__(self, run: Run, stream: str | None) -> None:
        self.run = run
        self.stream = stream

    def __repr__(self) -> str:
        return f"<RunStream {self.run.id} {self.stream or 'stdout+stderr'} {self.run.state.value}>"

    def __str__(self) -> str:
        return self.run.log.text(self.stream)

    def read(self, timeout: float | None = None) -> str:
        """Wait for the run to end and return the stream's whole text.

        Raises:
            WaitTimeoutError: the run is still going after ``timeout`` seconds (a
                `TimeoutError` too).
        """
        if not self.run.join(timeout):
            raise WaitTimeoutError(f"Run {self.run.id} is still {self.run.state.value} after "
                                   f"{timeout:g} s; str() of this stream is its text so far.")
        return str(self)
