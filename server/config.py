"""The server configuration: one validated document in PostgreSQL.

Every key is declared once (FIELDS, plus the options each maintenance task
declares); defaults, validation, setup's YAML seeding and PATCH /api/config
all derive from that declaration. Programs read the stored document through
`usable()`: a value written around the API that its validator refuses is never
used; `get()` puts the default in its place, a daemon its last good value
(procs/daemon.py).
"""

import copy
import datetime
import functools
import json
import os
import re
import stat
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import yaml

from server.errors import ConfigError


# --- validators: take a decoded value, return it or raise ValueError ---


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {shown(value)}")
    return value


def integer(low: int, high: int) -> Callable[[Any], int]:
    def validate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {shown(value)}")
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {shown(value)}")
        return value

    return validate


def shown(value: Any) -> str:
    """A value as an error line quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def clock_time(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 03:00 as the number 180 (base 60).
        raise ValueError(f"expected HH:MM (24-hour) as text, got the number {value}; quote it in YAML: '03:00'")
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
        raise ValueError(f"expected HH:MM (24-hour), got {shown(value)}")
    return value.strip()


# Names zoneinfo loads but that are no place's time: the tz database's placeholder
# for "not set" and the machine's own zone, which differs between instances.
NOT_PLACES = frozenset({"Factory", "localtime", "posixrules"})


@functools.lru_cache(maxsize=1)
def time_zones() -> frozenset[str]:
    """The time zone names the scheduler accepts."""
    return frozenset(zoneinfo.available_timezones()) - NOT_PLACES


def timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a time zone name such as UTC or Europe/Prague, got {shown(value)}")
    name = value.strip()
    if name not in time_zones():
        raise ValueError(f"unknown time zone {shown(value)}")
    next_run(datetime.datetime.now(datetime.timezone.utc), "00:00", name)  # the scheduler's own computation
    return name


def next_run(now: datetime.datetime, at: str, zone: str) -> datetime.datetime:
    """The first moment after `now` when the clock in `zone` shows `at` (HH:MM), as an aware UTC datetime.

    The one computation of a daily due time: the maintenance daemon schedules by it,
    GET /api/maintenance shows it, and the time zone validator tries it. A wall time
    skipped by a DST change falls an hour later that day; a repeated one is due once,
    at its first occurrence.
    """
    tz = zoneinfo.ZoneInfo(zone)
    clock = datetime.time(*map(int, at.split(":")))
    day = now.astimezone(tz).date()
    for offset in (-1, 0, 1, 2):
        due = datetime.datetime.combine(day + datetime.timedelta(days=offset), clock, tzinfo=tz)
        due = due.astimezone(datetime.timezone.utc)
        if due > now:
            return due
    raise AssertionError("a daily time recurs within two days")


@dataclass(frozen=True)
class Field:
    path: str  # dotted key
    validator: Callable[[Any], Any]
    default: Any
    help: str


FIELDS = [
    Field("maintenance.enabled", boolean, True, "The daemon runs the procedure on schedule."),
    Field("maintenance.time", clock_time, "03:00", "Daily start time, HH:MM."),
    Field("maintenance.timezone", timezone, "UTC", "Time zone of maintenance.time."),
    Field("webactions.check_interval", integer(1, 86400), 300, "Seconds between timed-out webaction checks."),
    Field("webactions.timeout", integer(1, 30 * 86400), 3600, "Seconds after which an unfinished webaction fails."),
    Field("installer.poll_interval", integer(1, 3600), 60, "Seconds between installer polls (NOTIFY wakes it sooner)."),
    Field("installer.max_attempts", integer(1, 100), 5, "Install attempts per package before it stays failed."),
    Field("installer.allow_private_urls", boolean, False,
          "install-from-url may fetch from loopback, private, link-local and other non-public addresses."),
    Field("instances.stale_after", integer(5, 86400), 30, "Seconds without a heartbeat before an instance shows stale."),
]


def fields() -> list[Field]:
    """The whole declaration: fixed fields plus each maintenance task's switch and options."""
    from maintenance.registry import tasks  # tasks declare their own options

    found = list(FIELDS)
    for task in tasks():
        base = f"maintenance.tasks.{task.name}"
        found.append(Field(f"{base}.enabled", boolean, task.enabled_by_default, f"Run the {task.name} task."))
        for option in task.options:
            found.append(Field(f"{base}.{option.name}", option.validator, option.default, option.help))
    return found


MAX_FILE_BYTES = 1024 * 1024  # as PATCH /api/config's body limit


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[leaf] = value


def _flatten(doc: dict, prefix: str = "") -> dict[str, Any]:
    """A document of declared shape (never deeper than the declaration) as {dotted key: value}."""
    flat = {}
    for key, value in doc.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def tree() -> dict:
    """The declaration as nested mappings whose leaves are the Fields."""
    root: dict = {}
    for field in fields():
        _set(root, field.path, field)
    return root


def defaults() -> dict:
    doc: dict = {}
    for field in fields():
        _set(doc, field.path, copy.deepcopy(field.default))
    return doc


def _walk(node: dict, value: Any, prefix: str, leaves: dict[str, Any]) -> None:
    # Follows the declaration, not the input: a deep or self-referencing YAML document
    # is refused at its first undeclared key instead of being walked to its end.
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {shown(value)}")
    for key, sub in value.items():
        if not isinstance(key, str):
            raise ConfigError(f"{prefix or '(top)'}: keys must be text, got {shown(key)}")
        path = f"{prefix}.{key}" if prefix else key
        child = node.get(key)
        if child is None:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(node))})")
        if isinstance(child, Field):
            try:
                leaves[path] = child.validator(sub)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        else:
            _walk(child, sub, path, leaves)


