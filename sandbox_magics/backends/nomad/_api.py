"""`NomadAPI`: the few calls the backend makes, through python-nomad 2.1.0, with its quirks
wrapped here and every failure turned into one `NomadAPIError` sentence.

The quirks:

- ``user_agent`` without a token raises a TypeError on every request (the headers dict
  is only made when there is a token), so the user agent is set on the session instead.
- an unset token (or address, region, namespace) silently falls back to ``$NOMAD_TOKEN``
  (``$NOMAD_ADDR``...); the token here comes only from the variable the profile names.
- ``verify`` defaults to False: an https address would go unchecked; here it is True (or
  the profile's CA bundle).
- no call takes ``index``/``wait`` (blocking queries) or returns ``X-Nomad-Index``, and
  ``stream_logs`` blocks until the log ends and returns the framed text whole: those go
  through the endpoint objects' own ``request`` instead.
- job ids are put into paths unquoted, so only ids made of ``[A-Za-z0-9_.-]`` are used.

Every method is blocking; the backend runs them in its own threads.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import nomad
import nomad.api.exceptions as nomad_errors
import requests

from ... import __version__
from ...exceptions import SandboxError
from ._settings import Settings

USER_AGENT = f"sandbox_magics/{__version__} python-nomad/2.1.0"
LOG_READ = 64 * 1024


class NomadAPIError(SandboxError):
    """A Nomad API call failed; the message is one sentence naming the cause."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(NomadAPIError):
    """Raised when Nomad answers 404 (the job or allocation is not there)."""


class NomadAPI:
    """The Nomad API at ``settings``' address, with the token from its ``token_env``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address = settings.resolved_address()
        self.namespace = settings.namespace or os.environ.get("NOMAD_NAMESPACE") or None
        self.region = settings.region or os.environ.get("NOMAD_REGION") or None
        self._token: str | None = None
        self._client: nomad.Nomad | None = None
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.verify = settings.ca_cert or True

    def __repr__(self) -> str:
        return f"<NomadAPI {self.address} namespace={self.namespace}>"

    @property
    def client(self) -> nomad.Nomad:
        """The python-nomad client, rebuilt when the token variable changes."""
        token = os.environ.get(self.settings.token_env) or None
        if self._client is None or token != self._token:
            client = nomad.Nomad(address=self.address, token=token, namespace=self.namespace,
                                 region=self.region, timeout=int(self.settings.api_timeout),
                                 verify=self.settings.ca_cert or True, session=self._session)
            for endpoint in _requesters(client):
                endpoint.token = token
                endpoint.timeout = self.settings.api_timeout
            self._client, self._token = client, token
        return self._client

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ errors

    def _error(self, exc: Exception, what: str) -> NomadAPIError:
        resp = getattr(exc, "nomad_resp", None)
        if isinstance(resp, requests.Response):
            body = " ".join(resp.text.split())[:300] or resp.reason
            refusal = self._acl_refusal(resp.status_code, body, what)
            if refusal:
                return refusal
            if resp.status_code == 404:
                return NotFound(f"Nomad at {self.address} has no {what} (404 {body}).", 404)
            return NomadAPIError(f"Nomad at {self.address} refused {what} "
                                 f"({resp.status_code} {body}).", resp.status_code)
        cause = resp if isinstance(resp, BaseException) else exc
        if isinstance(cause, requests.Timeout) or isinstance(
                exc, nomad_errors.TimeoutNomadException):
            return NomadAPIError(f"Nomad at {self.address} did not answer {what} within "
                                 f"{self.settings.api_timeout:g} s.")
        reason = connection_reason(cause)
        return NomadAPIError(f"Nomad at {self.address} cannot be reached ({reason}); check the "
                             "profile's nomad address (or $NOMAD_ADDR) and that Nomad runs.")

    def _acl_refusal(self, status: int, body: str, what: str) -> NomadAPIError | None:
        """Nomad's ACL refusals as one sentence, None for any other answer. Server
        endpoints say "Permission denied" (403) for a token they do not know as for one
        whose policy forbids the call; client endpoints (logs) say "ACL token not found"
        or "ACL token expired", with a 500 (command/agent/http.go, client/acl.go)."""
        env = f"${self.settings.token_env}"
        namespace = repr(self.namespace or "default")
        if body in ("ACL token not found", "ACL token expired"):
            return NomadAPIError(
                f"Nomad at {self.address} refused {what}: it does not accept the token in "
                f"{env} ({status} {body}); set {env} to the secret ID of a current token "
                "(it may have expired or been deleted).", status)
        if body != "Permission denied":
            return None
        if not self._token:
            return NomadAPIError(
                f"Nomad at {self.address} refused {what} with no token ({env} is not set; "
                f"{status} {body}); set {env} to a token whose policy may submit, list and "
                f"read jobs and read their logs in namespace {namespace}.", status)
        return NomadAPIError(
            f"Nomad at {self.address} refused {what} with the token in {env} ({status} "
            f"{body}): Nomad does not know that token, or its policy does not allow this; set "
            f"{env} to a token whose policy may submit, list and read jobs and read their logs "
            f"in namespace {namespace}.", status)

    def _do(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (nomad_errors.BaseNomadException, requests.RequestException) as exc:
            raise self._error(exc, what) from None
        except ValueError as exc:
            raise NomadAPIError(f"Nomad at {self.address} sent an answer to {what} that is "
                                f"not JSON ({exc}).") from None

    def _get(self, what: str, endpoint: Any, *path: str, params: dict[str, Any],
             timeout: float | None = None) -> tuple[Any, int]:
        """GET through an endpoint object's ``request`` (query string and headers ours)."""
        resp = self._do(what, endpoint.request, *path, params=params, method="get",
                        timeout=timeout or self.settings.api_timeout)
        try:
            body = resp.json()
        except ValueError as exc:
            raise NomadAPIError(f"Nomad at {self.address} sent an answer to {what} that is "
                                f"not JSON ({exc}).") from None
        return body, int(resp.headers.get("X-Nomad-Index", "0") or 0)

    # ------------------------------------------------------------------ calls

    def register(self, job: dict[str, Any]) -> str:
        """Register ``job``; return the id of the evaluation it made."""
        reply = self._do(f"the submission of job {job['ID']}", self.client.jobs.register_job,
                         {"Job": job})
        return str(reply.get("EvalID") or "")

    def jobs(self, prefix: str, filter_: str) -> list[dict[str, Any]]:
        """Jobs whose id starts with ``prefix`` and that match ``filter_``, with their meta."""
        return list(self._do("the job list", self.client.jobs.get_jobs, prefix=prefix,
                             filter_=filter_, meta=True, namespace=self.namespace))

    def deregister(self, job_id: str) -> None:
        """Stop job ``job_id`` and purge it; nothing if it is already gone."""
        try:
            self._do(f"job {job_id}", self.client.job.deregister_job, job_id, purge=True,
                     namespace=self.namespace)
        except NotFound:
            pass

    def job_allocations(self, job_id: str, index: int = 0, wait: float = 0.0
                        ) -> tuple[list[dict[str, Any]], int]:
        """The allocations of ``job_id`` with their addresses (``resources=true``) and task
        states; with ``index``, a blocking query that answers once anything changed past
        it, or after ``wait`` seconds."""
        params: dict[str, Any] = {"filter": f"JobID == {json.dumps(job_id)}",
                                  "resources": "true", "task_states": "true"}
        if index:
            params.update(index=index, wait=f"{max(1, int(wait * 1000))}ms")
        if self.namespace:
            params["namespace"] = self.namespace
        allocs, new_index = self._get(f"the allocations of job {job_id}", self.client.allocations,
                                      params=params, timeout=self.settings.api_timeout + wait)
        return list(allocs or []), new_index

    def allocation(self, alloc_id: str, index: int = 0, wait: float = 0.0
                   ) -> tuple[dict[str, Any], int]:
        """Allocation ``alloc_id`` in full; a blocking query with ``index`` as above."""
        params: dict[str, Any] = {}
        if index:
            params.update(index=index, wait=f"{max(1, int(wait * 1000))}ms")
        return self._get(f"allocation {alloc_id[:8]}", self.client.allocation, alloc_id,
                         params=params, timeout=self.settings.api_timeout + wait)

    def evaluation(self, eval_id: str) -> dict[str, Any]:
        body, _ = self._get(f"evaluation {eval_id[:8]}", self.client.evaluation, eval_id, params={})
        return dict(body)

    def nodes(self) -> list[dict[str, Any]]:
        """The client nodes with their resources (``node:read``)."""
        return list(self._do("the node list", self.client.nodes.get_nodes, resources=True))

    def stop_allocation(self, alloc_id: str) -> None:
        self._do(f"allocation {alloc_id[:8]}", self.client.allocation.stop_allocation, alloc_id)

    def log(self, alloc_id: str, task: str, kind: str = "stderr", tail: int = 4096) -> bytes:
        """The last ``tail`` bytes of a task's ``kind`` log, read from its frames."""
        params = {"task": task, "type": kind, "origin": "end", "offset": tail,
                  "follow": "false", "plain": "false"}
        resp = self._do(f"the log of allocation {alloc_id[:8]}",
                        self.client.client.stream_logs.request, alloc_id, params=params,
                        method="get", stream=True, timeout=self.settings.api_timeout)
        try:
            return b"".join(decode_frames(resp.iter_content(LOG_READ)))
        except requests.RequestException as exc:
            raise self._error(exc, f"the log of allocation {alloc_id[:8]}") from None
        finally:
            resp.close()


