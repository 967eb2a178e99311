"""What a backup or restore is doing: a line per step, and on a terminal one line updated in place."""

import sys
import time


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Step lines for logs and pipes; the indicator only where someone watches (a terminal)."""

    def __init__(self, stream=None, every: float = 0.1):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every, self.shown_at, self.dirty = every, 0.0, False

    def step(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def update(self, text: str) -> None:
        now = time.monotonic()
        if not self.tty or now - self.shown_at < self.every:
            return
        self.shown_at, self.dirty = now, True
        self.stream.write(f"\r\x1b[K  {text}")
        self.stream.flush()

    def _clear(self) -> None:
        if self.dirty:
            self.stream.write("\r\x1b[K")
            self.dirty = False