def validate_patch(patch: Any) -> dict[str, Any]:
    """Check a partial document; returns its leaves by dotted key. Errors name the key."""
    if not isinstance(patch, dict):
        raise ConfigError("the configuration must be a mapping of keys to values")
    leaves: dict[str, Any] = {}
    _walk(tree(), patch, "", leaves)
    return leaves


def merge(current: dict, patch: Any) -> tuple[dict, dict[str, tuple[Any, Any]]]:
    """The document after a merge update, and what changed as {key: (old, new)}."""
    leaves = validate_patch(patch)
    merged = copy.deepcopy(current)
    old = _flatten(current)
    changes = {}
    for path, value in leaves.items():
        if old.get(path) != value:
            changes[path] = (old.get(path), value)
        _set(merged, path, value)
    return merged, changes


class Problem(NamedTuple):
    """A stored value its validator refuses, and what is used instead."""

    key: str
    value: Any
    error: str
    kept: Any


_MISSING = object()


def _stored_value(stored: Any, path: str) -> tuple[Any, str | None]:
    """The stored value at a dotted key (or _MISSING), and the key of a non-mapping found on the way."""
    node = stored
    parts = path.split(".")
    for depth, key in enumerate(parts):
        if not isinstance(node, dict):
            return _MISSING, ".".join(parts[:depth]) or "(top)"
        if key not in node:
            return _MISSING, None
        node = node[key]
    return node, None


def usable(stored: Any, fallback: dict | None = None) -> tuple[dict, list[Problem]]:
    """A stored document as every consumer can use it, and the values that could not be used.

    Each declared key takes its stored value when its validator accepts it; a missing
    key takes the default; a refused one keeps the fallback's value (the last good
    document of a daemon; the defaults otherwise). Keys no longer declared are dropped.
    """
    doc = defaults()
    fallback = doc if fallback is None else fallback
    problems: list[Problem] = []
    seen_bad_parents = set()
    for field in fields():
        value, bad_parent = _stored_value(stored, field.path)
        if value is _MISSING:
            if bad_parent is not None and bad_parent not in seen_bad_parents:
                seen_bad_parents.add(bad_parent)
                parent_value = stored if bad_parent == "(top)" else _stored_value(stored, bad_parent)[0]
                kept = fallback if bad_parent == "(top)" else lookup(fallback, bad_parent)
                problems.append(Problem(bad_parent, parent_value, f"expected a mapping, got {shown(parent_value)}",
                                        copy.deepcopy(kept)))
            if bad_parent is not None:
                _set(doc, field.path, copy.deepcopy(lookup(fallback, field.path)))
            continue
        try:
            _set(doc, field.path, field.validator(value))
        except ValueError as exc:
            kept = copy.deepcopy(lookup(fallback, field.path))
            problems.append(Problem(field.path, value, str(exc), kept))
            _set(doc, field.path, kept)
    return doc, problems


def complete(stored: Any) -> dict:
    """A stored document with defaults for keys it lacks or holds values it cannot use, minus undeclared keys."""
    return usable(stored)[0]


def load_file(path: str) -> dict:
    """Read and validate a YAML configuration file (AYON_CONFIG_FILE)."""
    where = f"AYON_CONFIG_FILE {path}"
    try:
        # A FIFO or a device would block or never end: only a regular file is read.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(f"{where}: not a regular file")
        with open(path, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(problem).split()) if problem else ""
        raise ConfigError(f"{where}: not valid YAML{at}" + (f" ({problem})" if problem else "")) from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    if data is None:
        return {}
    try:
        validate_patch(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return data


# --- storage ---


CHANGED_TOPIC = "server.config_changed"
# A program met a stored value it cannot use (written around the API) and kept its last good one.
REJECTED_TOPIC = "server.config_rejected"


def stored(cur) -> Any:
    """The stored document as it is: any JSON value, unchecked."""
    cur.execute("SELECT data FROM server_config WHERE id = 1")
    row = cur.fetchone()
    return row[0] if row else {}


def get(cur) -> dict:
    """The configuration in effect: defaults for missing keys and for stored values their validator refuses."""
    return complete(stored(cur))


def seed(cur) -> bool:
    """Store the defaults when there is no configuration yet; True when seeded."""
    cur.execute(
        "INSERT INTO server_config (id, data) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
        (json.dumps(defaults()),),
    )
    return cur.rowcount == 1


def update(cur, patch: Any, who: str, dispatch_event: bool = True) -> tuple[dict, dict]:
    """Merge-update under a row lock; dispatches `server.config_changed` when anything changed."""
    from server import events

    cur.execute("SELECT data FROM server_config WHERE id = 1 FOR UPDATE")
    row = cur.fetchone()
    current = complete(row[0] if row else {})
    merged, changes = merge(current, patch)
    if not changes:
        return merged, {}
    cur.execute(
        "INSERT INTO server_config (id, data, updated_at) VALUES (1, %s, now()) "
        "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
        (json.dumps(merged),),
    )
    if dispatch_event:
        listed = {k: {"old": old, "new": new} for k, (old, new) in changes.items()}
        events.dispatch(
            cur,
            CHANGED_TOPIC,
            status="finished",
            description=f"{who} changed " + ", ".join(sorted(changes)),
            summary={"changes": listed, "by": who},
            sender=who,
        )
    return merged, changes


def lookup(doc: dict, path: str) -> Any:
    for key in path.split("."):
        doc = doc[key]
    return doc


def next_daily_run(doc: dict, now: datetime.datetime | None = None) -> datetime.datetime:
    """When the daily maintenance is next due, as an aware datetime in UTC."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return next_run(now, doc["maintenance"]["time"], doc["maintenance"]["timezone"])
