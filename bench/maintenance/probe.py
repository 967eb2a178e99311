"""A paced HTTP load: GET requests at a fixed rate over keep-alive connections, latency per request.

A fixed rate, not a flood: it models API traffic during maintenance hours, so
the figure compares the same load idle and during a run instead of measuring
who wins the CPU when both saturate it.
"""

import http.client
import threading
import time


class Probe:
    """`connections` threads, each sending one request every `1/rate` seconds; records (time, latency s)."""

    def __init__(self, host: str, port: int, path: str, headers: dict, connections: int = 4, rate: float = 25.0):
        self.host, self.port, self.path, self.headers = host, port, path, headers
        self.connections, self.period = connections, 1.0 / rate
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(connections)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        next_at = time.monotonic()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn.request("GET", self.path, headers=self.headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            done = time.monotonic()
            self.samples.append((started, done - started))
            next_at = max(next_at + self.period, done)
            self.stop.wait(max(0.0, next_at - done))
        conn.close()

    def window(self, since: float, until: float) -> list[float]:
        return sorted(latency for at, latency in self.samples if since <= at < until)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(share * len(values)))]
