"""What sandboxes cost, estimated: one policy, plain functions of prices and times.

A sandbox costs its price per hour for as long as it lives (idle or not, as engines bill).
A run's share is its sandbox's price over the sandbox's slots, for as long as it held its
slot. A price of None is unknown, and so is every sum it enters: a missing rate is shown
as "cost unknown", never as a made-up number. A price of 0 (the local backend) shows no
money at all.
"""

from __future__ import annotations

from collections.abc import Iterable

HOUR = 3600.0


def cost(price_per_hour: float | None, seconds: float) -> float | None:
    """``seconds`` at ``price_per_hour`` dollars; None if the price is unknown."""
    if price_per_hour is None:
        return None
    return price_per_hour * max(seconds, 0.0) / HOUR


def share(price_per_hour: float | None, slots: int, seconds: float) -> float | None:
    """A run's part of its sandbox's cost: one slot of ``slots`` for ``seconds``."""
    return cost(None if price_per_hour is None else price_per_hour / max(slots, 1), seconds)


def total(amounts: Iterable[float | None]) -> float | None:
    """The sum of ``amounts``; None if any is unknown."""
    result = 0.0
    for amount in amounts:
        if amount is None:
            return None
        result += amount
    return result


def money(amount: float | None) -> str:
    """``amount`` as a user reads it: "$0.42", "$0.0031" below a cent, "cost unknown"."""
    if amount is None:
        return "cost unknown"
    if 0 < amount < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


def spending(price_per_hour: float | None, spent: float | None) -> str:
    """A pool's money as the views show it: "$0.42 so far ($1.20/h a sandbox)", "cost
    unknown", or nothing where sandboxes are free."""
    if price_per_hour == 0:
        return ""
    if price_per_hour is None or spent is None:
        return "cost unknown"
    return f"{money(spent)} so far ({money(price_per_hour)}/h a sandbox)"


def over_budget(spent: float | None, budget: float | None) -> bool:
    """Whether ``spent`` reached ``budget`` (an unknown cost never reaches one)."""
    return budget is not None and spent is not None and spent >= budget
