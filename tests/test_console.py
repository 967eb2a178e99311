"""supervision.console: every program's output on one stdout, whole lines, each naming its program."""

import json

from supervision.console import Console, raw_bytes


def console(json_format=False):
    lines = []
    return Console("i1", json_format, lines.extend), lines


def log_event(program: str, data: str) -> tuple[str, str]:
    return "PROCESS_LOG_STDOUT", f"processname:{program} groupname:{program} pid:7 channel:stdout\n{data}"


def test_lines_keep_or_get_their_program_name():
    out, lines = console()
    out.event(*log_event("server", "2026 INFO    [i1/server] ayon: hello\n[2026] [7] [INFO] Booting worker\n"))
    assert lines == ["2026 INFO    [i1/server] ayon: hello", "[i1/server] [2026] [7] [INFO] Booting worker"]


def test_partial_lines_wait_for_their_end_per_program():
    out, lines = console()
    out.event(*log_event("server", "first ha"))
    out.event(*log_event("setup", "setup line\n"))
    out.event(*log_event("server", "lf\n"))
    assert lines == ["[i1/setup] setup line", "[i1/server] first half"]


def test_a_program_that_stops_has_its_last_partial_line_written():
    out, lines = console()
    out.event(*log_event("setup", "no newline at the end"))
    assert lines == []
    out.event("PROCESS_STATE_EXITED", "processname:setup groupname:setup from_state:RUNNING expected:1 pid:7")
    assert lines == ["[i1/setup] no newline at the end"]


def test_a_character_split_between_two_chunks_is_joined():
    # supervisord passes a chunk it cannot decode as "Undecodable: <repr of the bytes>".
    data = "é€ done\n".encode()
    out, lines = console()
    out.event(*log_event("server", f"Undecodable: {data[:1]!r}"))
    out.event(*log_event("server", f"Undecodable: {data[1:5]!r}"))
    out.event(*log_event("server", data[5:].decode()))
    assert lines == ["[i1/server] é€ done"]
    assert raw_bytes("Undecodable: b'\\xc3'") == b"\xc3"


def test_json_format_wraps_lines_that_are_not_records():
    out, lines = console(json_format=True)
    record = json.dumps({"ts": "x", "program": "server", "message": "hello"})
    out.event(*log_event("server", record + "\ngunicorn says\n"))
    assert lines[0] == record
    wrapped = json.loads(lines[1])
    assert (wrapped["instance"], wrapped["program"], wrapped["message"]) == ("i1", "server", "gunicorn says")
