"""The ceiling: a bare asyncio SSE fan-out of the server's own bytes from one LISTEN connection per process.

`python -m bench.sse.ceiling --port P --workers 2`, with BENCH_POSTGRES_URL
set. Each of the processes binds its own SO_REUSEPORT socket on uvloop,
reads a request's head, answers the stream's headers and then writes each
notification, encoded once (server/api/stream.py `encode`) and matched once
per distinct topic filter, to every matching transport; a transport with
more than the server's default subscriber buffer unsent is aborted, as the
server drops a slow reader. No HTTP framework, no authentication, no
replay: what the fan-out itself costs on this machine. GET /api/info
answers {"pid": ...} so the harness can see every process answer.
"""

import argparse
import asyncio
import json
import os
import socket
import urllib.parse

import uvloop

from server.api.stream import _decode, chunk, encode, matches
from server.core import events

LIMIT = 64 * 1024
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + chunk(b": connected\nretry: 3000\n\n"))


class Fanout:
    def __init__(self):
        self.groups: dict[tuple, set] = {}

    def publish(self, payload) -> None:
        note = _decode(payload)
        if note is None:
            return
        data = encode(*note).chunk
        for patterns, members in list(self.groups.items()):
            if matches(note[1], patterns):
                for transport in list(members):
                    transport.write(data)
                    if transport.get_write_buffer_size() > LIMIT:
                        transport.abort()


class Connection(asyncio.Protocol):
    def __init__(self, fanout: Fanout):
        self.fanout, self.buffer, self.transport, self.patterns = fanout, b"", None, None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.patterns is not None:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        target = self.buffer.split(b" ", 2)[1].decode()
        path, _, query = target.partition("?")
        if path == "/api/info":
            body = json.dumps({"pid": os.getpid()}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()
            return
        topics = urllib.parse.parse_qs(query).get("topic", [""])[0]
        self.patterns = tuple(sorted({t for t in topics.split(",") if t}))
        self.transport.write(HEAD)
        self.fanout.groups.setdefault(self.patterns, set()).add(self.transport)

    def connection_lost(self, exc):
        members = self.fanout.groups.get(self.patterns)
        if members is not None:
            members.discard(self.transport)
            if not members:
                del self.fanout.groups[self.patterns]


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    fanout = Fanout()
    listener = events.Listener(os.environ["BENCH_POSTGRES_URL"], (events.CHANNEL,), "ayon-bench-ceiling")

    def readable():
        for _, payload in listener.received():
            fanout.publish(payload)

    loop.add_reader(listener.fileno(), readable)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(lambda: Connection(fanout), sock=sock, backlog=4096)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse.ceiling")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(args.port))
            os._exit(0)
        children.append(pid)
    try:
        for pid in children:
            os.waitpid(pid, 0)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
