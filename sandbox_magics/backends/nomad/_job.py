"""The Nomad job of one sandbox, and Nomad's answers read as sentences (pure functions).

One batch job per sandbox: one group, one task running the agent (with the docker
driver, from the `agent_bundle` the job carries as a template, so any image with Python
runs it), restarts and rescheduling off (an agent that exits ends its allocation, and the pool replaces the
sandbox), a dynamic port ``agent``, the core's tags in the job's meta, and only the
SHA-256 of the agent's token in its environment.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ... import identity
from ...profiles import Profile
from ..agent_bundle import BUNDLE_FILE, boot, bundle_text
from ._settings import Settings

GROUP = "sandbox"
TASK = "agent"
PORT = "agent"
KILL_TIMEOUT = 5.0
META_PREFIX = identity.TAG_PREFIX.replace(".", "_")
SLOTS_META = f"{META_PREFIX}slots"
TOKEN_SHA256_ENV = "SANDBOX_AGENT_TOKEN_SHA256"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_NS = 1_000_000_000


def job_id(settings: Settings, client_id: str, name: str) -> str:
    """The job id of sandbox ``name`` of client ``client_id``: ``<prefix><client>-<name>``,
    made only of characters that need no quoting in a URL path."""
    return f"{settings.job_prefix}{client_id}-{_UNSAFE.sub('-', name)}"[:120]


def meta_key(tag: str) -> str:
    """The job meta key of a core tag (``sandbox_magics.client`` → ``sandbox_magics_client``):
    no dots, so filter expressions and ``NOMAD_META_*`` need no quoting."""
    return tag.replace(".", "_")


def tags_of(meta: Mapping[str, str] | None) -> dict[str, str]:
    """The core's tags back from a job's meta."""
    return {identity.TAG_PREFIX + key[len(META_PREFIX):]: value
            for key, value in (meta or {}).items() if key.startswith(META_PREFIX)}


def profile_filter(profile: str) -> str:
    """The filter expression for the jobs of ``profile``."""
    value = profile.replace("\\", "\\\\").replace('"', '\\"')
    return f'Meta.{meta_key(identity.PROFILE)} == "{value}"'


def _gpu(settings: Settings, gpu: str) -> dict[str, Any]:
    model, _, count = gpu.partition(":")
    device: dict[str, Any] = {"Name": settings.gpu_device,
                              "Count": int(count) if count.isdigit() else 1}
    if model and model.lower() not in ("any", "gpu"):
        device["Constraints"] = [{"LTarget": "${device.model}", "Operand": "regexp",
                                  "RTarget": re.escape(model)}]
    return device


def job_spec(settings: Settings, profile: Profile, sandbox_id: str, tags: Mapping[str, str],
             token_sha256: str, namespace: str | None, region: str | None) -> dict[str, Any]:
    """The job that runs one agent serving ``profile.slots_per_sandbox`` slots."""
    host = "${NOMAD_IP_%s}" % PORT if settings.driver == "raw_exec" else "0.0.0.0"
    agent = ["--root", "${NOMAD_TASK_DIR}/workspaces",
             "--slots", str(profile.slots_per_sandbox), "--host", host,
             "--port", "${NOMAD_PORT_%s}" % PORT,
             "--idle-timeout", f"{profile.heartbeat_window:g}",
             "--heartbeat-window", f"{profile.heartbeat_window:g}"]
    config: dict[str, Any] = {"command": settings.python,
                              "args": ["-m", "sandbox_magics.agent", *agent]}
    templates = None
    if settings.driver == "docker":  # a stock image: the job brings the agent (agent_bundle)
        config.update(image=profile.image or "python:3.12-slim", ports=[PORT],
                      args=["-c", boot(), "${NOMAD_TASK_DIR}", *agent],
                      image_pull_timeout=f"{settings.image_pull_timeout:g}s")
        templates = [{"EmbeddedTmpl": bundle_text(), "DestPath": f"local/{BUNDLE_FILE}",
                      "ChangeMode": "noop", "Perms": "0644"}]
    resources: dict[str, Any] = {"CPU": max(1, round(profile.cpu * settings.mhz_per_cpu)),
                                 "MemoryMB": int(profile.memory_mb)}
    if profile.gpu:
        resources["Devices"] = [_gpu(settings, profile.gpu)]
    meta = {meta_key(k): str(v) for k, v in tags.items()}
    meta[SLOTS_META] = str(profile.slots_per_sandbox)
    no_reschedule = {"Attempts": 0, "Interval": 0, "Unlimited": False}
    job: dict[str, Any] = {
        "ID": sandbox_id, "Name": sandbox_id, "Type": "batch", "Priority": 50,
        "Datacenters": list(settings.datacenters), "Meta": meta,
        "Constraints": [{"LTarget": c.get("attribute", ""), "Operand": c.get("operator", "="),
                         "RTarget": c.get("value", "")} for c in settings.constraints] or None,
        "Reschedule": no_reschedule,
        "TaskGroups": [{
            "Name": GROUP, "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail", "Interval": 24 * 3600 * _NS,
                              "Delay": 0},
            "ReschedulePolicy": no_reschedule,
            "Networks": [{"DynamicPorts": [{"Label": PORT}]}],
            "Tasks": [{
                "Name": TASK, "Driver": settings.driver, "Config": config,
                "Env": {TOKEN_SHA256_ENV: token_sha256, "PYTHONUNBUFFERED": "1"},
                "Resources": resources, "Templates": templates,
                "KillSignal": "SIGTERM", "KillTimeout": int(KILL_TIMEOUT * _NS),
                "LogConfig": {"MaxFiles": 2, "MaxFileSizeMB": 10},
            }],
        }],
    }
    if namespace:
        job["Namespace"] = namespace
    if region:
        job["Region"] = region
    if settings.node_pool:
        job["NodePool"] = settings.node_pool
    return job


# ---------------------------------------------------------------------- reading answers

TERMINAL = ("complete", "failed", "lost")


def short(alloc_id: str) -> str:
    return alloc_id[:8]


def latest(allocs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest allocation (a replaced one is older than its replacement)."""
    return max(allocs, key=lambda a: a.get("CreateIndex", 0), default=None)


