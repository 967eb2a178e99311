"""Many SSE subscribers in one process: asyncio protocols on uvloop, a few hundred bytes each.

Each subscriber sends its GET, then only looks for `b<seq>` descriptions
in what it reads, noting the time of each read. A slow subscriber asks for
a small receive buffer and never reads.
"""

import array
import asyncio
import re
import socket
import time

SEQ = re.compile(rb'"description": "b(\d+)[ "]')


class Subscriber(asyncio.Protocol):
    __slots__ = ("harness", "request", "slow", "patterns", "transport", "tail", "status", "started", "closed", "seen", "messages")

    def __init__(self, harness, request: bytes, slow: bool, patterns: tuple = ()):
        self.harness, self.request, self.slow, self.patterns = harness, request, slow, patterns
        self.transport = None
        self.tail = b""
        self.status = None
        self.started = asyncio.get_running_loop().create_future()
        self.closed = False
        self.seen = 0  # messages of the benchmark's publisher (b<seq>)
        self.messages = 0  # messages of any kind

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)
        if self.slow:
            transport.pause_reading()
            self.started.set_result(None)

    def data_received(self, data):
        now = time.time()
        if self.status is None:
            self.status = data[9:12]
            if self.status != b"200":
                self.started.set_exception(RuntimeError(f"stream answered {data[:200]!r}"))
                return
        buf = self.tail + data if self.tail else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.tail = buf
            return
        self.tail = buf[cut + 2:]
        if not self.started.done() and b": connected" in buf:
            self.started.set_result(None)
        self.messages += buf.count(b"\ndata: ", 0, cut)
        arrivals = self.harness.arrivals
        for match in SEQ.finditer(buf, 0, cut):
            seq = int(match.group(1))
            found = arrivals.get(seq)
            if found is None:
                found = arrivals[seq] = array.array("d")
            found.append(now)
            self.seen += 1

    def connection_lost(self, exc):
        self.closed = True
        if not self.started.done():
            self.started.set_exception(RuntimeError(f"closed before the stream started ({exc})"))


class Harness:
    """The subscribers of one run, and every arrival: seq -> times read."""

    def __init__(self, host: str, port: int, token: str):
        self.host, self.port, self.token = host, port, token
        self.subs: list[Subscriber] = []
        self.arrivals: dict[int, array.array] = {}

    async def open(self, paths: list[tuple[str, bool]], parallel: int = 200, timeout: float = 120) -> None:
        """One subscriber per (path, slow); returns once every reading one's stream has started.

        Each subscriber keeps the topics its path names (`patterns`).
        """
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(parallel)

        async def one(path, slow):
            async with gate:
                request = (f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
                           f"Accept: text/event-stream\r\n\r\n").encode()
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                if slow:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await loop.sock_connect(sock, (self.host, self.port))
                topics = tuple(path.partition("topic=")[2].split(",")) if "topic=" in path else ()
                _, sub = await loop.create_connection(lambda: Subscriber(self, request, slow, topics), sock=sock)
                self.subs.append(sub)
                await asyncio.wait_for(sub.started, timeout)

        await asyncio.wait_for(asyncio.gather(*(one(p, s) for p, s in paths)), timeout)

    def close(self) -> None:
        for sub in self.subs:
            if sub.transport is not None:
                sub.transport.abort()
        self.subs.clear()
