"""The server configuration: one validated document in PostgreSQL.

Every key is declared once (FIELDS, plus the keys of the PROVIDERS: each
maintenance task's switch and options); defaults, validation, setup's YAML
seeding and PATCH /api/config all derive from that declaration. Programs read
the stored document through `usable()`: a value written around the API that its
validator refuses is never used; `get()` puts the default in its place, a daemon
its last good value (server/core/program.py). An update merges into the stored
document: a key this code does not declare (one a newer release wrote) is kept.
"""

import copy
import importlib
import json
import os
import stat
from typing import Any, NamedTuple

from server.core import events
from server.core import errors
from server.core.errors import ConfigError, shown
from server.core.values import Boolean, ClockTime, HeaderName, HttpUrl, Integer, Number, TimeZone, Token, Value

Field = Value  # a configuration key: its dotted path, kind, default and help

# The headers the webhook's sender (maintenance/notify.py) sets itself: maintenance.notify.header cannot be one.
WEBHOOK_SENDS = ("Content-Type", "User-Agent", "Authorization")

FIELDS = [
    Field("maintenance.enabled", Boolean(), True, "The daemon runs the procedure on schedule."),
    Field("maintenance.time", ClockTime(), "03:00", "Daily start time, HH:MM."),
    Field("maintenance.timezone", TimeZone(), "UTC", "Time zone of maintenance.time."),
    Field("maintenance.catch_up", Boolean(), True,
          "A daemon that finds the last finished run over a day (plus grace) old runs once to catch up."),
    Field("maintenance.max_minutes", Number(0.01, 1440), 60,
          "Time limit of one task in minutes (a task's own max_minutes overrides it); its statement is cancelled."),
    Field("maintenance.window_minutes", Number(0, 1440), 0,
          "Minutes after a run starts in which its tasks may start (0: no window); later ones are skipped."),
    Field("maintenance.notify.url", HttpUrl(max_length=2000, optional=True), "",
          "Webhook that receives a JSON POST when a run fails (empty: none)."),
    Field("maintenance.notify.allow_private_urls", Boolean(), False,
          "The webhook may go to loopback, private, link-local and other non-public addresses."),
    Field("maintenance.notify.header", HeaderName(sent=WEBHOOK_SENDS),
          "X-Ayon-Webhook-Secret", "Header that carries maintenance.notify.secret."),
    Field("maintenance.notify.secret", Token(0, 512, optional=True), "",
          "Secret sent in maintenance.notify.header (empty: none); never logged.", secret=True),
    Field("maintenance.notify.on_finish", Boolean(), False, "The webhook also receives runs that finished."),
    Field("maintenance.notify.timeout_seconds", Integer(1, 120), 10, "Timeout of one webhook attempt."),
    Field("maintenance.notify.retries", Integer(0, 10), 3, "Webhook attempts after the first one fails."),
    Field("webactions.check_interval", Integer(1, 86400), 300, "Seconds between timed-out webaction checks."),
    Field("webactions.timeout", Integer(1, 30 * 86400), 3600, "Seconds after which an unfinished webaction fails."),
    Field("installer.poll_interval", Integer(1, 3600), 60, "Seconds between installer polls (NOTIFY wakes it sooner)."),
    Field("installer.max_attempts", Integer(1, 100), 5, "Install attempts per package before it stays failed."),
    Field("installer.allow_private_urls", Boolean(), False,
          "install-from-url may fetch from loopback, private, link-local and other non-public addresses."),
    Field("instances.stale_after", Integer(5, 86400), 30, "Seconds without a heartbeat before an instance shows stale."),
]


# The modules that declare keys of their own, by name, each with `config_fields()` (a list of Field):
# the core imports them when it reads the declaration, so every process knows the same keys whatever
# it imported itself. Not an entry point: the image runs the project from its sources, uninstalled.
PROVIDERS = ("maintenance.registry",)


def fields() -> list[Field]:
    """The whole declaration: the fixed fields, then each provider's."""
    found = list(FIELDS)
    for name in PROVIDERS:
        found += importlib.import_module(name).config_fields()
    return found