def address(alloc: Mapping[str, Any]) -> str | None:
    """``http://host:port`` of the agent port, from ``AllocatedResources.Shared.Ports``
    (present on a full allocation and on list entries asked with ``resources=true``)."""
    shared = ((alloc.get("AllocatedResources") or {}).get("Shared") or {})
    for port in shared.get("Ports") or []:
        if port.get("Label") == PORT and port.get("Value"):
            host = port.get("HostIP") or "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{port['Value']}"
    for network in shared.get("Networks") or []:
        for port in network.get("DynamicPorts") or []:
            if port.get("Label") == PORT and port.get("Value") and network.get("IP"):
                return f"http://{network['IP']}:{port['Value']}"
    return None


def _events(alloc: Mapping[str, Any]) -> list[dict[str, Any]]:
    state = (alloc.get("TaskStates") or {}).get(TASK) or {}
    return list(state.get("Events") or [])


def _message(event: Mapping[str, Any]) -> str:
    return str(event.get("DisplayMessage") or event.get("DriverError") or event.get("Message")
               or event.get("Type") or "").strip().rstrip(".")


def pulling(alloc: Mapping[str, Any]) -> str | None:
    """What an image pull of the allocation's task says, while its driver pulls ("pulling
    the image python:3.12-slim: Pulled 3/7 (1.2GiB/3.4GiB) layers: ..."), else None.

    The docker driver's events: "Downloading image" as the pull starts (the image in its
    annotations), "Docker image pull progress: ..." every two minutes of a slow one
    (drivers/docker/driver.go, coordinator.go); any later event ends the pull."""
    image, progress = None, None
    for event in _events(alloc):
        text = _message(event)
        if text == "Downloading image":
            image, progress = (event.get("Details") or {}).get("image", ""), None
        elif image is not None and text.startswith("Docker image pull progress: "):
            progress = text.removeprefix("Docker image pull progress: ")
        else:
            image = None
    if image is None:
        return None
    return f"pulling the image {image}" + (f": {progress}" if progress else "")


