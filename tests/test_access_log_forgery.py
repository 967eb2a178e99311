"""Access lines an anonymous client cannot forge, on a real gunicorn: control characters escaped, credentials masked.

A request to `/x%0a2026-…%20ERROR%20[local/server]…` once wrote a second,
made-up ERROR line into the server's output (and so `supervisorctl tail` and
`docker logs`). Every control character a client can put in the path, the
query or a header must leave exactly one line, in both formats.
"""

import json
import re
import socket

import pytest

from tests.apiclient import running_gunicorn, wait_for

CONTROLS = {"%0a": "\\x0a", "%0d": "\\x0d", "%1b": "\\x1b", "%00": "\\x00", "%e2%80%ae": "\\u202e"}
FORGED = "2026-12-07T03:00:00.000+00:00 ERROR   [local/server] ayon.server: forged"


def raw_request(port: int, target: bytes, headers: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def requests() -> list[tuple[str, bytes, bytes]]:
    """(a marker found in its access line, the target, extra headers) for every place a control goes."""
    found = []
    for n, encoded in enumerate(CONTROLS):
        found.append((f"/p{n}", f"/p{n}{encoded}{FORGED.replace(' ', '%20')}".encode(), b""))
        found.append((f"q{n}=", f"/api/info?q{n}={encoded}{FORGED.replace(' ', '%20')}".encode(), b""))
        found.append((f"/h{n}", f"/h{n}".encode(), f"X-Note: a{encoded}b\r\nUser-Agent: {encoded}\r\n".encode()))
    return found


# Raw control bytes in a header: refused by the HTTP parser before the app sees the request.
UNREADABLE = [b"X-Note: a\x1b[31mb\r\n", b"X-Note: a\x00b\r\n", b"X-Note: a\rb\r\n"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_controls_in_path_query_and_headers_leave_one_escaped_line_each(env, log_format):
    with running_gunicorn(dict(env, AYON_LOG_FORMAT=log_format)) as server:
        sent = requests()
        for _, target, headers in sent:
            assert raw_request(server.port, target, headers).startswith(b"HTTP/1.1 "), target

        def lines_for(marker):
            access = '"logger": "access"' if log_format == "json" else "] access: "
            return [line for line in server.lines if access in line and marker in line]

        wait_for(lambda: all(lines_for(marker) for marker, _, _ in sent), 10, "an access line for every request")
        for marker, target, _ in sent:
            found = lines_for(marker)
            assert len(found) == 1, (target, found)
            message = json.loads(found[0])["message"] if log_format == "json" else found[0]
            assert message.isprintable(), (target, message)
        forged = [line for line in server.lines if "forged" in line and not lines_for("forged").count(line)]
        assert forged == [], forged
        for headers in UNREADABLE:
            before = len(lines_for('(unreadable request)'))
            assert raw_request(server.port, b"/raw", headers).startswith(b"HTTP/1.1 400 ")
            wait_for(lambda: len(lines_for('(unreadable request)')) == before + 1, 10, "its access line")
        for n, escaped in enumerate(CONTROLS.values()):
            (line,) = lines_for(f"/p{n}")
            text = json.loads(line)["message"] if log_format == "json" else line
            assert f"/p{n}{escaped}2026-12-07" in text, text


@pytest.mark.parametrize("name", ["token", "access_token", "api_key", "password", "secret", "X-Amz-Signature",
                                  "%74oken", "Token", "client_secret", "sig"])
def test_credential_like_query_parameters_are_logged_as_a_mask(env, name):
    with running_gunicorn(env) as server:
        raw_request(server.port, f"/api/info?{name}=hunter2-value&topic=keep".encode())
        wait_for(lambda: any("hunter2" in line or f"{name}=***" in line for line in server.lines), 10,
                 "the access line")
        (line,) = [line for line in server.lines if "/api/info?" in line]
        assert re.search(rf"{re.escape(name)}=\*\*\*&topic=keep", line), line
        assert "hunter2" not in "\n".join(server.lines)
