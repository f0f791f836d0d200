"""A kernel session is a session slot: the profile's ``idle_timeout`` and ``lifetime``, and
a scale down, end its kernel, and the session's next cell says why and starts a fresh one
(Python API, real local agents)."""

from __future__ import annotations

import asyncio

from sandbox_magics import Client
from tests.kernel_driver import wait_until

PROFILES = """
[profiles.quick]
slots_per_sandbox = 2
max_sandboxes = 1
idle_timeout = 1

[profiles.quick.local]
workspace_base = "{ws}"

[profiles.short]
slots_per_sandbox = 2
max_sandboxes = 1
lifetime = 2

[profiles.short.local]
workspace_base = "{ws}"

[profiles.short-lived]
slots_per_sandbox = 2
max_sandboxes = 1

[profiles.short-lived.local]
workspace_base = "{ws}"
"""


def test_an_idle_kernel_ends_at_the_profiles_idle_timeout_and_the_next_cell_says_so(
        client: Client) -> None:
    k = client.kernel("idle", profile="quick")
    asyncio.run(k.arun("state = 1"))
    assert wait_until(lambda: k.state == "stopped", 15), k.state
    out = asyncio.run(k.arun("print('state' in dir())"))
    assert out.stdout == "False\n"
    assert out.notices == [
        "The kernel of session 'idle' had ended (it was idle for 1 s, the profile's "
        "idle_timeout); this cell runs in a fresh kernel: the variables from before are gone."]


def test_a_kernel_past_the_profiles_lifetime_ends_with_a_sentence(client: Client) -> None:
    k = client.kernel("brief", profile="short")
    asyncio.run(k.arun("state = 1"))
    assert wait_until(lambda: k.state == "stopped", 15), k.state
    out = asyncio.run(k.arun("print('state' in dir())"))
    assert out.stdout == "False\n"
    assert "had ended (it reached the profile's lifetime of 2 s)" in out.notices[0]


def test_a_kernel_whose_sandbox_is_scaled_down_ends_and_the_next_cell_says_so(
        client: Client) -> None:
    k = client.kernel("scaled", profile="short-lived")
    asyncio.run(k.arun("state = 1"))
    client.scale("short-lived", 0)
    assert wait_until(lambda: k.state == "stopped", 15), k.state
    assert wait_until(lambda: not client.pool_status()[0].sandboxes, 15), "the sandbox stayed"
    client.scale("short-lived", "auto")
    out = asyncio.run(k.arun("print('state' in dir())"))
    assert out.stdout == "False\n"
    assert "had ended (its sandbox short-lived-1 was scaled down)" in out.notices[0]
