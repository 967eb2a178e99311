"""The one retry helper: its delays, deadline, attempts, stop and the two lines of an outage."""

import asyncio
import logging
import threading
import time

import pytest

from server.core.retry import GaveUp, NotYet, Outage, Retry

log = logging.getLogger("ayon.test-retry")


class Clock:
    """A clock that only moves when something sleeps on it: the tests then know every time exactly."""

    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def policy(clock: Clock, **kwargs) -> Retry:
    return Retry("the thing", clock=clock, sleep=clock.sleep, **kwargs)


REFUSED = OSError("refused\nsecond line")


def failing(times: int, exc=REFUSED):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return len(calls)
    return fn, calls


def test_the_delays_double_up_to_the_cap_and_jitter_spreads_them_both_ways():
    clock = Clock()
    retry = policy(clock, first=1, cap=5, jitter=0.0)
    assert [retry.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert policy(clock, first=2, jitter=0.5, rand=lambda: 0.0).delay(1) == 1.0
    assert policy(clock, first=2, jitter=0.5, rand=lambda: 1.0).delay(1) == 3.0


def test_call_returns_what_the_function_returns_once_it_works():
    clock = Clock()
    fn, calls = failing(3)
    assert policy(clock, first=1, jitter=0.0).call(fn, retry_on=(OSError,)) == 4
    assert clock.slept == [1, 2, 4]


def test_an_exception_not_named_goes_up_at_once():
    fn, calls = failing(1, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        policy(Clock()).call(fn, retry_on=(OSError,))
    assert len(calls) == 1


def test_the_deadline_gives_up_with_the_last_reason_and_the_last_try_comes_at_it():
    clock = Clock()
    fn, calls = failing(100)
    with pytest.raises(GaveUp) as caught:
        policy(clock, first=2, factor=1, timeout=5, jitter=0.0).call(fn, retry_on=(OSError,))
    assert clock.slept == [2, 2, 1]  # the last pause is cut to the deadline
    assert (caught.value.reason, caught.value.waited, caught.value.stopped) == ("refused", 5, False)


def test_attempts_count_every_try():
    fn, calls = failing(100)
    with pytest.raises(GaveUp):
        policy(Clock(), attempts=3).call(fn, retry_on=(OSError,))
    assert len(calls) == 3


def test_a_not_yet_is_a_failure_and_progress_is_said_every_so_often():
    clock = Clock()
    said = []
    states = iter(["no table", "no table", "2 pending", "2 pending", "2 pending", None])

    def current():
        state = next(states)
        if state:
            raise NotYet(state)
        return "current"
    retry = policy(clock, first=1, factor=1, jitter=0.0, timeout=10, say=said.append, say_every=2)
    assert retry.call(current) == "current"
    assert said == ["waiting for the thing (0/10 s): no table", "waiting for the thing (2/10 s): 2 pending",
                    "waiting for the thing (4/10 s): 2 pending"]


def test_an_event_stop_ends_a_pause_at_once_in_real_time():
    stop = threading.Event()
    fn, calls = failing(100)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(GaveUp) as caught:
        Retry("the thing", first=30, stop=stop).call(fn, retry_on=(OSError,))
    assert caught.value.stopped and len(calls) == 1
    assert time.monotonic() - started < 5


def test_a_callable_stop_is_asked_around_each_pause():
    clock = Clock()
    fn, calls = failing(100)
    with pytest.raises(GaveUp) as caught:
        policy(clock, stop=lambda: len(calls) >= 2).call(fn, retry_on=(OSError,))
    assert caught.value.stopped and len(calls) == 2


def test_an_outage_is_one_warning_and_its_end_one_info_line(caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    clock = Clock()
    fn, calls = failing(4)
    policy(clock, first=1, factor=1, jitter=0.0, log=log).call(fn, retry_on=(OSError,))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "the thing failed, will retry: refused"),
        ("INFO", "the thing restored after 4.0 s"),
    ]


def test_outage_says_nothing_while_all_is_well(caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    outage = Outage(log, "listening")
    assert not outage.ok()
    assert outage.failed("down") and not outage.failed("still down") and outage.failing
    assert outage.ok() and not outage.failing
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_acall_retries_a_coroutine_function():
    calls = []

    async def connect():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("refused")
        return "conn"
    assert asyncio.run(Retry("the stream", first=0.01).acall(connect, retry_on=(OSError,))) == "conn"
    assert len(calls) == 3
