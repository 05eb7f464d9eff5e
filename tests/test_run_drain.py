"""``ticktape run``'s end: after the source stops, it waits until the pipeline has written
what the source sent before it stops the pipeline (a loaded worker can pause a few
seconds between outputs: one still second used to end the wait with 1,400 bars unwritten)."""

from __future__ import annotations

from ticktape.commands import run


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def drain(samples: list[tuple[float, float]]) -> tuple[bool, float, int]:
    """(drained, seconds waited, samples read) over (rows, lag) samples, one a second."""
    clock, seen = Clock(), []

    def figures():
        rows, lag = samples[min(len(seen), len(samples) - 1)]
        seen.append(rows)
        return {"rows": rows, "lag": lag}

    return run._drain(figures, clock, clock.sleep), clock.t, len(seen)


def test_rows_standing_still_with_lag_left_wait_the_quiet_period():
    # a pause of two seconds, then more rows: not drained yet
    assert drain([(10, 50), (20, 50), (20, 50), (20, 40), (30, 0), (30, 0)]) == (True, 5.0, 6)
    assert drain([(10, 50), (10, 50), (10, 50), (10, 50), (10, 50)]) == (True, 3.0, 4)


def test_no_lag_and_no_new_rows_is_drained_at_once():
    assert drain([(10, 0), (10, 0)]) == (True, 1.0, 2)


def test_rows_still_coming_give_up_after_drain_seconds():
    drained, waited, _ = drain([(n, 100) for n in range(200)])
    assert not drained and waited == run.DRAIN_SECONDS
