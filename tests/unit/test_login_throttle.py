"""The login throttle: five wrong passwords within the window stop that name's logins until
the window has passed since the first; a right password clears the count."""

from __future__ import annotations

import datetime as dt

from pulih.service.accounts import LoginThrottle

START = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


def test_five_wrong_passwords_block_the_name_until_the_window_has_passed():
    clock = Clock()
    throttle = LoginThrottle(failures=5, window=dt.timedelta(minutes=15), clock=clock)
    for minute in range(5):
        assert throttle.blocked_until("dewi") is None
        clock.now = START + dt.timedelta(minutes=minute)
        throttle.failed("dewi")
    assert throttle.blocked_until("dewi") == START + dt.timedelta(minutes=15)
    assert throttle.blocked_until("sri") is None  # another name is not held up
    clock.now = START + dt.timedelta(minutes=15, seconds=1)
    assert throttle.blocked_until("dewi") is None  # the first failure has left the window


def test_a_right_password_clears_the_count_and_made_up_names_cannot_fill_memory():
    clock = Clock()
    throttle = LoginThrottle(failures=2, clock=clock, names=3)
    throttle.failed("dewi")
    throttle.succeeded("dewi")
    throttle.failed("dewi")
    assert throttle.blocked_until("dewi") is None
    for name in ("a", "b", "c", "d"):
        throttle.failed(name)
    assert len(throttle._failed) == 3
