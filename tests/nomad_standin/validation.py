"""Job validation as Nomad's ``Job.Register`` does it, with Nomad's own error texts.

Followed: ``nomad/structs/structs.go`` (``Job.Validate``, ``TaskGroup.Validate``,
``Task.Validate``, ``Resources.Validate`` / ``MeetsMinResources``, ``Constraint.Validate``,
``RequestedDevice.Validate``), ``nomad/structs/constraint.go``
(``validateConstraintAttribute``), ``api/resources.go`` (``Canonicalize``: an absent
``CPU`` is 100 and an absent ``MemoryMB`` 300, a given 0 stays 0) and Go's
``regexp/syntax`` error texts. Errors nest as hashicorp/go-multierror prints them, which is
the body of Nomad's 500 answer.
"""

from __future__ import annotations

import re
from typing import Any

MIN_CPU = 1
MIN_MEMORY_MB = 10
JOB_TYPES = ("service", "batch", "system", "sysbatch")
_EXACT_TARGETS = ("${node.unique.id}", "${node.datacenter}", "${node.unique.name}",
                  "${node.class}", "${node.pool}")
_PREFIX_TARGETS = ("${attr.", "${device.", "${meta.")
_NEEDS_VALUE = ("=", "==", "is", "!=", "not", "<", "<=", ">", ">=")
_SET_OPERATORS = ("set_contains", "set_contains_all", "set_contains_any")
_NO_VALUE = ("is_set", "is_not_set")
_KNOWN = (*_NEEDS_VALUE, *_SET_OPERATORS, *_NO_VALUE, "distinct_hosts", "distinct_property",
          "regexp", "version", "semver")
# RE2 has none of these; Go's parser stops at the text shown (regexp/syntax/parse.go).
_PERL_ONLY = re.compile(r"\(\?(?:[=!>|(]|<[=!]|P=)")
_BACKREFERENCE = re.compile(r"\\[1-9]")
_POSSESSIVE = re.compile(r"(?<!\\)(?:[*+?]|\{\d+(?:,\d*)?\})\+")


def multierror(errors: list[str]) -> str | None:
    """``errors`` as go-multierror's ``ListFormatFunc`` prints them, or None if none."""
    if not errors:
        return None
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"


def go_regexp_error(pattern: str) -> str | None:
    """What Go's ``regexp.Compile`` says of ``pattern``, or None if Go accepts it."""
    for found, code in ((_PERL_ONLY.search(pattern), "invalid or unsupported Perl syntax"),
                        (_BACKREFERENCE.search(pattern), "invalid escape sequence"),
                        (_POSSESSIVE.search(pattern), "invalid nested repetition operator")):
        if found:
            return f"error parsing regexp: {code}: `{found.group(0)}`"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"error parsing regexp: {_go_code(exc, pattern)}"
    return None


def _go_code(exc: re.error, pattern: str) -> str:
    message = exc.msg
    rest = pattern[exc.pos:] if exc.pos is not None else ""
    if message.startswith("missing ), unterminated subpattern"):
        return f"missing closing ): `{pattern}`"
    if message.startswith("unbalanced parenthesis"):
        return f"unexpected ): `{pattern}`"
    if message.startswith("unterminated character set"):
        return f"missing closing ]: `{rest}`"
    if message.startswith("nothing to repeat"):
        return f"missing argument to repetition operator: `{rest[:1]}`"
    if message.startswith("multiple repeat"):
        return f"invalid nested repetition operator: `{pattern[max(0, exc.pos - 1):exc.pos + 1]}`"
    if message.startswith("bad character range"):
        return f"invalid character class range: `{message.rsplit(' ', 1)[-1]}`"
    if message.startswith("bad escape (end of pattern)"):
        return "trailing backslash at end of expression: ``"
    if message.startswith("bad escape"):
        return f"invalid escape sequence: `{message.rsplit(' ', 1)[-1]}`"
    return f"invalid or unsupported Perl syntax: `{rest[:3]}`"


def _attribute(target: str) -> str | None:
    """``validateConstraintAttribute``."""
    if not target.startswith("$"):
        return None
    if not target.startswith("${"):
        return f"attribute {_quote(target)} is missing an opening brace"
    if not target.endswith("}"):
        return f"attribute {_quote(target)} is missing a closing brace"
    if target in _EXACT_TARGETS or target.startswith(_PREFIX_TARGETS):
        return None
    return f"unsupported attribute {_quote(target)}"