def decode_frames(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The data of Nomad's log frames: JSON objects back to back (not one per line), each
    ``{"Data": base64, "File": ..., "Offset": ...}`` or ``{}`` for a heartbeat; a frame may
    be split across chunks."""
    decoder = json.JSONDecoder()
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode("utf-8", errors="replace")
        while True:
            stripped = buffer.lstrip()
            if not stripped:
                buffer = ""
                break
            try:
                frame, end = decoder.raw_decode(stripped)
            except ValueError:
                buffer = stripped
                break
            buffer = stripped[end:]
            if isinstance(frame, dict) and frame.get("Data"):
                yield base64.b64decode(frame["Data"])
    if buffer.strip():
        raise NomadAPIError("Nomad's log stream ended inside a frame.")


def _requesters(client: nomad.Nomad) -> Iterator[nomad.api.base.Requester]:
    """Every endpoint object of ``client`` (``client.client`` holds a few more)."""
    for endpoint in vars(client).values():
        if isinstance(endpoint, nomad.api.base.Requester):
            yield endpoint
        elif isinstance(endpoint, nomad.api.Client):
            yield from (e for e in vars(endpoint).values()
                        if isinstance(e, nomad.api.base.Requester))


def connection_reason(exc: BaseException) -> str:
    """The innermost cause of a connection error, in a few words ("connection refused")."""
    errno = getattr(getattr(exc, "os_error", exc), "errno", None)   # aiohttp's, or an OSError
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno).lower()
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "No route to host", "Temporary failure in name resolution",
                   "certificate verify failed", "Connection reset"):
        if marker.lower() in text.lower():
            return marker.lower() if marker != "Connection refused" else "connection refused"
    return type(exc).__name__ if not text else " ".join(text.split())[:200]
