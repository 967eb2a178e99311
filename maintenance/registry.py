"""The ordered registry of maintenance tasks, one module each under maintenance/tasks/.

A task module declares DESCRIPTION (one line), ENABLED (default switch),
OPTIONS (a list of Option), ORDER (a number; lower runs earlier) and
`run(ctx)`; its name is the module's file name. `vacuum` declares LAST and
always runs after every other task, whatever their ORDER.
"""

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import maintenance.tasks as tasks_package


@dataclass(frozen=True)
class Option:
    name: str
    validator: Callable[[Any], Any]
    default: Any
    help: str


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    run: Callable[[Any], Any]
    enabled_by_default: bool = True
    options: tuple[Option, ...] = field(default_factory=tuple)
    order: int = 100
    last: bool = False


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
    )


def tasks() -> list[Task]:
    """Every task in run order; tasks marked LAST (vacuum) after all others."""
    names = [m.name for m in pkgutil.iter_modules(tasks_package.__path__) if not m.name.startswith("_")]
    found = [_from_module(name) for name in names]
    return sorted(found, key=lambda t: (t.last, t.order, t.name))


def by_name() -> dict[str, Task]:
    return {t.name: t for t in tasks()}