def constraint_errors(constraint: dict[str, Any]) -> list[str]:
    """``Constraint.Validate``."""
    errors = []
    operand = str(constraint.get("Operand") or "")
    left = str(constraint.get("LTarget") or "")
    right = str(constraint.get("RTarget") or "")
    if not operand:
        errors.append("Missing constraint operand")
    if operand in _SET_OPERATORS and not right:
        errors.append("Set contains constraint requires an RTarget")
    elif operand == "regexp" and (problem := go_regexp_error(right)):
        errors.append(f"Regular expression failed to compile: {problem}")
    elif operand == "distinct_property" and right:
        if not right.isdigit():
            errors.append(f"Failed to convert RTarget {_quote(right)} to uint64: "
                          f"strconv.ParseUint: parsing {_quote(right)}: invalid syntax")
        elif int(right) < 1:
            errors.append(f"Distinct Property must have an allowed count of 1 or greater: "
                          f"{int(right)} < 1")
    elif operand in _NO_VALUE and right:
        errors.append(f"Operator {_quote(operand)} does not support an RTarget")
    elif operand in _NEEDS_VALUE and not right:
        errors.append(f"Operator {_quote(operand)} requires an RTarget")
    elif operand not in _KNOWN:
        errors.append(f"Unknown constraint type {_quote(operand)}")
    if operand != "distinct_hosts":
        if not left:
            errors.append("no attribute provided but is required by operator")
        elif problem := _attribute(left):
            errors.append(problem)
    return errors


def _constraints(constraints: list[dict[str, Any]] | None) -> list[str]:
    return [f"Constraint {i} validation failed: {text}"
            for i, c in enumerate(constraints or [], 1)
            if (text := multierror(constraint_errors(c)))]


def _resources(resources: dict[str, Any] | None) -> str | None:
    """``Resources.Validate`` after ``api.Resources.Canonicalize``."""
    resources = resources or {}
    cores = int(resources.get("Cores") or 0)
    cpu = resources.get("CPU")
    cpu = (100 if cores == 0 else 0) if cpu is None else int(cpu)
    memory = resources.get("MemoryMB")
    memory = 300 if memory is None else int(memory)
    errors = []
    if cores > 0 and cpu > 0:
        errors.append("Task can only ask for 'cpu' or 'cores' resource, not both.")
    minimum = []
    if cpu < MIN_CPU and cores == 0:
        minimum.append(f"minimum CPU value is {MIN_CPU}; got {cpu}")
    if memory < MIN_MEMORY_MB:
        minimum.append(f"minimum MemoryMB value is {MIN_MEMORY_MB}; got {memory}")
    if text := multierror(minimum):
        errors.append(text)
    for i, device in enumerate(resources.get("Devices") or [], 1):
        if text := multierror(_device(device)):
            errors.append(f"device {i} failed validation: {text}")
    return multierror(errors)


def _device(device: dict[str, Any]) -> list[str]:
    """``RequestedDevice.Validate``."""
    errors = []
    if not device.get("Name"):
        errors.append("device name must be given as one of the following: type, vendor/type, "
                      "or vendor/type/name")
    for i, constraint in enumerate(device.get("Constraints") or [], 1):
        operand = constraint.get("Operand")
        if operand in ("distinct_hosts", "distinct_property"):
            errors.append(f"Constraint {i} validation failed: using unsupported operand "
                          f"{_quote(str(operand))}")
        elif text := multierror(constraint_errors(constraint)):
            errors.append(f"Constraint {i} validation failed: {text}")
    return errors


CHANGE_MODES = ("noop", "restart", "signal", "script")