def sigkilled(memory_mb: int | None) -> str:
    """A SIGKILL nobody asked for, in words: on a Nomad client it comes from the kernel's
    OOM killer, which on cgroups v2 no driver reports as such (exit 137, ``oom_killed``
    false: drivers/docker/handle.go, drivers/shared/executor/executor.go)."""
    limit = f": the sandbox's limit is {memory_mb} MB" if memory_mb else ""
    return f"killed by SIGKILL (exit 137), probably out of memory{limit}"


def task_failure(alloc: Mapping[str, Any], memory_mb: int | None = None) -> str | None:
    """What the task events say went wrong, as the end of a sentence, or None."""
    for event in reversed(_events(alloc)):
        kind = event.get("Type")
        details = event.get("Details") or {}
        if kind == "Terminated":
            if details.get("oom_killed") == "true":
                limit = f" (its memory limit is {memory_mb} MB)" if memory_mb else ""
                return f"its task was OOM killed{limit}"
            code = details.get("exit_code", str(event.get("ExitCode", "")))
            sig = details.get("signal", str(event.get("Signal", "0")))
            if sig == "9" or code == "137":
                return f"its agent was {sigkilled(memory_mb)}"
            if sig and sig != "0":
                return f"its agent was killed by signal {sig} (exit code {code})"
            return f"its agent exited with code {code}"
        if kind == "Driver Failure":
            message = _message(event)
            if "pull" in message.lower():
                return f"its image could not be pulled: {message}"
            return f"its task could not be started by the driver: {message}"
        if kind in ("Setup Failure", "Failed Validation", "Failed Artifact Download"):
            return f"its task failed to start ({kind}): {_message(event)}"
    return None


def alloc_ended(alloc: Mapping[str, Any], memory_mb: int | None = None) -> str | None:
    """How an allocation that no longer runs ended ("was stopped by Nomad: alloc is being
    migrated", "failed: its agent was killed by SIGKILL (exit 137), probably out of memory:
    the sandbox's limit is 512 MB"), or None while it runs or may still."""
    status = alloc.get("ClientStatus")
    desired = alloc.get("DesiredStatus")
    cause = task_failure(alloc, memory_mb)
    if desired in ("stop", "evict") and (status in TERMINAL or cause is None):
        why = alloc.get("DesiredDescription") or "stopped"
        return f"was stopped by Nomad ({why})"
    if status == "lost":
        return f"was lost with its node ({alloc.get('ClientDescription') or 'node down'})"
    if status in ("failed", "complete"):
        verb = "failed" if status == "failed" else "ended"
        return f"{verb}: {cause or alloc.get('ClientDescription') or status}"
    state = ((alloc.get("TaskStates") or {}).get(TASK) or {})
    if state.get("State") == "dead":
        return f"ended: {cause or 'its task is dead'}"
    if cause and any(e.get("Type") == "Driver Failure" for e in _events(alloc)):
        return f"failed: {cause}"
    return None


@dataclass(frozen=True)
class PlacementFailure:
    """Why an evaluation placed nothing: ``reasons``, the end of a sentence, and ``busy``:
    some node passed every filter and was only full, so capacity may free up later."""

    reasons: str
    busy: bool


def gpu_wanted(settings: Settings, gpu: str) -> str:
    """The devices a profile's ``gpu`` asks for, in words ("2 nvidia/gpu devices of model
    H100")."""
    device = _gpu(settings, gpu)
    count = device["Count"]
    what = f"{count} {device['Name']} device{'s' if count != 1 else ''}"
    model = gpu.partition(":")[0]
    return f"{what} of model {model}" if device.get("Constraints") else what


