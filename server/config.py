"""The server configuration: one validated document in PostgreSQL.

Every key is declared once (FIELDS, plus the options each maintenance task
declares); defaults, validation, setup's YAML seeding and PATCH /api/config
all derive from that declaration.
"""

import copy
import datetime
import json
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from server.errors import ConfigError


# --- validators: take a decoded value, return it or raise ValueError ---


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def integer(low: int, high: int) -> Callable[[Any], int]:
    def validate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {value!r}")
        return value

    return validate


def clock_time(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
        raise ValueError(f"expected HH:MM (24-hour), got {value!r}")
    return value.strip()


def timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a time zone name such as UTC or Europe/Prague, got {value!r}")
    try:
        zoneinfo.ZoneInfo(value.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value.strip()


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


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[leaf] = value


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {prefix: doc}
    flat = {}
    for key, value in doc.items():
        if not isinstance(key, str):
            raise ConfigError(f"{prefix or '(top)'}: keys must be text, got {key!r}")
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def defaults() -> dict:
    doc: dict = {}
    for field in fields():
        _set(doc, field.path, copy.deepcopy(field.default))
    return doc


def validate_patch(patch: Any) -> dict[str, Any]:
    """Check a partial document; returns its leaves by dotted key. Errors name the key."""
    if not isinstance(patch, dict):
        raise ConfigError("the configuration must be a mapping of keys to values")
    declared = {f.path: f for f in fields()}
    prefixes = {p.rsplit(".", i)[0] for p in declared for i in range(1, p.count(".") + 1)}
    leaves = {}
    for path, value in _flatten(patch).items():
        field = declared.get(path)
        if field is None:
            if path in prefixes:
                raise ConfigError(f"{path}: expected a mapping, got {value!r}")
            raise ConfigError(f"{path}: unknown key")
        try:
            leaves[path] = field.validator(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
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


def complete(stored: dict) -> dict:
    """A stored document with defaults for keys it lacks, minus keys no longer declared."""
    declared = {f.path for f in fields()}
    doc = defaults()
    for path, value in _flatten(stored).items():
        if path in declared:
            _set(doc, path, value)
    return doc


def load_file(path: str) -> dict:
    """Read and validate a YAML configuration file (AYON_CONFIG_FILE)."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(f"AYON_CONFIG_FILE {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"AYON_CONFIG_FILE {path}: not valid YAML{where}") from None
    if data is None:
        return {}
    try:
        validate_patch(data)
    except ConfigError as exc:
        raise ConfigError(f"AYON_CONFIG_FILE {path}: {exc}") from None
    return data


# --- storage ---


def get(cur) -> dict:
    """The current configuration, defaults filled in."""
    cur.execute("SELECT data FROM server_config WHERE id = 1")
    row = cur.fetchone()
    return complete(row[0] if row else {})


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
        shown = {k: {"old": old, "new": new} for k, (old, new) in changes.items()}
        events.dispatch(
            cur,
            "server.config_changed",
            status="finished",
            description=f"{who} changed " + ", ".join(sorted(changes)),
            summary={"changes": shown, "by": who},
            sender=who,
        )
    return merged, changes


def lookup(doc: dict, path: str) -> Any:
    for key in path.split("."):
        doc = doc[key]
    return doc


def next_daily_run(doc: dict, now: datetime.datetime | None = None) -> datetime.datetime:
    """When the daily maintenance is next due, as an aware datetime in UTC."""
    zone = zoneinfo.ZoneInfo(doc["maintenance"]["timezone"])
    hour, minute = map(int, doc["maintenance"]["time"].split(":"))
    local_now = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(zone)
    due = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if due <= local_now:
        due = (due + datetime.timedelta(days=1)).replace(hour=hour, minute=minute)
    return due.astimezone(datetime.timezone.utc)
