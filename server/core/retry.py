"""The one way to wait and retry: a deadline, back-off with jitter and a cap, a stop check, one line per outage.

`Outage` says once, as a warning, that something it names started failing and
once, as info, when it works again (and after how long): a loop that retries
every second must not write a line every second. `Retry` is the policy of a
loop that tries something until it works: the delays (`first`, times `factor`
after each failure, at most `cap`, spread by `jitter` so that many processes
do not retry in step), a `timeout` and/or a number of `attempts`, a `stop`
(a threading.Event, whose wait ends early, or a callable) and, for a loop a
user waits on, a progress line through `say` every `say_every` seconds.
`call` runs a function until it returns, `acall` the same for a coroutine
function, and `delay`/`pause` serve a loop that logs its attempts itself.

The clock, the sleep and the random source are parameters, so the tests pin
them without patching anything.
"""

import asyncio
import logging
import random
import threading
import time
from typing import Awaitable, Callable, TypeVar

from server.core.errors import first_line

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a polled function whose condition does not hold yet: the message says why."""


class GaveUp(Exception):
    """The retries ended without success: time or attempts ran out, or the stop was asked for."""

    def __init__(self, what: str, reason: str, waited: float, stopped: bool):
        super().__init__(f"{what}: {'stopped' if stopped else 'gave up'} after {waited:.1f} s ({reason})")
        self.what, self.reason, self.waited, self.stopped = what, reason, waited, stopped


class Outage:
    """One warning when `what` starts failing, one info line when it works again."""

    def __init__(self, log: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic):
        self.log, self.what, self.clock = log, what, clock
        self.since: float | None = None

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, reason: BaseException | str) -> bool:
        """Record a failure; True (and a warning) when it starts an outage."""
        if self.since is not None:
            return False
        self.since = self.clock()
        self.log.warning("%s failed, will retry: %s", self.what, _reason(reason))
        return True

    def ok(self) -> bool:
        """Record a success; True (and an info line) when it ends an outage."""
        if self.since is None:
            return False
        self.log.info("%s restored after %.1f s", self.what, self.clock() - self.since)
        self.since = None
        return True


class Retry:
    """A retry policy and the state of one loop under it (make one per loop run)."""

    def __init__(self, what: str, *, first: float = 0.5, factor: float = 2.0, cap: float = 30.0,
                 jitter: float = 0.1, timeout: float | None = None, attempts: int | None = None,
                 stop: threading.Event | Callable[[], bool] | None = None, log: logging.Logger | None = None,
                 outage: Outage | None = None,
                 say: Callable[[str], None] | None = None, say_every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random):
        self.what, self.first, self.factor, self.cap, self.jitter = what, first, factor, cap, jitter
        self.timeout, self.attempts, self.stop = timeout, attempts, stop
        self.say, self.say_every = say, say_every
        self.clock, self.sleep, self.rand = clock, sleep, rand
        # An outage of its own (with `log`), or the caller's, which may have begun before this loop.
        self.outage = outage if outage is not None or log is None else Outage(log, what, clock)
        self.started = clock()
        self.failures = 0
        self.next_say = self.started

    # --- the policy ---

    def delay(self, failures: int) -> float:
        """The pause after the `failures`-th failure in a row: first * factor**(n-1), capped, then jittered."""
        base = min(self.cap, self.first * self.factor ** max(0, failures - 1))
        return max(0.0, base * (1 + self.jitter * (2 * self.rand() - 1)))

    def stopped(self) -> bool:
        if self.stop is None:
            return False
        return self.stop.is_set() if isinstance(self.stop, threading.Event) else bool(self.stop())

    def pause(self, seconds: float) -> bool:
        """Sleep `seconds`, ended early by the stop; False when the loop should stop."""
        if isinstance(self.stop, threading.Event):
            return not self.stop.wait(seconds)
        if self.stopped():
            return False
        self.sleep(seconds)
        return not self.stopped()

    # --- one loop ---

    def failed(self, reason: BaseException | str) -> float:
        """Record a failure and return the pause before the next try; GaveUp when there is none."""
        reason = _reason(reason)
        self.failures += 1
        now = self.clock()
        waited = now - self.started
        if self.stopped():
            raise GaveUp(self.what, reason, waited, stopped=True)
        if (self.timeout is not None and waited >= self.timeout) or (
                self.attempts is not None and self.failures >= self.attempts):
            raise GaveUp(self.what, reason, waited, stopped=False)
        if self.outage is not None:
            self.outage.failed(reason)
        if self.say is not None and now >= self.next_say:
            self.say(f"waiting for {self.what} ({self._progress(waited)}): {reason}")
            self.next_say = now + self.say_every
        delay = self.delay(self.failures)
        if self.timeout is not None:
            delay = min(delay, max(0.05, self.timeout - waited))  # the last try comes at the deadline
        return delay

    def succeeded(self) -> None:
        if self.outage is not None:
            self.outage.ok()
        self.failures = 0

    def _progress(self, waited: float) -> str:
        if self.timeout is not None:
            return f"{int(waited)}/{int(self.timeout)} s"
        if self.attempts is not None:
            return f"attempt {self.failures} of {self.attempts}"
        return f"{int(waited)} s"

    def call(self, fn: Callable[[], T], retry_on: tuple[type[BaseException], ...] = ()) -> T:
        """`fn()` until it returns; it raising `retry_on` or NotYet is a failure, anything else goes up."""
        while True:
            try:
                result = fn()
            except (NotYet, *retry_on) as exc:
                if not self.pause(self.failed(exc)):
                    raise GaveUp(self.what, _reason(exc), self.clock() - self.started, stopped=True) from None
                continue
            self.succeeded()
            return result

    async def acall(self, fn: Callable[[], Awaitable[T]], retry_on: tuple[type[BaseException], ...] = ()) -> T:
        """`call` for a coroutine function: the pauses are asyncio sleeps, and a callable stop is checked."""
        while True:
            try:
                result = await fn()
            except (NotYet, *retry_on) as exc:
                await asyncio.sleep(self.failed(exc))
                continue
            self.succeeded()
            return result


def _reason(reason: BaseException | str) -> str:
    return reason if isinstance(reason, str) else first_line(reason)
