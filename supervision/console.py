"""The supervisord event listener that copies every program's output to the instance's stdout.

Each program's output goes to its own capped, rotated file (so
`supervisorctl tail PROGRAM` shows that program alone) and, as PROCESS_LOG
events, to this listener, which writes it whole lines at a time to its
stderr, which supervisord sends to its stdout: `docker logs` and `make run`
show every program. A line that does not name its program already (gunicorn's
own lines, tracebacks' continuation lines) gets `[instance/program] ` in
front, or is wrapped in a JSON record with AYON_LOG_FORMAT=json.

`python -m supervision.console INSTANCE FORMAT`
"""

import ast
import codecs
import io
import os
import signal
import sys
import time

from supervisor import childutils

from server.core.logs import json_line
from server.core.times import rfc3339_ms

# A partial line (no newline yet) waits this long for its end before it is written anyway.
PARTIAL_SECONDS = 1.0
UNDECODABLE = "Undecodable: "
# supervisord reads our output in whatever pieces the pipe holds and puts its own lines
# between them: whole lines in writes of at most PIPE_BUF bytes arrive in one piece.
ATOMIC_WRITE = 4096


def write_lines(fd: int, lines: list[str]) -> None:
    """Write whole lines, as few of them as fit in one atomic pipe write at a time."""
    chunk = b""
    for line in lines:
        data = (line + "\n").encode("utf-8", "replace")
        if chunk and len(chunk) + len(data) > ATOMIC_WRITE:
            _write_all(fd, chunk)
            chunk = b""
        chunk += data
    if chunk:
        _write_all(fd, chunk)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


class Console:
    """Whole lines per program, named, onto one output stream."""

    def __init__(self, instance: str, json_format: bool, out=lambda lines: write_lines(2, lines)):
        self.instance, self.json, self.out = instance, json_format, out
        self.decoders: dict[str, codecs.IncrementalDecoder] = {}
        self.partial: dict[str, tuple[str, float]] = {}

    def named(self, program: str, line: str) -> str:
        if self.json:
            if line.startswith("{"):
                return line
            return json_line(rfc3339_ms(time.time()), "INFO", self.instance, program, "stdout", line)
        tag = f"[{self.instance}/{program}]"
        return line if tag in line else f"{tag} {line}"

    def output(self, program: str, data: bytes) -> None:
        """Take a chunk of a program's output; write the lines it completes."""
        decoder = self.decoders.setdefault(program, codecs.getincrementaldecoder("utf-8")(errors="replace"))
        text = self.partial.pop(program, ("", 0.0))[0] + decoder.decode(data)
        *lines, rest = text.split("\n")
        if lines:
            self.out([self.named(program, line) for line in lines])
        if rest:
            self.partial[program] = (rest, time.monotonic())

    def flush(self, program: str | None = None, older_than: float = 0.0) -> None:
        """Write partial lines (of one program, or those waiting longer than `older_than` seconds)."""
        now = time.monotonic()
        for name in [program] if program else list(self.partial):
            rest, since = self.partial.get(name, ("", now))
            if rest and now - since >= older_than:
                del self.partial[name]
                self.out([self.named(name, rest)])

    def event(self, name: str, body: str) -> None:
        payload, data = childutils.eventdata(body if "\n" in body else body + "\n")
        program = payload.get("processname", "?")
        if name.startswith("PROCESS_LOG"):
            self.output(program, raw_bytes(data))
        elif name.startswith("PROCESS_STATE"):
            self.flush(program)  # its last words, even without a newline
        self.flush(older_than=PARTIAL_SECONDS)


def raw_bytes(data: str) -> bytes:
    # supervisord hands a chunk it cannot decode (a character split between two reads) as its repr.
    if data.startswith(UNDECODABLE):
        try:
            return ast.literal_eval(data[len(UNDECODABLE):])
        except (ValueError, SyntaxError):
            pass
    return data.encode("utf-8", "surrogateescape")


def main() -> None:
    """Speak supervisord's listener protocol on stdin/stdout; write the programs' lines on stderr."""
    instance, log_format = sys.argv[1], sys.argv[2]
    # The body length is counted in characters: read them undecoded-newline, exactly.
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape", newline="")
    stdout = sys.stdout
    console = Console(instance, log_format == "json")

    def stop(signum, frame):
        console.flush()
        sys.exit(0)

    # supervisord stops the listeners last, with SIGTERM: that is a normal end.
    signal.signal(signal.SIGTERM, stop)
    while True:
        try:
            header, body = childutils.listener.wait(stdin, stdout)
        except KeyError:  # end of input (no `len` header): supervisord has gone
            stop(None, None)
        console.event(header["eventname"], body)
        childutils.listener.ok(stdout)


if __name__ == "__main__":
    main()