class View:
    """The configuration read as typed objects: `cfg.webactions.timeout`, `cfg.maintenance.tasks["vacuum"]`.

    An undeclared key is an AttributeError naming it, never a silent None.
    """

    __slots__ = ("_doc", "_path")

    def __init__(self, doc: dict, path: str = ""):
        object.__setattr__(self, "_doc", doc)
        object.__setattr__(self, "_path", path)

    def _get(self, key: str):
        try:
            value = self._doc[key]
        except KeyError:
            raise AttributeError(f"no configuration key {self._path + key!r}") from None
        return View(value, f"{self._path}{key}.") if isinstance(value, dict) else value

    __getattr__ = _get
    __getitem__ = _get

    def __contains__(self, key: str) -> bool:
        return key in self._doc

    def __iter__(self):
        return iter(self._doc)

    def __setattr__(self, key, value):
        raise AttributeError("the configuration is read-only; change it with config.update")

    def __eq__(self, other) -> bool:
        return isinstance(other, View) and self._doc == other._doc

    def __repr__(self) -> str:
        return f"View({self._doc!r})"

    def as_dict(self) -> dict:
        return copy.deepcopy(self._doc)


MAX_FILE_BYTES = 1024 * 1024  # as PATCH /api/config's body limit


def _set(doc: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        if not isinstance(doc.get(key), dict):
            doc[key] = {}  # a stored non-mapping where the declaration has a section: its keys replace it
        doc = doc[key]
    doc[leaf] = value


def tree() -> dict:
    """The declaration as nested mappings whose leaves are the Fields."""
    root: dict = {}
    for field in fields():
        _set(root, field.name, field)
    return root


def defaults() -> dict:
    doc: dict = {}
    for field in fields():
        _set(doc, field.name, copy.deepcopy(field.default))
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
            where = f"{prefix}.{shown(key)}" if prefix else shown(key)
            shown_path = path if key.isprintable() and key.strip() == key and key else where
            raise ConfigError(f"{shown_path}: unknown key (known: {', '.join(sorted(node))})")
        if isinstance(child, Field):
            try:
                leaves[path] = child.kind(sub)
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


def merge(current: Any, patch: Any) -> tuple[dict, dict[str, tuple[Any, Any]]]:
    """The document after a merge update, and what changed as {key: (old, new)}.

    `current` is a stored document: every key in it stays, declared or not, except where the
    patch sets one. A key is changed when its new value differs from the stored one (or, when
    none is stored, from the value in effect: setting a missing key to its default changes nothing).
    """
    leaves = validate_patch(patch)
    merged = copy.deepcopy(current) if isinstance(current, dict) else {}
    in_effect = usable(current)[0]
    changes = {}
    for path, value in leaves.items():
        old, _ = _stored_value(current, path)
        if old is _MISSING:
            old = _stored_value(in_effect, path)[0]
        if old != value:
            changes[path] = (old, value)
        _set(merged, path, value)
    return merged, changes


MASK = errors.MASK  # a secret key's value wherever a change or a problem is shown


def _hidden(value: Any) -> Any:
    """A secret value as events and log lines show it: whether it is set, never what it is."""
    return value if value in ("", None) else MASK


def masked(path: str, value: Any) -> Any:
    """The value at a dotted key ("(top)": the whole document) with every secret key in it hidden."""
    if any(field.secret and field.name == path for field in fields()):
        return _hidden(value)
    value = copy.deepcopy(value)
    for node, leaf in _secret_slots(value, "" if path == "(top)" else path + "."):
        node[leaf] = _hidden(node[leaf])
    return value


def _secret_slots(value: Any, prefix: str = "") -> list[tuple[dict, str]]:
    """(mapping, key) of every secret key present in `value`, the part of a document under `prefix`."""
    slots = []
    for field in fields():
        if not field.secret or not field.name.startswith(prefix):
            continue
        *parents, leaf = field.name[len(prefix):].split(".")
        node = value
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            slots.append((node, leaf))
    return slots


def answered(doc: dict) -> dict:
    """The document as the API answers it: a secret key reads MASK when set, never its value (write-only)."""
    return masked("(top)", doc)


def keeping_secrets(patch: Any) -> Any:
    """A patch in which a secret key given as MASK (how `answered` shows it) keeps the stored value.

    So a document read from the API and sent back changes no secret; MASK itself can never be one.
    """
    if not isinstance(patch, dict):
        return patch  # refused with its reason by the merge
    patch = copy.deepcopy(patch)
    for node, leaf in _secret_slots(patch):
        if node[leaf] == MASK:
            del node[leaf]
    return patch


class Problem(NamedTuple):
    """A stored value its validator refuses, and what is used instead (secrets masked: it is logged and recorded)."""

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
    document of a daemon; the defaults otherwise). Keys this code does not declare are left
    out of the result, and left as they are in the stored document.
    """
    doc = defaults()
    fallback = doc if fallback is None else fallback
    problems: list[Problem] = []
    seen_bad_parents = set()
    for field in fields():
        value, bad_parent = _stored_value(stored, field.name)
        if value is _MISSING:
            if bad_parent is not None and bad_parent not in seen_bad_parents:
                seen_bad_parents.add(bad_parent)
                parent_value = stored if bad_parent == "(top)" else _stored_value(stored, bad_parent)[0]
                kept = fallback if bad_parent == "(top)" else _stored_value(fallback, bad_parent)[0]
                problems.append(Problem(bad_parent, masked(bad_parent, parent_value),
                                        f"expected a mapping, got {shown(masked(bad_parent, parent_value))}",
                                        masked(bad_parent, kept)))
            if bad_parent is not None:
                _set(doc, field.name, copy.deepcopy(_stored_value(fallback, field.name)[0]))
            continue
        try:
            _set(doc, field.name, field.kind(value))
        except ValueError as exc:
            kept = copy.deepcopy(_stored_value(fallback, field.name)[0])
            problems.append(Problem(field.name, masked(field.name, value), str(exc), masked(field.name, kept)))
            _set(doc, field.name, kept)
    return doc, problems


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
    from server.core import yamldoc  # only the entrypoint reads a file: the long-running programs never hold the parser

    try:
        data = yamldoc.load(text)
    except yamldoc.Refused as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if data is None:
        return {}
    try:
        validate_patch(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return data


# --- storage ---


def stored(cur) -> Any:
    """The stored document as it is: any JSON value, unchecked."""
    cur.execute("SELECT data FROM server_config WHERE id = 1")
    row = cur.fetchone()
    return row[0] if row else {}


def get(cur) -> View:
    """The configuration in effect, typed: defaults for missing keys and for stored values their validator refuses."""
    return View(usable(stored(cur))[0])


def seed(cur) -> bool:
    """Store the defaults when there is no configuration yet; True when seeded."""
    cur.execute(
        "INSERT INTO server_config (id, data) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
        (json.dumps(defaults()),),
    )
    return cur.rowcount == 1


def update(cur, patch: Any, who: str) -> tuple[dict, dict]:
    """Merge-update under a row lock; returns the configuration in effect after it and what changed.

    The patch is validated against the declaration (an unknown key in it is refused); the stored
    document keeps every other key, those this code does not declare too, so an older release
    never drops what a newer one wrote. Dispatches `server.config_changed` when anything changed,
    naming every changed key with its old and new value, a secret key's as set or empty only.
    """
    cur.execute("SELECT data FROM server_config WHERE id = 1 FOR UPDATE")
    row = cur.fetchone()
    merged, changes = merge(row[0] if row else {}, patch)
    if not changes:
        return usable(merged)[0], {}
    cur.execute(
        "INSERT INTO server_config (id, data, updated_at) VALUES (1, %s, now()) "
        "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
        (json.dumps(merged),),
    )
    listed = {k: {"old": masked(k, old), "new": masked(k, new)} for k, (old, new) in changes.items()}
    events.dispatch(
        cur,
        events.CONFIG_CHANGED,
        status="finished",
        description=f"{who} changed " + ", ".join(sorted(changes)),
        summary={"changes": listed, "by": who},
        sender=who,
    )
    return usable(merged)[0], changes
