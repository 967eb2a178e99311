"""The program base against a real PostgreSQL: what is stored while a program starts wakes it at once."""

import logging
import threading
import time

from server.core import settings
from server.core.program import Daemon

CHANNEL = "ayon_test_wake"


class Catcher(Daemon):
    """Its first tick is the start's catch-up; something is stored and announced while it runs."""

    program = "catcher"
    channels = (CHANNEL,)

    def __init__(self, values, during_first_tick):
        super().__init__(values, logging.getLogger("ayon.test.catcher"))
        self.during_first_tick = during_first_tick
        self.ticks: list[float] = []

    def tick(self) -> None:
        self.ticks.append(time.monotonic())
        if len(self.ticks) == 1:
            self.during_first_tick()
        elif len(self.ticks) == 2:
            self.stop.set()

    def interval(self) -> float:
        return 60.0  # the fallback poll: far beyond the deadline below


def test_a_notification_sent_during_the_first_tick_wakes_the_program(env, database):
    values = settings.load(env)
    announced: list[float] = []

    def store_and_announce() -> None:
        database.execute(f"NOTIFY {CHANNEL}, 'stored'")
        announced.append(time.monotonic())

    catcher = Catcher(values, store_and_announce)
    # The deadline: a missed notification would leave the program waiting for its 60 s poll.
    deadline = threading.Timer(15, catcher.stop.set)
    deadline.start()
    try:
        assert catcher.run() == 0
    finally:
        deadline.cancel()
    assert len(catcher.ticks) == 2, "the notification sent during the first tick woke nothing"
    assert catcher.ticks[1] - announced[0] < 5
