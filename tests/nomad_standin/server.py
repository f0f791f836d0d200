"""A stand-in for Nomad's HTTP API: one server and one client node on this machine.

The client node advertises ``node_address`` (default 127.0.0.1) for its allocations'
ports, as a Nomad client advertises its network's address: ``raw_exec`` tasks bind it,
and ``docker`` tasks listen on every address of this machine (as a published container
port does), so an address this machine lacks (``2001:db8::7``) stands for a client whose
ports the kernel cannot reach.

It keeps jobs, evaluations and allocations as Nomad does, with the JSON field names and
shapes of Nomad's ``api`` package (``Job``, ``JobListStub``, ``Evaluation``,
``Allocation``, ``AllocationListStub``, ``TaskState``, ``TaskEvent``), so that the real
python-nomad client talks to it unchanged. Tasks run for real: ``raw_exec`` tasks (and
``docker`` tasks, whose image is only "pulled") are local processes with Nomad's
``NOMAD_*`` environment and ``${...}`` interpolation in their command, args and env, in a
task directory of their own, their output in ``alloc/logs/<task>.stdout.0`` as Nomad
writes it and served as frames by ``/v1/client/fs/logs``.

What a cluster does, it does: registration validated as Nomad validates it (`validation`:
minimum resources, constraint operands and regular expressions, in Nomad's words), ACL
tokens (``X-Nomad-Token``: one management token, a UUID; others are refused with Nomad's
bodies, "Permission denied" or, on client endpoints, "ACL token not found"), blocking
queries (``index``/``wait``, ``X-Nomad-Index``), placement against the node's free CPU and
memory (an evaluation that cannot place records ``FailedTGAllocs`` and a blocked
evaluation, processed again whenever an allocation ends and so frees room), datacenter,
node pool, constraint and device checks (the node has no devices: "missing devices"),
restart and reschedule policies (attempts 0: a task that exits ends its
allocation), memory limits as the kernel enforces them on cgroups v2 (past ``MemoryMB`` the
largest process of the task is SIGKILLed, usually a run, not the agent, and no driver
reports an OOM: exit 137), kill
signals and timeouts, ``alloc stop`` (the allocation is replaced, as a migration is), and
deregistration with ``purge``.

Faults a test may ask for (``PUT /standin/faults``, not part of Nomad's API):
``pull_fail`` (images whose pull fails), ``pull_seconds`` (image → how long its pull takes,
with progress events every ``pull_report_interval`` seconds, bounded by the task's
``image_pull_timeout``), ``delay`` (seconds added to every API answer),
``start_fail`` (a driver error for the next tasks). ``GET /standin/tasks`` lists the
running tasks' pids, for tests that kill one as a crash would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .filters import FilterError, compile_filter
from .validation import job_errors, multierror

REGION = "global"
DATACENTER = "dc1"
NODE_POOL = "default"
NODE_NAME = "standin-node"
DEFAULT_KILL_TIMEOUT = 5.0
OOM_CHECK_INTERVAL = 0.25
FRAME_HEARTBEAT = 1.0
MAX_WAIT = 300.0
LOG_CHUNK = 64 * 1024
SCHEDULE_DELAY = 0.01
MIN_DYNAMIC_PORT, MAX_DYNAMIC_PORT = 20000, 32000   # a client's default dynamic port range
DRIVERS = ("raw_exec", "docker")
_INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


def _now_ns() -> int:
    return time.time_ns()


def _go_seconds(text: str) -> float:
    """A Go duration ("5m", "1800s", "1h30m") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", text))


def _rfc3339(ns: int | None) -> str:
    if not ns:
        return "0001-01-01T00:00:00Z"
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:09d}Z"


def _duration(value: Any, default: float) -> float:
    """A Go duration given in JSON (nanoseconds) as seconds."""
    if isinstance(value, (int, float)) and value > 0:
        return float(value) / 1e9
    return default


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "t", "true")


