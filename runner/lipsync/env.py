"""Numbers the runner reads from its environment (tuning knobs and limits), checked in one place.

A value that is not a number, or is out of range, is ``InvalidSpec``: the runner's environment is
wrong and no retry can fix it, so the job fails at once with the variable named, rather than as
an ``InternalError`` (retried) from deep inside a stage.
"""

from __future__ import annotations

import os

from .errors import InvalidSpec


def number(name: str, default: float, kind: type = float, *, minimum: float = 0.0, inclusive: bool = False,
           stage: str | None = None) -> float:
    """``name``'s value as ``kind`` (int or float), ``default`` when unset or empty.

    Raises InvalidSpec when it does not parse or is not above ``minimum`` (at least, when ``inclusive``).
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidSpec(f"{name}={raw!r} in the runner's environment is not {'an integer' if kind is int else 'a number'}: "
                          "fix or unset it", stage=stage) from None
    if value < minimum or (value == minimum and not inclusive):
        least = int(minimum) if float(minimum).is_integer() else minimum
        bound = f">= {least}" if inclusive else f"> {least}"
        raise InvalidSpec(f"{name}={raw!r} in the runner's environment must be {bound}: fix or unset it", stage=stage)
    return value
