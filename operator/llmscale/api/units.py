"""Durations, quantities and money written the way Kubernetes users write them.

"150ms", "5m", "1h30m" are durations; "64Gi", "500m", "8" are quantities; "40.00" is money.
Every parser raises ValueError with a message that names what is allowed, so pydantic can
report it against the field.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_FULL = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY_FULL = re.compile(QUANTITY_PATTERN)
_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

MONEY_PATTERN = r"^[0-9]+(\.[0-9]{1,4})?$"
_MONEY_FULL = re.compile(MONEY_PATTERN)


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as "150ms", "15s", "5m" or "1h30m"."""
    if not isinstance(text, str):
        raise ValueError(
            f"{text!r} is not a duration: write a number with a unit ms, s, m or h, e.g. '150ms', '15s', '5m', '1h30m'"
        )
    return _duration_seconds(text)


@functools.lru_cache(maxsize=1024)
def _duration_seconds(text: str) -> float:
    # Cached: every decision reads the spec's durations, and a spec has a handful.
    if not _DURATION_FULL.match(text.strip()):
        raise ValueError(
            f"{text!r} is not a duration: write a number with a unit ms, s, m or h, e.g. '150ms', '15s', '5m', '1h30m'"
        )
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text.strip()))


def format_duration(seconds: float) -> str:
    """The shortest readable duration for a number of seconds (inverse of parse_duration)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 60)}m"


def parse_quantity(text: str | int | float) -> Decimal:
    """The value of a Kubernetes quantity: "64Gi" -> bytes, "500m" -> 0.5, "8" -> 8."""
    s = str(text).strip()
    m = _QUANTITY_FULL.match(s)
    if not m:
        raise ValueError(
            f"{text!r} is not a Kubernetes quantity: write a number with an optional suffix "
            "(m, k, M, G, Ki, Mi, Gi, Ti), e.g. '500m', '8', '64Gi'"
        )
    return Decimal(m.group(1)) * _SUFFIX[m.group(3) or ""]


def parse_money(text: str | int | float) -> Decimal:
    """A non-negative amount of money per hour, written as a decimal string such as "40.00"."""
    # Strings cached: every decision prices its pods a few times, from a spec with a handful of prices.
    return _money(text) if isinstance(text, str) else _parse_money(text)


@functools.lru_cache(maxsize=4096)
def _money(text: str) -> Decimal:
    return _parse_money(text)


def _parse_money(text: str | int | float) -> Decimal:
    s = str(text).strip()
    if not _MONEY_FULL.match(s):
        raise ValueError(f"{text!r} is not an amount: write a non-negative decimal such as '4.00' or '0.8048'")
    try:
        return Decimal(s)
    except InvalidOperation as e:  # pragma: no cover - the pattern already guards this
        raise ValueError(f"{text!r} is not an amount") from e