def placement_failure(evaluation: Mapping[str, Any], gpu: str | None = None
                      ) -> PlacementFailure | None:
    """Why an evaluation could not place the sandbox (from ``FailedTGAllocs``), or None;
    ``gpu`` says what the profile's gpu asks for (`gpu_wanted`), for a node filtered for
    "missing devices" (scheduler/feasible/feasible.go, DeviceChecker)."""
    failed = evaluation.get("FailedTGAllocs") or {}
    metric = failed.get(GROUP) or next(iter(failed.values()), None)
    if evaluation.get("Status") == "failed":
        return PlacementFailure("its evaluation failed "
                                f"({evaluation.get('StatusDescription') or 'no reason given'})",
                                busy=False)
    if not metric:
        return None
    reasons = []
    for dimension, count in sorted((metric.get("DimensionExhausted") or {}).items()):
        reasons.append(f"{dimension} exhausted on {count} node(s)")
    for constraint, count in sorted((metric.get("ConstraintFiltered") or {}).items()):
        if constraint == "missing devices" and gpu:
            reasons.append(f"no node has the {gpu} that the profile's gpu asks for (Nomad "
                           f"filtered {count} node(s) for missing devices); use a GPU the "
                           "cluster has, or a node_pool whose nodes have it")
        else:
            reasons.append(f"constraint {constraint!r} filtered {count} node(s)")
    for klass, count in sorted((metric.get("ClassFiltered") or {}).items()):
        reasons.append(f"class {klass!r} filtered {count} node(s)")
    for quota in metric.get("QuotaExhausted") or []:
        reasons.append(f"quota {quota} exhausted")
    if not metric.get("NodesInPool") and not metric.get("NodesAvailable"):
        pool = metric.get("NodePool") or "default"
        reasons.append(f"no ready node in node pool {pool!r} and the job's datacenters")
    evaluated = metric.get("NodesEvaluated", 0)
    summary = "; ".join(reasons) or f"{evaluated} node(s) evaluated, none fit"
    busy = bool(metric.get("NodesExhausted") or metric.get("QuotaExhausted"))
    return PlacementFailure(summary, busy)


def room_problem(nodes: list[dict[str, Any]], job: Mapping[str, Any]) -> str | None:
    """Why no node of the job's pool and datacenters could hold its task even when idle
    (from ``NodeResources`` less ``ReservedResources``), as the end of a sentence; None if
    one could, or if the nodes' resources are not known."""
    asked = ((job["TaskGroups"][0]["Tasks"][0]).get("Resources") or {})
    cpu, memory = int(asked.get("CPU") or 0), int(asked.get("MemoryMB") or 0)
    pool = job.get("NodePool") or "default"
    rooms = [_room(n) for n in nodes
             if n.get("Status") == "ready" and n.get("SchedulingEligibility") == "eligible"
             and pool in ("all", n.get("NodePool"))
             and any(fnmatch.fnmatchcase(str(n.get("Datacenter")), dc)
                     for dc in job.get("Datacenters") or ["*"])]
    known = [room for room in rooms if room is not None]
    if not known or len(known) < len(rooms) or any(c >= cpu and m >= memory for c, m in known):
        return None
    most_cpu, most_memory = max(c for c, _ in known), max(m for _, m in known)
    return (f"it asks {memory} MB of memory and {cpu} MHz of CPU, more than any node has when "
            f"idle (at most {most_memory} MB and {most_cpu} MHz); lower the profile's "
            "memory_mb or cpu")


def _room(node: Mapping[str, Any]) -> tuple[int, int] | None:
    """A node's CPU (MHz) and memory (MB) for tasks, or None if not listed."""
    total = node.get("NodeResources") or {}
    reserved = node.get("ReservedResources") or {}
    if not total:
        return None
    cpu = int((total.get("Cpu") or {}).get("CpuShares") or 0)
    memory = int((total.get("Memory") or {}).get("MemoryMB") or 0)
    return (cpu - int((reserved.get("Cpu") or {}).get("CpuShares") or 0),
            memory - int((reserved.get("Memory") or {}).get("MemoryMB") or 0))


def agent_port(stdout: str) -> int | None:
    """The port the agent says it listens on (its first stdout line, ``{"port": ...}``)."""
    for line in stdout.splitlines():
        try:
            said = json.loads(line)
        except ValueError:
            continue
        if isinstance(said, dict) and isinstance(said.get("port"), int):
            return int(said["port"])
    return None
