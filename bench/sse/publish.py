"""`python -m bench.sse.publish URL RATE TOPIC...`: events at a steady rate, each commit's time on stdout.

Reads lines on stdin: `N` publishes N events, one every 1/RATE s, their
topics taken round-robin from TOPIC...; `b` publishes one event on
bench.broadcast. For each event it prints `seq commit-time` once its
transaction committed (the time the NOTIFY leaves PostgreSQL for the
listeners). The description is `b<seq>` and 400 more characters: subscribers find the sequence
number in what they read.
"""

import sys
import time

from server.core import db, events

BROADCAST = "bench.broadcast"
PADDING = "x" * 400  # a message of about 700 bytes, as an event with a few lines of description


def main() -> None:
    url, rate, topics = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    conn = db.connect(url, "ayon-bench-publish")
    seq, turn = 0, 0
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "b":
            batch = [BROADCAST]
        else:
            batch = []
            for _ in range(int(command)):
                batch.append(topics[turn % len(topics)])
                turn += 1
        start = time.monotonic()
        out = []
        for i, topic in enumerate(batch):
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            seq += 1
            with conn, conn.cursor() as cur:
                events.dispatch(cur, topic, description=f"b{seq} {PADDING}", sender="bench")
            out.append(f"{seq} {time.time():.6f} {topic}")
        print("\n".join(out), flush=True)
        print("done", flush=True)


if __name__ == "__main__":
    main()
