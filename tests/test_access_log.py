"""The app's access log on a real gunicorn: one line per request, in the process's format, never the token."""

import http.client
import re
import threading

from tests.apiclient import TOKEN, gunicorn, wait_for  # noqa: F401  (fixture)

LINE = re.compile(r'^\S+ INFO    \[test/server\] access: 127\.0\.0\.1 "(\w+) (\S+)" (\d{3}) \d+\.\dms$')


def test_every_request_has_exactly_one_line_even_when_many_end_together(gunicorn):
    sent: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        # Keep-alive connections, several at once: many answers end in the same turn of a worker's loop.
        conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
        for i in range(40):
            target, auth = [(f"/api/info?c={n}&i={i}", {}),
                            (f"/api/events?limit=1&topic=c={n}.i={i}", {"Authorization": f"Bearer {TOKEN}"}),
                            (f"/api/events?topic=c={n}.i={i}", {}),
                            (f"/no/such?c={n}&i={i}", {})][i % 4]
            conn.request("GET", target, headers=auth)
            response = conn.getresponse()
            response.read()
            with lock:
                sent.append(("GET", target, response.status))
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(sent) == 320 and {status for *_, status in sent} == {200, 401, 404}

    def logged():
        return [m.groups() for m in map(LINE.match, gunicorn.lines) if m and "c=" in m[2]]

    wait_for(lambda: len(logged()) >= len(sent), 10, "an access line for every request")
    assert sorted((method, target, int(status)) for method, target, status in logged()) == sorted(sent)
    assert not any(TOKEN in line for line in gunicorn.lines)


def test_lines_rendered_at_write_time_carry_each_requests_own_time_in_both_formats():
    """Requests only note their figures; the lines, rendered together later, still say when each ended."""
    import io
    import json

    from server.core import settings
    from server.core.logs import AccessLog

    env = {"AYON_POSTGRES_URL": "postgresql://ayon@db/ayon", "AYON_INSTANCE_ID": "test"}
    for log_format in ("text", "json"):
        stream = io.StringIO()
        access = AccessLog(settings.load({**env, "AYON_LOG_FORMAT": log_format}), stream=stream)
        # Noted outside a loop each line is written at once: note them as one batch, then write it.
        ended = [1_700_000_000.0421, 1_700_000_000.9999, 1_700_000_001.5]
        access._lines = [(t, "10.0.0.1", "GET", f"/api/info?n={i}", 200, 1.25) for i, t in enumerate(ended)]
        access.flush()
        lines = stream.getvalue().splitlines()
        assert len(lines) == 3 and access._lines == []
        stamps = ["2023-11-14T22:13:20.042Z", "2023-11-14T22:13:20.999Z", "2023-11-14T22:13:21.500Z"]
        for i, (line, stamp) in enumerate(zip(lines, stamps, strict=True)):
            message = f'10.0.0.1 "GET /api/info?n={i}" 200 1.2ms'
            if log_format == "json":
                record = json.loads(line)
                assert record["ts"] == stamp and record["message"] == message, record
                assert record["logger"] == "access" and record["program"] == "server" and record["instance"] == "test"
            else:
                assert line == f"{stamp} INFO    [test/server] access: {message}", line
