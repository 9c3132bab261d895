"""Capped exponential backoff with full jitter: the one delay rule for every
long-lived loop that reconnects or restarts (readers, workers, supervisors).

Full jitter (uniform in [floor, min(cap, base * 2**attempt)]) spreads a crowd of
loops that failed together, so they do not retry in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable

MAX_EXPONENT = 30  # 2**30 * any sane base is far above any cap


def backoff_delay(attempt: int, *, base: float, cap: float, floor: float = 0.0,
                  rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = the first retry).

    Uniform in ``[floor, max(floor, min(cap, base * 2**attempt))]``; ``floor``
    keeps a tight failure loop from spinning when the jitter draws near zero.
    """
    if attempt < 0 or base < 0 or cap < 0 or floor < 0:
        raise ValueError("attempt, base, cap and floor must be >= 0")
    ceiling = max(floor, min(cap, base * (2 ** min(attempt, MAX_EXPONENT))))
    return floor + rand() * (ceiling - floor)
