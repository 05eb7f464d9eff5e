"""The market calendar of the settings (MARKET_CALENDAR, MARKET_PRE_MINUTES,
MARKET_POST_MINUTES) as ``ticktape.core.calendar.MarketHours``, built with
``exchange_calendars``.

The sessions span a fixed range of days (FIRST_DAY..LAST_DAY), never "today": the
same settings give the same sessions on any day, so replays decide as live runs did.
"""

from __future__ import annotations

import functools
import warnings

from .config import ConfigError, Settings
from .core.calendar import MarketHours

FIRST_DAY, LAST_DAY = "2000-01-03", "2035-12-31"
_US = 1000  # exchange_calendars' times are in ns


def market_hours(s: Settings) -> MarketHours | None:
    """The session calendar, or None with MARKET_CALENDAR=off."""
    if s.market_calendar.lower() == "off":
        return None
    return _build(s.market_calendar.upper(), s.market_pre_minutes, s.market_post_minutes)


@functools.lru_cache(maxsize=4)
def _build(name: str, pre_min: int, post_min: int) -> MarketHours:
    import exchange_calendars as xcals

    try:
        with warnings.catch_warnings():  # the library's own use of a pandas API pandas deprecates
            warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
            cal = xcals.get_calendar(name, start=FIRST_DAY, end=LAST_DAY)
    except xcals.errors.InvalidCalendarName:
        raise ConfigError(
            f"MARKET_CALENDAR={name!r} is not an exchange calendar: use an ISO MIC such as XNYS, "
            "XLON, XTKS (exchange_calendars.get_calendar_names()) or off"
        ) from None
    pre, post = pre_min * 60_000_000, post_min * 60_000_000
    opens = cal.schedule["open"].astype("int64") // _US
    closes = cal.schedule["close"].astype("int64") // _US
    sessions = [(int(a) - pre, int(b) + post) for a, b in zip(opens, closes)]
    return MarketHours(
        f"{name}{'+pre' if pre else ''}{'+post' if post else ''}",
        sessions,
        sessions[0][0] - 86_400_000_000 * 7,
        sessions[-1][1] + 86_400_000_000 * 7,
    )