def _parse_wait(value: str | None) -> float:
    if not value:
        return MAX_WAIT
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", value.strip())
    if not match:
        raise web.HTTPBadRequest(text=f"Invalid wait time {value!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return min(MAX_WAIT, number / 1000 if unit == "ms" else number * 60 if unit == "m" else number)


@dataclass
class Task:
    """One running (or finished) task of an allocation."""

    name: str
    spec: dict[str, Any]
    state: dict[str, Any]
    process: asyncio.subprocess.Process | None = None
    killing: bool = False
    stdout: Path | None = None
    stderr: Path | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Alloc:
    data: dict[str, Any]
    tasks: dict[str, Task]
    job: dict[str, Any]
    root: Path

    def job_tasks(self) -> list[dict[str, Any]]:
        return [t.spec for t in self.tasks.values()]


class StandIn:
    """The stand-in's state and its aiohttp app. ``start(port)``, then ``stop()``."""

    def __init__(self, root: Path, token: str | None = None, cpu_mhz: int = 16000,
                 memory_mb: int = 32768, node_address: str = "127.0.0.1") -> None:
        if token is not None and not _is_uuid(token):
            raise ValueError("a Nomad ACL token's secret ID is a UUID")
        self.root = root
        self.token = token
        self.cpu_mhz = cpu_mhz
        self.memory_mb = memory_mb
        self.node_address = node_address
        self.node_id = str(uuid.uuid4())
        self.index = 1
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.evals: dict[str, dict[str, Any]] = {}
        self.allocs: dict[str, Alloc] = {}
        self.faults: dict[str, Any] = {"pull_fail": [], "delay": 0.0, "start_fail": 0}
        self._evaluating: set[str] = set()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---------------------------------------------------------------- lifecycle

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        app = web.Application(middlewares=[self._acl])
        app.router.add_routes([
            web.get("/v1/jobs", self.list_jobs),
            web.post("/v1/jobs", self.register),
            web.put("/v1/jobs", self.register),
            web.get("/v1/job/{id}", self.read_job),
            web.post("/v1/job/{id}", self.register),
            web.put("/v1/job/{id}", self.register),
            web.delete("/v1/job/{id}", self.deregister),
            web.get("/v1/job/{id}/allocations", self.job_allocations),
            web.get("/v1/job/{id}/evaluations", self.job_evaluations),
            web.get("/v1/job/{id}/summary", self.job_summary),
            web.get("/v1/allocations", self.list_allocations),
            web.get("/v1/allocation/{id}", self.read_allocation),
            web.post("/v1/allocation/{id}/stop", self.stop_allocation),
            web.put("/v1/allocation/{id}/stop", self.stop_allocation),
            web.get("/v1/evaluations", self.list_evaluations),
            web.get("/v1/evaluation/{id}", self.read_evaluation),
            web.get("/v1/client/fs/logs/{id}", self.logs),
            web.get("/v1/status/leader", self.leader),
            web.get("/v1/agent/self", self.agent_self),
            web.get("/v1/nodes", self.nodes),
            web.get("/standin/faults", self.get_faults),
            web.put("/standin/faults", self.put_faults),
            web.get("/standin/tasks", self.task_pids),
        ])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        """Kill every task and stop serving."""
        for alloc in list(self.allocs.values()):
            for task in alloc.tasks.values():
                if task.process is not None and task.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(task.process.pid, signal.SIGKILL)
        for job in list(self._tasks):
            job.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _bump(self) -> int:
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return self.index

    # ---------------------------------------------------------------- HTTP plumbing

    @web.middleware
    async def _acl(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        work = asyncio.ensure_future(self._checked(request, handler))
        if request.method == "GET":
            return await work
        # A write goes through even if the client gave up waiting, as a cluster commits it.
        work.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(work)

    async def _checked(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.can_read_body:
            await request.read()      # the request as sent, before any delay
        if self.faults.get("delay"):
            await asyncio.sleep(float(self.faults["delay"]))
        refusal = self._refusal(request.path, request.headers.get("X-Nomad-Token", ""))
        return refusal or await handler(request)

    def _refusal(self, path: str, secret: str) -> web.Response | None:
        """How Nomad refuses a request whose token is not the management one (None: it may).

        A server endpoint answers any failed authentication with ``ErrPermissionDenied``
        (``authErr`` in nomad/job_endpoint.go, alloc_endpoint.go, eval_endpoint.go,
        node_endpoint.go), which command/agent/http.go sends as 403 "Permission denied".
        A client endpoint (``/v1/client/``) resolves the token through ``ACL.WhoAmI``
        (client/acl.go): an unknown secret is "ACL token not found" and one that is no
        UUID a claim that fails to parse (nomad/auth/auth.go, nomad/encrypter.go), both
        streamed back without a code, so 500 (command/agent/fs_endpoint.go); the anonymous
        token has no read-logs: 403 "Permission denied".
        """
        if self.token is None or secret == self.token:
            return None
        if not path.startswith("/v1/client/") or not secret:
            return web.Response(status=403, text="Permission denied")
        if _is_uuid(secret):
            return web.Response(status=500, text="ACL token not found")
        return web.Response(status=500, text="failed to parse signed token: go-jose/go-jose: "
                                             "compact JWS format must have three parts")

    async def _blocking(self, request: web.Request) -> None:
        """Hold a blocking query until the state changes past ``index`` or ``wait`` passes."""
        try:
            index = int(request.query.get("index", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="Invalid index") from None
        if index <= 0 or self.index > index:
            return
        deadline = time.monotonic() + _parse_wait(request.query.get("wait"))
        while self.index <= index:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def _json(self, body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status, headers={
            "X-Nomad-Index": str(self.index), "X-Nomad-KnownLeader": "true",
            "X-Nomad-LastContact": "0"})

    @staticmethod
    def _namespace(request: web.Request, body: dict[str, Any] | None = None) -> str:
        return request.query.get("namespace") or (body or {}).get("Namespace") or "default"

    @staticmethod
    def _filter(request: web.Request) -> Any:
        text = request.query.get("filter")
        if not text:
            return None
        try:
            return compile_filter(text)
        except FilterError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    # ---------------------------------------------------------------- jobs

    def _job_or_404(self, request: web.Request) -> dict[str, Any]:
        job = self.jobs.get((self._namespace(request), request.match_info["id"]))
        if job is None:
            raise web.HTTPNotFound(text="job not found")
        return job

    def _summary(self, job: dict[str, Any]) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {
            g["Name"]: {"Queued": 0, "Complete": 0, "Failed": 0, "Running": 0, "Starting": 0,
                        "Lost": 0, "Unknown": 0} for g in job["TaskGroups"]}
        for alloc in self._allocs_of(job):
            key = {"pending": "Starting", "running": "Running", "complete": "Complete",
                   "failed": "Failed", "lost": "Lost"}.get(alloc.data["ClientStatus"], "Unknown")
            counts.setdefault(alloc.data["TaskGroup"], dict.fromkeys(
                ("Queued", "Complete", "Failed", "Running", "Starting", "Lost", "Unknown"), 0))
            counts[alloc.data["TaskGroup"]][key] += 1
        for ev in self.evals.values():
            if ev["JobID"] == job["ID"] and ev["Status"] == "blocked":
                for group, queued in ev.get("QueuedAllocations", {}).items():
                    counts.setdefault(group, {})["Queued"] = queued
        return {"JobID": job["ID"], "Namespace": job["Namespace"], "Summary": counts,
                "Children": {"Pending": 0, "Running": 0, "Dead": 0},
                "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"]}

    def _stub(self, job: dict[str, Any], meta: bool) -> dict[str, Any]:
        stub = {key: job.get(key) for key in (
            "ID", "ParentID", "Name", "Namespace", "Datacenters", "Type", "Priority", "Stop",
            "Status", "StatusDescription", "CreateIndex", "ModifyIndex", "JobModifyIndex",
            "SubmitTime")}
        stub.update(Periodic=False, ParameterizedJob=False, NodePool=job.get("NodePool"),
                    JobSummary=self._summary(job))
        if meta and job.get("Meta"):
            stub["Meta"] = job["Meta"]
        return stub

    async def list_jobs(self, request: web.Request) -> web.Response:
        await self._blocking(request)
        namespace = self._namespace(request)
        prefix = request.query.get("prefix", "")
        matches = self._filter(request)
        meta = _truthy(request.query.get("meta"))
        out = [self._stub(job, meta) for (ns, job_id), job in sorted(self.jobs.items())
               if (namespace == "*" or ns == namespace) and job_id.startswith(prefix)
               and (matches is None or matches(job))]
        return self._json(out)

    async def read_job(self, request: web.Request) -> web.Response:
        await self._blocking(request)
        return self._json(self._job_or_404(request))

    async def job_summary(self, request: web.Request) -> web.Response:
        return self._json(self._summary(self._job_or_404(request)))

    async def register(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="Failed to decode request body") from None
        job = body.get("Job") if isinstance(body, dict) else None
        if not isinstance(job, dict):
            raise web.HTTPBadRequest(text="Job must be specified")
        if job.get("ID") is None:
            raise web.HTTPBadRequest(text="Job ID hasn't been provided")
        if "id" in request.match_info and job["ID"] != request.match_info["id"]:
            raise web.HTTPBadRequest(text="Job ID does not match name")
        problems = multierror(job_errors(job))
        if problems:       # an RPC error without a code: 500 (command/agent/http.go)
            return web.Response(status=500, text=problems)
        namespace = job.get("Namespace") or self._namespace(request)
        key = (namespace, job["ID"])
        previous = self.jobs.get(key)
        index = self._bump()
        job = {**job, "Namespace": namespace, "Region": job.get("Region") or REGION,
               "Name": job.get("Name") or job["ID"], "Priority": job.get("Priority") or 50,
               "Datacenters": job.get("Datacenters") or ["*"],
               "NodePool": job.get("NodePool") or NODE_POOL,
               "Stop": False, "Status": "pending", "StatusDescription": "", "ParentID": "",
               "Version": (previous["Version"] + 1) if previous else 0,
               "SubmitTime": _now_ns(), "Stable": False,
               "CreateIndex": previous["CreateIndex"] if previous else index,
               "ModifyIndex": index, "JobModifyIndex": index}
        self.jobs[key] = job
        ev = self._eval(job, "job-register")
        self._spawn(self._schedule(job, ev))
        return self._json({"EvalID": ev["ID"], "EvalCreateIndex": ev["CreateIndex"],
                           "JobModifyIndex": index, "Warnings": "", "Index": index,
                           "LastContact": 0, "KnownLeader": True})

    async def deregister(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        index = self._bump()
        job.update(Stop=True, ModifyIndex=index, JobModifyIndex=index)
        ev = self._eval(job, "job-deregister", status="complete")
        self._cancel_blocked(job, ev)
        for alloc in self._allocs_of(job):
            if alloc.data["DesiredStatus"] == "run":
                self._stop_alloc(alloc, "alloc not needed due to job update")
        if _truthy(request.query.get("purge")):
            del self.jobs[(job["Namespace"], job["ID"])]
        self._refresh_job(job)
        self._bump()
        return self._json({"EvalID": ev["ID"], "EvalCreateIndex": ev["CreateIndex"],
                           "JobModifyIndex": index, "VolumeEvalID": "", "VolumeEvalIndex": 0,
                           "Index": index, "LastContact": 0, "KnownLeader": True})

    def _allocs_of(self, job: dict[str, Any]) -> list[Alloc]:
        return [a for a in self.allocs.values()
                if a.data["JobID"] == job["ID"] and a.data["Namespace"] == job["Namespace"]]

    def _refresh_job(self, job: dict[str, Any]) -> None:
        """A batch job is running while any allocation is, dead once none is left to run."""
        allocs = self._allocs_of(job)
        blocked = any(e["JobID"] == job["ID"] and e["Status"] == "blocked"
                      for e in self.evals.values())
        if any(a.data["ClientStatus"] == "running" for a in allocs):
            status = "running"
        elif job["Stop"] or (allocs and all(a.data["ClientStatus"] in ("complete", "failed", "lost")
                                            for a in allocs) and not blocked):
            status = "dead"
        else:
            status = "pending"
        if job.get("Status") != status:
            job["Status"] = status
            job["ModifyIndex"] = self._bump()

    # ---------------------------------------------------------------- evaluations

    def _eval(self, job: dict[str, Any], trigger: str, status: str = "pending") -> dict[str, Any]:
        index = self._bump()
        ev = {"ID": str(uuid.uuid4()), "Priority": job.get("Priority", 50), "Type": job["Type"],
              "TriggeredBy": trigger, "Namespace": job["Namespace"], "JobID": job["ID"],
              "JobModifyIndex": job["JobModifyIndex"], "NodeID": "", "NodeModifyIndex": 0,
              "DeploymentID": "", "Status": status, "StatusDescription": "", "Wait": 0,
              "WaitUntil": "0001-01-01T00:00:00Z", "NextEval": "", "PreviousEval": "",
              "BlockedEval": "", "RelatedEvals": None, "FailedTGAllocs": None,
              "ClassEligibility": None, "EscapedComputedClass": False, "QuotaLimitReached": "",
              "AnnotatePlan": False, "QueuedAllocations": None, "SnapshotIndex": index,
              "CreateIndex": index, "ModifyIndex": index, "CreateTime": _now_ns(),
              "ModifyTime": _now_ns()}
        self.evals[ev["ID"]] = ev
        return ev

    async def list_evaluations(self, request: web.Request) -> web.Response:
        await self._blocking(request)
        prefix = request.query.get("prefix", "")
        return self._json([e for e in self.evals.values() if e["ID"].startswith(prefix)])

    async def read_evaluation(self, request: web.Request) -> web.Response:
        await self._blocking(request)
        ev = self.evals.get(request.match_info["id"])
        if ev is None:
            raise web.HTTPNotFound(text="eval not found")
        return self._json(ev)

    async def job_evaluations(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        return self._json([e for e in self.evals.values() if e["JobID"] == job["ID"]])

    # ---------------------------------------------------------------- scheduling

    def _used(self) -> tuple[int, int]:
        cpu = memory = 0
        for alloc in self.allocs.values():
            if alloc.data["ClientStatus"] in ("pending", "running"):
                for task in alloc.job_tasks():
                    res = task.get("Resources") or {}
                    cpu += int(res.get("CPU") or 100)
                    memory += int(res.get("MemoryMB") or 300)
        return cpu, memory

    def _fit(self, job: dict[str, Any], group: dict[str, Any]) -> dict[str, Any] | None:
        """None if the group can be placed on the node, else its AllocationMetric."""
        metric: dict[str, Any] = {
            "NodesEvaluated": 0, "NodesFiltered": 0, "NodesInPool": 1, "NodePool": NODE_POOL,
            "NodesAvailable": {DATACENTER: 1}, "ClassFiltered": None, "ConstraintFiltered": None,
            "NodesExhausted": 0, "ClassExhausted": None, "DimensionExhausted": None,
            "QuotaExhausted": None, "ResourcesExhausted": None, "Scores": None,
            "AllocationTime": 1000, "CoalescedFailures": 0, "ScoreMetaData": None}
        if not any(_glob(dc, DATACENTER) for dc in job["Datacenters"]):
            metric.update(NodesAvailable={}, NodesInPool=0)
            return metric
        if job.get("NodePool") not in (NODE_POOL, "all"):
            metric.update(NodesInPool=0, NodesAvailable={}, NodePool=job.get("NodePool"))
            return metric
        metric["NodesEvaluated"] = 1
        # The stack's order (scheduler/feasible/stack.go): job constraints, drivers, group
        # and task constraints, devices; a filtered node counts under its reason
        # (scheduler/feasible/feasible.go, structs.AllocMetric.FilterNode).
        tasks = group["Tasks"]
        filters: list[tuple[str, bool]] = [
            *((self._constraint_text(c), self._satisfies(c)) for c in job.get("Constraints") or []),
            ("missing drivers", all(t.get("Driver") in DRIVERS for t in tasks)),
            *((self._constraint_text(c), self._satisfies(c)) for c in [
                *(group.get("Constraints") or []),
                *(c for t in tasks for c in t.get("Constraints") or [])]),
            # The node has no devices, so any request misses (DeviceChecker.hasDevices).
            ("missing devices", not any((t.get("Resources") or {}).get("Devices") for t in tasks)),
        ]
        for reason, passed in filters:
            if not passed:
                metric.update(NodesFiltered=1, ConstraintFiltered={reason: 1})
                return metric
        cpu, memory = self._used()
        asked = [t.get("Resources") or {} for t in group["Tasks"]]
        want_cpu = sum(int(r.get("CPU") or 100) for r in asked)
        want_mem = sum(int(r.get("MemoryMB") or 300) for r in asked)
        exhausted = {}
        if cpu + want_cpu > self.cpu_mhz:
            exhausted["cpu"] = 1
        if memory + want_mem > self.memory_mb:
            exhausted["memory"] = 1
        if exhausted:
            metric.update(NodesExhausted=1, DimensionExhausted=exhausted, ClassExhausted={})
            return metric
        return None

    def _attributes(self) -> dict[str, str]:
        return {"${attr.kernel.name}": "linux", "${attr.os.name}": "linux",
                "${attr.cpu.arch}": os.uname().machine, "${node.datacenter}": DATACENTER,
                "${node.unique.name}": NODE_NAME, "${node.unique.id}": self.node_id,
                "${node.class}": "", "${node.pool}": NODE_POOL,
                "${attr.unique.hostname}": socket.gethostname(),
                "${attr.driver.raw_exec}": "1", "${attr.driver.docker}": "1"}

    @staticmethod
    def _constraint_text(constraint: dict[str, Any]) -> str:
        """``Constraint.String()``: how a filtered node's constraint is counted."""
        return (f"{constraint.get('LTarget', '')} {constraint.get('Operand', '')} "
                f"{constraint.get('RTarget', '')}")

    def _satisfies(self, constraint: dict[str, Any]) -> bool:
        attrs = self._attributes()
        left = attrs.get(constraint.get("LTarget", ""), None)
        operand = constraint.get("Operand") or "="
        right = constraint.get("RTarget", "")
        if operand == "is_set":
            return left is not None
        if operand == "is_not_set":
            return left is None
        if left is None:
            return False
        if operand in ("=", "==", "is"):
            return left == right
        if operand in ("!=", "not"):
            return left != right
        if operand == "regexp":
            return re.search(right, left) is not None
        if operand in ("set_contains", "set_contains_all"):
            return set(right.split(",")) <= set(left.split(","))
        if operand == "set_contains_any":
            return bool(set(right.split(",")) & set(left.split(",")))
        return False

    async def _schedule(self, job: dict[str, Any], ev: dict[str, Any]) -> None:
        """Process ``ev`` as the generic scheduler does (scheduler/generic_sched.go): place
        each missing allocation that fits; if some do not, record their metrics and make a
        blocked evaluation, or, for a blocked one, leave it blocked (``ReblockEval``)."""
        if ev["ID"] in self._evaluating:
            return
        self._evaluating.add(ev["ID"])
        try:
            await asyncio.sleep(SCHEDULE_DELAY)
            failed, queued = self._place_missing(job, ev)
        finally:
            self._evaluating.discard(ev["ID"])
        if failed and ev["Status"] == "blocked":
            ev.update(ModifyTime=_now_ns(), ModifyIndex=self._bump())
        else:
            ev.update(Status="complete", FailedTGAllocs=failed or None, QueuedAllocations=queued,
                      ModifyTime=_now_ns(), ModifyIndex=self._bump())
        if failed and ev["Status"] == "complete":
            blocked = self._eval(job, "queued-allocs", status="blocked")
            blocked.update(PreviousEval=ev["ID"], QueuedAllocations=queued, FailedTGAllocs=failed,
                           StatusDescription="created to place remaining allocations")
            ev["BlockedEval"] = blocked["ID"]
        elif not failed:
            self._cancel_blocked(job, ev)
        self._refresh_job(job)
        self._bump()

    def _place_missing(self, job: dict[str, Any], ev: dict[str, Any]
                       ) -> tuple[dict[str, Any], dict[str, int]]:
        """Place the allocations ``job`` lacks; the metrics of the groups that do not fit,
        and how many allocations of each group stay queued."""
        failed: dict[str, Any] = {}
        queued: dict[str, int] = {}
        for group in job["TaskGroups"]:
            taken = {a.data["Name"] for a in self._allocs_of(job)
                     if a.data["DesiredStatus"] == "run"}
            queued[group["Name"]] = 0
            for index in range(int(group.get("Count", 1) or 0)):
                name = f"{job['ID']}.{group['Name']}[{index}]"
                if name in taken or (job["Namespace"], job["ID"]) not in self.jobs or job["Stop"]:
                    continue
                metric = self._fit(job, group)
                if metric is not None:
                    failed[group["Name"]] = metric
                    queued[group["Name"]] += 1
                    continue
                self._place(job, group, index, ev["ID"])
        return failed, queued

    def _cancel_blocked(self, job: dict[str, Any], ev: dict[str, Any]) -> None:
        """An evaluation that placed everything cancels the job's blocked ones
        (nomad/state/state_store.go, ``nestedUpsertEval``)."""
        for other in self.evals.values():
            if other["JobID"] == job["ID"] and other["Namespace"] == job["Namespace"] \
                    and other["Status"] == "blocked":
                other.update(Status="canceled", ModifyIndex=self._bump(),
                             StatusDescription=f'evaluation "{ev["ID"]}" successful')

    def _unblock(self) -> None:
        """Resources came free: process every blocked evaluation again, oldest first
        (nomad/blocked_evals.go ``Unblock``, on a terminal allocation's client update)."""
        for ev in sorted((e for e in self.evals.values() if e["Status"] == "blocked"),
                         key=lambda e: e["CreateIndex"]):
            job = self.jobs.get((ev["Namespace"], ev["JobID"]))
            if job is not None and not job["Stop"]:
                self._spawn(self._schedule(job, ev))

    def _place(self, job: dict[str, Any], group: dict[str, Any], index: int, eval_id: str,
               previous: str = "") -> Alloc:
        alloc_id = str(uuid.uuid4())
        root = self.root / "allocs" / alloc_id
        (root / "alloc" / "logs").mkdir(parents=True)
        ports = []
        networks = [*(group.get("Networks") or [])]
        for task in group["Tasks"]:
            networks += (task.get("Resources") or {}).get("Networks") or []
        for network in networks:
            for port in network.get("ReservedPorts") or []:
                ports.append({"Label": port["Label"], "Value": port["Value"],
                              "To": port.get("To", 0), "HostIP": self.node_address})
            for port in network.get("DynamicPorts") or []:
                ports.append({"Label": port["Label"], "Value": _free_port(),
                              "To": port.get("To", 0), "HostIP": self.node_address})
        now = _now_ns()
        tasks_res = {t["Name"]: {
            "Cpu": {"CpuShares": int((t.get("Resources") or {}).get("CPU") or 100)},
            "Memory": {"MemoryMB": int((t.get("Resources") or {}).get("MemoryMB") or 300)},
            "Networks": None, "Devices": None} for t in group["Tasks"]}
        data = {
            "ID": alloc_id, "Namespace": job["Namespace"], "EvalID": eval_id,
            "Name": f"{job['ID']}.{group['Name']}[{index}]", "NodeID": self.node_id,
            "NodeName": NODE_NAME, "JobID": job["ID"], "JobType": job["Type"],
            "JobVersion": job["Version"], "TaskGroup": group["Name"],
            "AllocatedResources": {"Tasks": tasks_res, "Shared": {
                "DiskMB": 300, "Ports": ports or None,
                "Networks": [{"Mode": "host", "IP": self.node_address, "DynamicPorts": [
                    {"Label": p["Label"], "Value": p["Value"], "To": p["To"],
                     "HostNetwork": "default"} for p in ports]}] if ports else None}},
            "DesiredStatus": "run", "DesiredDescription": "",
            "DesiredTransition": {"Migrate": None, "Reschedule": None, "ForceReschedule": None},
            "ClientStatus": "pending", "ClientDescription": "No tasks have started",
            "TaskStates": {t["Name"]: {"State": "pending", "Failed": False, "Restarts": 0,
                                       "LastRestart": _rfc3339(None), "StartedAt": _rfc3339(None),
                                       "FinishedAt": _rfc3339(None), "Events": []}
                           for t in group["Tasks"]},
            "DeploymentID": "", "DeploymentStatus": None, "FollowupEvalID": "",
            "PreviousAllocation": previous, "NextAllocation": "", "RescheduleTracker": None,
            "PreemptedAllocations": None, "PreemptedByAllocation": "",
            "CreateIndex": 0, "ModifyIndex": 0, "AllocModifyIndex": 0,
            "CreateTime": now, "ModifyTime": now,
        }
        alloc = Alloc(data, {}, job, root)
        for spec in group["Tasks"]:
            alloc.tasks[spec["Name"]] = Task(spec["Name"], spec, data["TaskStates"][spec["Name"]])
        self.allocs[alloc_id] = alloc
        data["CreateIndex"] = data["ModifyIndex"] = data["AllocModifyIndex"] = self._bump()
        for task in alloc.tasks.values():
            self._event(alloc, task, "Received", "Task received by client")
        for task in alloc.tasks.values():
            self._spawn(self._run_task(alloc, task, group))
        return alloc

    # ---------------------------------------------------------------- tasks

    def _event(self, alloc: Alloc, task: Task, kind: str, message: str,
               details: dict[str, str] | None = None, **fields: Any) -> None:
        event = {"Type": kind, "Time": _now_ns(), "DisplayMessage": message,
                 "Details": details or {}, "Message": "", "FailsTask": False,
                 "RestartReason": "", "SetupError": "", "DriverError": "", "DriverMessage": "",
                 "ExitCode": 0, "Signal": 0, "KillReason": "", "KillTimeout": 0,
                 "KillError": "", "StartDelay": 0, "DownloadError": "", "ValidationError": "",
                 "DiskLimit": 0, "DiskSize": 0, "FailedSibling": "", "VaultError": "",
                 "TaskSignalReason": "", "TaskSignal": "", "GenericSource": "", **fields}
        task.state["Events"].append(event)
        self._touch(alloc)

    def _touch(self, alloc: Alloc) -> None:
        alloc.data["ModifyTime"] = _now_ns()
        alloc.data["ModifyIndex"] = self._bump()

    def _env(self, alloc: Alloc, task: Task, group: dict[str, Any],
             task_dir: Path) -> dict[str, str]:
        data, job = alloc.data, alloc.job
        env = {
            "NOMAD_ALLOC_DIR": str(alloc.root / "alloc"), "NOMAD_TASK_DIR": str(task_dir / "local"),
            "NOMAD_SECRETS_DIR": str(task_dir / "secrets"), "NOMAD_ALLOC_ID": data["ID"],
            "NOMAD_SHORT_ALLOC_ID": data["ID"][:8], "NOMAD_ALLOC_NAME": data["Name"],
            "NOMAD_ALLOC_INDEX": data["Name"].rsplit("[", 1)[1].rstrip("]"),
            "NOMAD_GROUP_NAME": group["Name"], "NOMAD_TASK_NAME": task.name,
            "NOMAD_JOB_ID": job["ID"], "NOMAD_JOB_NAME": job["Name"], "NOMAD_JOB_PARENT_ID": "",
            "NOMAD_NAMESPACE": job["Namespace"], "NOMAD_REGION": job["Region"],
            "NOMAD_DC": DATACENTER, "NOMAD_PARENT_CGROUP": "nomad.slice",
            "NOMAD_CPU_LIMIT": str((task.spec.get("Resources") or {}).get("CPU") or 100),
            "NOMAD_MEMORY_LIMIT": str((task.spec.get("Resources") or {}).get("MemoryMB") or 300),
        }
        for port in data["AllocatedResources"]["Shared"]["Ports"] or []:
            label, value, ip = port["Label"], str(port["Value"]), port["HostIP"]
            address = f"[{ip}]:{value}" if ":" in ip else f"{ip}:{value}"   # net.JoinHostPort
            env.update({f"NOMAD_IP_{label}": ip, f"NOMAD_PORT_{label}": value,
                        f"NOMAD_HOST_PORT_{label}": value, f"NOMAD_HOST_IP_{label}": ip,
                        f"NOMAD_ADDR_{label}": address, f"NOMAD_HOST_ADDR_{label}": address,
                        f"NOMAD_ALLOC_PORT_{label}": value})
        meta = {**(job.get("Meta") or {}), **(group.get("Meta") or {}),
                **(task.spec.get("Meta") or {})}
        for key, value in meta.items():
            env[f"NOMAD_META_{key}"] = value
            env[f"NOMAD_META_{re.sub(r'[^A-Za-z0-9_]', '_', key)}"] = value
        return env

    def _interpolate(self, text: str, env: dict[str, str], alloc: Alloc) -> str:
        attrs = self._attributes()
        meta = alloc.job.get("Meta") or {}

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in env:
                return env[name]
            if name.startswith("env.") and name[4:] in env:
                return env[name[4:]]
            if name.startswith("NOMAD_META_") and name[11:] in meta:
                return str(meta[name[11:]])
            if name.startswith("meta.") and name[5:] in meta:
                return str(meta[name[5:]])
            return attrs.get("${" + name + "}", match.group(0))
        return _INTERPOLATION.sub(one, text)

    async def _run_task(self, alloc: Alloc, task: Task, group: dict[str, Any]) -> None:
        try:
            await self._run_task_inner(alloc, task, group)
        finally:
            task.done.set()
            self._settle(alloc)

    async def _slow_pull(self, alloc: Alloc, task: Task, image: str,
                         config: dict[str, Any]) -> str | None:
        """A pull told to take ``pull_seconds[image]``: progress events every
        ``pull_report_interval`` seconds (Nomad's is two minutes), and the failure Nomad
        gives once the task's ``image_pull_timeout`` (default 5m) passes first."""
        seconds = float((self.faults.get("pull_seconds") or {}).get(image, 0))
        if not seconds:
            return None
        limit = _go_seconds(str(config.get("image_pull_timeout") or "5m"))
        every = float(self.faults.get("pull_report_interval", 120))
        started, layers, size = time.monotonic(), 7, 3.4
        while (elapsed := time.monotonic() - started) < seconds:
            if elapsed >= limit:
                return f"Failed to pull `{image}`: context deadline exceeded"
            await asyncio.sleep(min(every, seconds - elapsed, limit - elapsed))
            elapsed = time.monotonic() - started
            if elapsed < min(seconds, limit):
                done = elapsed / seconds
                self._event(alloc, task, "Driver",
                            f"Docker image pull progress: Pulled {int(layers * done)}/{layers} "
                            f"({size * done:.1f}GiB/{size}GiB) layers: 0 waiting/"
                            f"{layers - int(layers * done)} pulling - est "
                            f"{seconds - elapsed:.1f}s remaining", {"image": image})
        return None

    def _render_templates(self, task: Task, task_dir: Path) -> str | None:
        """Write the task's embedded templates to their destinations, as a client's
        template runner does before the task starts; a sentence if one cannot be (the
        stand-in renders no template actions: a template with ``{{`` fails)."""
        for template in task.spec.get("Templates") or []:
            text = str(template.get("EmbeddedTmpl") or "")
            if "{{" in text:
                return ("Template failed: the stand-in renders templates without actions "
                        "only")
            target = task_dir / str(template["DestPath"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(int(str(template.get("Perms") or "0644"), 8))
        return None

    async def _run_task_inner(self, alloc: Alloc, task: Task, group: dict[str, Any]) -> None:
        task_dir = alloc.root / task.name
        for sub in ("local", "secrets", "tmp"):
            (task_dir / sub).mkdir(parents=True, exist_ok=True)
        self._event(alloc, task, "Task Setup", "Building Task Directory",
                    {"message": "Building Task Directory"}, Message="Building Task Directory")
        if alloc.data["DesiredStatus"] != "run":
            return self._dead(alloc, task, failed=False)
        config = task.spec.get("Config") or {}
        if task.spec["Driver"] == "docker":
            image = str(config.get("image", ""))
            self._event(alloc, task, "Driver", "Downloading image",
                        {"image": image}, DriverMessage="Downloading image")
            await asyncio.sleep(0.05)
            if (failure := await self._slow_pull(alloc, task, image, config)) is not None:
                return self._driver_failure(alloc, task, failure)
            if image in self.faults.get("pull_fail", []) or not image:
                message = (f"Failed to pull `{image}`: Error response from daemon: pull access "
                           f"denied for {image.split(':')[0]}, repository does not exist or may "
                           "require 'docker login': denied: requested access to the resource "
                           "is denied")
                return self._driver_failure(alloc, task, message)
        if self.faults.get("start_fail", 0) > 0:
            self.faults["start_fail"] -= 1
            return self._driver_failure(
                alloc, task, "failed to launch command with executor: rpc error: code = Unknown "
                             "desc = the stand-in was told to fail this start")
        env = self._env(alloc, task, group, task_dir)
        if (failure := self._render_templates(task, task_dir)) is not None:
            return self._driver_failure(alloc, task, failure)
        task_env = {k: self._interpolate(str(v), env, alloc)
                    for k, v in (task.spec.get("Env") or {}).items()}
        command = self._interpolate(str(config.get("command", "")), env, alloc)
        args = [self._interpolate(str(a), env, alloc) for a in config.get("args") or []]
        if task.spec["Driver"] == "docker" and Path(command).name.startswith("python"):
            # a stock image's Python: the standard library only, no sandbox_magics, no aiohttp
            command, args = sys.executable, ["-I", "-S", *args]
        logs = alloc.root / "alloc" / "logs"
        task.stdout, task.stderr = logs / f"{task.name}.stdout.0", logs / f"{task.name}.stderr.0"
        full_env = {**os.environ, **env, **task_env}
        with open(task.stdout, "ab") as out, open(task.stderr, "ab") as err:
            try:
                task.process = await asyncio.create_subprocess_exec(
                    command, *args, cwd=task_dir, env=full_env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True)
            except OSError as exc:
                reason = exc.strerror.lower() if exc.strerror else str(exc)
                return self._driver_failure(
                    alloc, task, f"failed to launch command with executor: rpc error: code = "
                                 f"Unknown desc = exec: \"{command}\": {reason}")
        task.state.update(State="running", StartedAt=_rfc3339(_now_ns()))
        self._event(alloc, task, "Started", "Task started by client")
        self._settle(alloc)
        limit = int((task.spec.get("Resources") or {}).get("MemoryMB") or 300)
        watcher = asyncio.ensure_future(self._watch_memory(task, limit))
        try:
            code = await task.process.wait()
        finally:
            watcher.cancel()
        self._terminated(alloc, task, code)
        if task.killing:
            self._event(alloc, task, "Killed", "Task successfully killed")
            return self._dead(alloc, task, failed=False)
        if code == 0:
            return self._dead(alloc, task, failed=False)
        self._event(alloc, task, "Not Restarting", "Policy allows no restarts",
                    {"restart_reason": "Policy allows no restarts", "fails_task": "true"},
                    FailsTask=True, RestartReason="Policy allows no restarts")
        return self._dead(alloc, task, failed=True)

    def _terminated(self, alloc: Alloc, task: Task, returncode: int) -> None:
        """The ``Terminated`` event of a task that exited with ``returncode`` (negative: a
        signal), as each driver reports it on cgroups v2, where neither sees an OOM kill:
        raw_exec's executor gives 128 + the signal and the signal
        (drivers/shared/executor/executor.go); docker gives the container's exit status
        with no signal and an exit message (drivers/docker/handle.go). The event's text is
        ``TaskEvent.PopulateEventDisplayMessage``'s (nomad/structs/structs.go)."""
        sig = -returncode if returncode < 0 else 0
        exit_code = 128 + sig if sig else returncode
        exit_message = ""
        if task.spec["Driver"] == "docker":
            sig = 0
            if exit_code:
                exit_message = f"Docker container exited with non-zero exit code: {exit_code}"
        details = {"exit_code": str(exit_code), "signal": str(sig), "oom_killed": "false"}
        text = f"Exit Code: {exit_code}" + (f", Signal: {sig}" if sig else "")
        if exit_message:
            details["exit_message"] = exit_message
            text += f", Exit Message: {json.dumps(exit_message)}"
        self._event(alloc, task, "Terminated", text, details, ExitCode=exit_code, Signal=sig,
                    Message=exit_message)

    def _driver_failure(self, alloc: Alloc, task: Task, message: str) -> None:
        self._event(alloc, task, "Driver Failure", message, {"driver_error": message,
                    "fails_task": "true"}, DriverError=message, FailsTask=True)
        self._event(alloc, task, "Not Restarting", "Error was unrecoverable",
                    {"restart_reason": "Error was unrecoverable", "fails_task": "true"},
                    FailsTask=True, RestartReason="Error was unrecoverable")
        self._dead(alloc, task, failed=True)

    def _dead(self, alloc: Alloc, task: Task, failed: bool) -> None:
        task.state.update(State="dead", Failed=failed, FinishedAt=_rfc3339(_now_ns()))
        self._touch(alloc)

    def _settle(self, alloc: Alloc) -> None:
        """The allocation's client status from its tasks' states."""
        states = [t.state for t in alloc.tasks.values()]
        if all(s["State"] == "dead" for s in states):
            status = "failed" if any(s["Failed"] for s in states) else "complete"
            description = "Failed tasks" if status == "failed" else "All tasks have completed"
        elif any(s["State"] == "running" for s in states):
            status, description = "running", "Tasks are running"
        else:
            status, description = "pending", "No tasks have started"
        if (alloc.data["ClientStatus"], alloc.data["ClientDescription"]) != (status, description):
            freed = status in ("complete", "failed") and alloc.data["ClientStatus"] not in (
                "complete", "failed")
            alloc.data.update(ClientStatus=status, ClientDescription=description)
            self._touch(alloc)
            if freed:
                self._unblock()
        job = self.jobs.get((alloc.data["Namespace"], alloc.data["JobID"]))
        if job is not None:
            self._refresh_job(job)

    async def _watch_memory(self, task: Task, limit_mb: int) -> None:
        """The kernel's OOM killer in the task's cgroup (v2): once the task's processes
        together pass its ``MemoryMB``, the one using the most memory is killed with
        SIGKILL — a run rather than the agent, as a rule — and only that one
        (``memory.oom.group`` is not set); no driver is told it was an OOM kill."""
        assert task.process is not None
        began = time.monotonic()
        while task.process.returncode is None:
            # A kernel's OOM killer acts at once: check often while the task starts up.
            await asyncio.sleep(OOM_CHECK_INTERVAL if time.monotonic() - began > 2 else 0.02)
            usage = _tree_rss(task.process.pid)
            if sum(usage.values()) > limit_mb * 2**20:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(max(usage, key=usage.__getitem__), signal.SIGKILL)

    def _stop_alloc(self, alloc: Alloc, description: str) -> None:
        alloc.data.update(DesiredStatus="stop", DesiredDescription=description)
        self._touch(alloc)
        for task in alloc.tasks.values():
            self._spawn(self._kill(alloc, task))

    async def _kill(self, alloc: Alloc, task: Task) -> None:
        process = task.process
        if process is None or process.returncode is not None:
            if task.state["State"] != "dead":
                self._dead(alloc, task, failed=False)
                self._settle(alloc)
            return
        timeout = _duration(task.spec.get("KillTimeout"), DEFAULT_KILL_TIMEOUT)
        name = task.spec.get("KillSignal") or "SIGINT"
        task.killing = True
        self._event(alloc, task, "Killing",
                    f"Sent interrupt. Waiting {timeout:g}s before force killing",
                    {"kill_timeout": f"{timeout:g}s"}, KillTimeout=int(timeout * 1e9))
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(getattr(signal, name, signal.SIGINT))
        try:
            await asyncio.wait_for(asyncio.shield(task.done.wait()), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    # ---------------------------------------------------------------- allocations

    def _alloc_json(self, alloc: Alloc, full: bool, resources: bool = True,
                    task_states: bool = True) -> dict[str, Any]:
        data = dict(alloc.data)
        if full:
            data["Job"] = alloc.job
            data["Resources"] = None
            data["TaskResources"] = None
            data["Metrics"] = None
            data["Services"] = None
            data["NetworkStatus"] = None
            for key in ("JobType", "JobVersion"):
                data.pop(key, None)
        else:
            if not resources:
                data.pop("AllocatedResources")
            if not task_states:
                data["TaskStates"] = None
        return data

    async def list_allocations(self, request: web.Request) -> web.Response:
        await self._blocking(request)
        namespace = self._namespace(request)
        prefix = request.query.get("prefix", "")
        matches = self._filter(request)
        resources = _truthy(request.query.get("resources"))
        task_states = request.query.get("task_states", "true").lower() not in ("0", "f", "false")
        out = [self._alloc_json(a, False, resources, task_states) for a in self.allocs.values()
               if (namespace == "*" or a.data["Namespace"] == namespace)
               and a.data["ID"].startswith(prefix) and (matches is None or matches(a.data))]
        return self._json(out)

    async def job_allocations(self, request: web.Request) -> web.Response:
        await self._blocking(request)
        namespace = self._namespace(request)
        job_id = request.match_info["id"]
        out = [self._alloc_json(a, False, resources=False) for a in self.allocs.values()
               if a.data["JobID"] == job_id and a.data["Namespace"] == namespace]
        return self._json(out)

    def _alloc_or_404(self, request: web.Request) -> Alloc:
        alloc_id = request.match_info["id"]
        alloc = self.allocs.get(alloc_id)
        if alloc is None:
            matches = [a for a in self.allocs.values() if a.data["ID"].startswith(alloc_id)]
            if len(matches) != 1:
                raise web.HTTPNotFound(text="alloc not found")
            alloc = matches[0]
        return alloc

    async def read_allocation(self, request: web.Request) -> web.Response:
        await self._blocking(request)
        return self._json(self._alloc_json(self._alloc_or_404(request), True))

    async def stop_allocation(self, request: web.Request) -> web.Response:
        """``nomad alloc stop``: the allocation is stopped and a replacement placed."""
        alloc = self._alloc_or_404(request)
        job = alloc.job
        ev = self._eval(job, "alloc-stop")
        alloc.data["DesiredTransition"]["Migrate"] = True
        self._stop_alloc(alloc, "alloc is being migrated")
        live = (job["Namespace"], job["ID"]) in self.jobs and not job["Stop"]
        if live and alloc.data["ClientStatus"] in ("pending", "running"):
            group = next(g for g in job["TaskGroups"] if g["Name"] == alloc.data["TaskGroup"])
            if self._fit(job, group) is None:
                index = int(alloc.data["Name"].rsplit("[", 1)[1].rstrip("]"))
                new = self._place(job, group, index, ev["ID"], previous=alloc.data["ID"])
                alloc.data["NextAllocation"] = new.data["ID"]
        ev.update(Status="complete", ModifyIndex=self._bump())
        return self._json({"EvalID": ev["ID"], "Index": self.index})

    # ---------------------------------------------------------------- logs

    async def logs(self, request: web.Request) -> web.StreamResponse:
        alloc = self._alloc_or_404(request)
        name = request.query.get("task", "")
        kind = request.query.get("type", "")
        if name not in alloc.tasks:
            raise web.HTTPBadRequest(text="must include task name")
        if kind not in ("stdout", "stderr"):
            raise web.HTTPBadRequest(text="must include type of 'stdout' or 'stderr'")
        try:
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="invalid offset") from None
        origin = request.query.get("origin", "start")
        follow, plain = _truthy(request.query.get("follow")), _truthy(request.query.get("plain"))
        task = alloc.tasks[name]
        path = alloc.root / "alloc" / "logs" / f"{name}.{kind}.0"
        relative = f"alloc/logs/{name}.{kind}.0"
        size = path.stat().st_size if path.exists() else 0
        position = max(0, size - offset) if origin == "end" else min(offset, size)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/plain" if plain else "application/json"})
        await resp.prepare(request)
        last_beat = time.monotonic()
        while True:
            chunk = b""
            if path.exists():
                with open(path, "rb") as fh:
                    fh.seek(position)
                    chunk = fh.read(LOG_CHUNK)
            if chunk:
                position += len(chunk)
                if plain:
                    await resp.write(chunk)
                else:
                    await resp.write(json.dumps({"Offset": position, "Data": base64.b64encode(
                        chunk).decode(), "File": relative}).encode())
                continue
            if not follow or task.done.is_set():
                break
            if time.monotonic() - last_beat > FRAME_HEARTBEAT and not plain:
                await resp.write(b"{}")
                last_beat = time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task.done.wait()), 0.1)
        await resp.write_eof()
        return resp

    # ---------------------------------------------------------------- misc

    async def leader(self, request: web.Request) -> web.Response:
        return self._json("127.0.0.1:4647")

    async def agent_self(self, request: web.Request) -> web.Response:
        return self._json({"config": {"Region": REGION, "Datacenter": DATACENTER,
                                      "Version": {"Version": "1.9.0-standin"}},
                           "member": {"Name": NODE_NAME}, "stats": {}})

    async def nodes(self, request: web.Request) -> web.Response:
        """``NodeListStub``s; with ``resources=true`` their ``NodeResources`` and
        ``ReservedResources`` too (api/nodes.go)."""
        node: dict[str, Any] = {
            "ID": self.node_id, "Name": NODE_NAME, "Datacenter": DATACENTER,
            "NodePool": NODE_POOL, "NodeClass": "", "Status": "ready", "Drain": False,
            "SchedulingEligibility": "eligible", "Address": self.node_address,
            "Drivers": {d: {"Detected": True, "Healthy": True} for d in DRIVERS}}
        if _truthy(request.query.get("resources")):
            node["NodeResources"] = {
                "Cpu": {"CpuShares": self.cpu_mhz, "TotalCpuCores": os.cpu_count() or 1,
                        "ReservableCpuCores": list(range(os.cpu_count() or 1))},
                "Memory": {"MemoryMB": self.memory_mb}, "Disk": {"DiskMB": 100_000},
                "Networks": None, "Devices": None,
                "MinDynamicPort": MIN_DYNAMIC_PORT, "MaxDynamicPort": MAX_DYNAMIC_PORT}
            node["ReservedResources"] = {
                "Cpu": {"CpuShares": 0}, "Memory": {"MemoryMB": 0}, "Disk": {"DiskMB": 0},
                "Networks": {"ReservedHostPorts": ""}}
        return self._json([node])

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults)

    async def put_faults(self, request: web.Request) -> web.Response:
        self.faults.update(await request.json())
        return web.json_response(self.faults)

    async def task_pids(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"alloc": a.data["ID"], "job": a.data["JobID"], "task": t.name, "pid": t.process.pid}
            for a in self.allocs.values() for t in a.tasks.values()
            if t.process is not None and t.process.returncode is None])


def _is_uuid(text: str) -> bool:
    """``helper.IsUUID``: 36 characters, hex digits and dashes in UUID form."""
    return re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", text) is not None


def _glob(pattern: str, value: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), value) is not None


def _free_port() -> int:
    """A free port in the client's dynamic range, picked at random as Nomad picks one
    (nomad/structs/network.go, ``getDynamicPortsStochastic``)."""
    for port in random.sample(range(MIN_DYNAMIC_PORT, MAX_DYNAMIC_PORT + 1), 100):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {MIN_DYNAMIC_PORT}-{MAX_DYNAMIC_PORT}")


def _tree_rss(root: int) -> dict[int, int]:
    """Resident bytes of ``root`` and of every process below it, read from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * page
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        tree[pid] = rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return tree
