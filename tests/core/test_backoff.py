"""The one backoff rule (rtstream.backoff): capped exponential, full jitter, a floor."""

from __future__ import annotations

import pytest

from rtstream.backoff import backoff_delay


def test_full_jitter_between_floor_and_capped_ceiling():
    assert backoff_delay(0, base=0.25, cap=5.0, rand=lambda: 0.0) == 0.0
    assert backoff_delay(0, base=0.25, cap=5.0, rand=lambda: 1.0) == 0.25
    assert backoff_delay(3, base=0.25, cap=5.0, rand=lambda: 1.0) == 2.0
    assert backoff_delay(10, base=0.25, cap=5.0, rand=lambda: 1.0) == 5.0  # capped
    assert backoff_delay(10_000, base=0.25, cap=5.0, rand=lambda: 0.5) == 2.5  # no overflow
    assert backoff_delay(0, base=0.25, cap=5.0, floor=0.1, rand=lambda: 0.0) == 0.1
    assert backoff_delay(0, base=0.25, cap=5.0, floor=0.1, rand=lambda: 1.0) == 0.25
    assert backoff_delay(0, base=0.01, cap=5.0, floor=0.1, rand=lambda: 1.0) == 0.1  # floor above the ceiling


def test_draws_spread_over_the_range():
    draws = [backoff_delay(2, base=0.25, cap=5.0) for _ in range(200)]
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert len({round(d, 3) for d in draws}) > 50  # jittered, not a constant


@pytest.mark.parametrize("bad", [{"attempt": -1}, {"base": -0.1}, {"cap": -1.0}, {"floor": -0.5}])
def test_negative_arguments_refused(bad):
    args = {"attempt": 0, "base": 0.25, "cap": 5.0, "floor": 0.0, **bad}
    attempt = args.pop("attempt")
    with pytest.raises(ValueError):
        backoff_delay(attempt, **args)