def template_errors(template: dict[str, Any]) -> list[str]:
    """``Template.Validate`` (nomad/structs/structs.go), after ``api`` canonicalized it
    (ChangeMode "restart", Perms "0644" when absent)."""
    errors = []
    if not template.get("SourcePath") and not template.get("EmbeddedTmpl"):
        errors.append("Must specify a source path or have an embedded template")
    dest = template.get("DestPath") or ""
    if not dest:
        errors.append("Must specify a destination for the template")
    elif dest.startswith("/") or ".." in dest.split("/"):
        errors.append("destination escapes allocation directory")
    mode = template.get("ChangeMode") or "restart"
    if mode not in CHANGE_MODES:
        errors.append("Invalid change mode. Must be one of the following: noop, signal, "
                      "script, restart")
    elif mode == "signal" and not template.get("ChangeSignal"):
        errors.append("Must specify signal value when change mode is signal")
    if (template.get("Splay") or 0) < 0:
        errors.append("Must specify positive splay value")
    perms = template.get("Perms") or "0644"
    if not re.fullmatch(r"[0-7]{1,4}", perms):
        errors.append(f'Failed to parse "{perms}" as octal: strconv.ParseUint: parsing '
                      f'"{perms}": invalid syntax')
    return errors


def _task(task: dict[str, Any]) -> str | None:
    """``Task.Validate`` (the parts a job of ours or a test reaches)."""
    errors = []
    name = task.get("Name") or ""
    if not name:
        errors.append("Missing task name")
    if name == "alloc":
        errors.append('Task cannot be named "alloc"')
    if "/" in name or "\\" in name:
        errors.append("Task name cannot include slashes")
    if not task.get("Driver"):
        errors.append("Missing task driver")
    if (task.get("KillTimeout") or 0) < 0:
        errors.append("KillTimeout must be a positive value")
    if text := _resources(task.get("Resources")):
        errors.append(text)
    errors += _constraints(task.get("Constraints"))
    for i, template in enumerate(task.get("Templates") or [], 1):
        if text := multierror(template_errors(template)):
            errors.append(f"Template {i} validation failed: {text}")
    for i, constraint in enumerate(task.get("Constraints") or [], 1):
        if constraint.get("Operand") in ("distinct_hosts", "distinct_property"):
            errors.append(f"Constraint {i} has disallowed Operand at task level: "
                          f"{constraint['Operand']}")
    return multierror(errors)


def _group(group: dict[str, Any]) -> str | None:
    """``TaskGroup.Validate`` (the same parts)."""
    errors = []
    if not group.get("Name"):
        errors.append("Missing task group name")
    if int(group.get("Count") or 0) < 0:
        errors.append("Task group count can't be negative")
    tasks = group.get("Tasks") or []
    if not tasks:
        errors.append("Missing tasks for task group")
    errors += _constraints(group.get("Constraints"))
    seen: dict[str, int] = {}
    for i, task in enumerate(tasks, 1):
        name = task.get("Name") or ""
        if not name:
            errors.append(f"Task {i} missing name")
        elif name in seen:
            errors.append(f"Task {i} redefines '{name}' from task {seen[name]}")
        else:
            seen[name] = i
    for task in tasks:
        if text := _task(task):
            errors.append(f"Task {task.get('Name') or ''} validation failed: {text}")
    return multierror(errors)


def job_errors(job: dict[str, Any]) -> list[str]:
    """``Job.Validate``'s errors, flattened one level as ``jobValidate`` appends them."""
    errors = []
    job_id = job.get("ID") or ""
    if not job_id:
        errors.append("Missing job ID")
    elif " " in job_id:
        errors.append("Job ID contains a space")
    elif "\0" in job_id:
        errors.append("Job ID contains a null character")
    kind = job.get("Type")
    if not kind:
        errors.append("Missing job type")
    elif kind not in JOB_TYPES:
        errors.append(f"Invalid job type: {_quote(str(kind))}")
    if any(dc == "" for dc in job.get("Datacenters") or []):
        errors.append("Job datacenter must be non-empty string")
    groups = job.get("TaskGroups") or []
    if not groups:
        errors.append("Missing job task groups")
    errors += _constraints(job.get("Constraints"))
    seen: dict[str, int] = {}
    for i, group in enumerate(groups, 1):
        name = group.get("Name") or ""
        if not name:
            errors.append(f"Job task group {i} missing name")
        elif name in seen:
            errors.append(f"Job task group {i} redefines '{name}' from group {seen[name]}")
        else:
            seen[name] = i
    for group in groups:
        if text := _group(group):
            errors.append(f"Task group {group.get('Name') or ''} validation failed: {text}")
    return errors


def _quote(text: str) -> str:
    """Go's ``%q`` of a plain string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
