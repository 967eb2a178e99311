"""The ordered registry of maintenance tasks, one module each under maintenance/tasks/.

A task module declares DESCRIPTION (one line, may name its options as
`{retention_days}`), ENABLED (default switch), OPTIONS (a list of Option),
ORDER (a number; lower runs earlier), TABLES (what it changes: their sizes
before and after go in the run's summary), `run(ctx)` returning the number of
rows it removed, and `preview(ctx)` returning (rows, bytes) it would remove
now without changing anything (the dry run); its name is the module's file
name. Every task also gets a `max_minutes` key: its time limit. Modules whose name
starts with `_` are helpers, not tasks. `vacuum` declares LAST and always runs
after every other task, whatever their ORDER, also when a module is added later.
"""

import importlib
import pkgutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import maintenance.tasks as tasks_package
from server.core import config
from server.core.values import Boolean, Number, Value


class Interrupted(Exception):
    """Raised by a task at a safe point once the run has been asked to stop."""


Option = Value  # a task's option: its name, kind, default and help


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    run: Callable[[Any], Any]
    enabled_by_default: bool = True
    options: tuple[Option, ...] = field(default_factory=tuple)
    order: int = 100
    last: bool = False
    tables: tuple[str, ...] = ()
    preview: Callable[[Any], tuple[int, int]] | None = None

    def describe(self, options: dict) -> str:
        """The one-line description with this configuration's option values filled in."""
        try:
            return self.description.format(**options)
        except (KeyError, IndexError, ValueError):
            return self.description

    def switch(self) -> str:
        return f"maintenance.tasks.{self.name}.enabled"


# Batched tasks pause this fraction of each batch's time: a run takes longer,
# and the API's p99 during maintenance stays near its idle value.
YIELD_SHARE = 0.5


@dataclass
class Context:
    """What a task receives: the database, its options, a progress reporter and the stop flag."""

    db: Any  # server.core.db.Database dedicated to the run's tasks
    options: dict
    progress: Callable[[str], None]
    stop: threading.Event
    event_id: str | None  # the run's own event, which no task may remove (None in a dry run)

    def check_stop(self) -> None:
        """A safe point: raise Interrupted when the run has been asked to stop."""
        if self.stop.is_set():
            raise Interrupted("interrupted by shutdown")

    def yield_to_traffic(self, worked: float) -> None:
        """Pause for a share of the time just worked, so requests get the CPU between batches; a safe point."""
        self.stop.wait(worked * YIELD_SHARE)
        self.check_stop()


def _from_module(name: str) -> Task:
    module = importlib.import_module(f"{tasks_package.__name__}.{name}")
    return Task(
        name=name,
        description=module.DESCRIPTION,
        run=module.run,
        enabled_by_default=getattr(module, "ENABLED", True),
        options=tuple(getattr(module, "OPTIONS", ())),
        order=getattr(module, "ORDER", 100),
        last=getattr(module, "LAST", False),
        tables=tuple(getattr(module, "TABLES", ())),
        preview=getattr(module, "preview", None),
    )


def tasks() -> list[Task]:
    """Every task in run order; tasks marked LAST (vacuum) after all others."""
    names = [m.name for m in pkgutil.iter_modules(tasks_package.__path__) if not m.name.startswith("_")]
    found = [_from_module(name) for name in names]
    return sorted(found, key=lambda t: (t.last, t.order, t.name))


def plan(cfg, names: list[str] | None = None) -> list[tuple[Task, bool, dict]]:
    """The tasks of a run in order, each with its switch and options from the configuration (a config.View)."""
    chosen = []
    for task in tasks():
        if names is not None and task.name not in names:
            continue
        section = cfg.maintenance.tasks[task.name].as_dict()
        enabled = section.pop("enabled")
        section.pop("max_minutes", None)  # the runner's, not the task's
        chosen.append((task, enabled, section))
    return chosen


def time_limit(cfg, name: str) -> float:
    """A task's time limit in seconds: its own max_minutes, else maintenance.max_minutes (0 means the default)."""
    own = cfg.maintenance.tasks[name].max_minutes
    return float(own or cfg.maintenance.max_minutes) * 60


def config_fields() -> list[config.Field]:
    """Each task's switch and options as configuration keys under maintenance.tasks.<name>."""
    found = []
    for task in tasks():
        base = f"maintenance.tasks.{task.name}"
        found.append(config.Field(f"{base}.enabled", Boolean(), task.enabled_by_default, f"Run the {task.name} task."))
        found.append(config.Field(f"{base}.max_minutes", Number(0, 1440), 0,
                                  f"Time limit of the {task.name} task in minutes (0: maintenance.max_minutes)."))
        for option in task.options:
            found.append(config.Field(f"{base}.{option.name}", option.kind, option.default, option.help))
    return found
