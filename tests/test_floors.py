"""The floors: the core imports nothing above it, wings import the core and each other's public modules only, no circles.

The start-up machine (`supervision/`) imports only the core, and the programs
(`procs/`) are the roster's programs plus the two documented command names,
each one import of the start-up machine. docs/architecture.md's diagram shows
exactly the arrows the imports make and names every module of each wing.

Every import is read from the source (module level and inside functions),
so an import hidden in a function counts as much as one at the top.
"""

import ast
import re
import shutil
from pathlib import Path

from tests.conftest import ROOT

CORE = "server.core"
# The wings, each a top-level package or part of one; the first prefix that matches wins.
WINGS = {CORE: "core", "server": "web", "supervision": "startup", "procs": "programs", "maintenance": "maintenance",
         "backup": "backup"}
# What a wing may import of another: its public modules only.
PUBLIC = {"maintenance.registry", "maintenance.preview"}
# The documented commands (README "Commands") that keep their names in procs/: each is a docstring
# and one import of the start-up machine's module that does the work.
COMMANDS = {"procs.entrypoint": "supervision.handover", "procs.supervisor": "supervision.generator"}
# The start-up machine starts the programs by module name (supervision/roster.py), never by import.
STARTUP_IMPORTS_ONLY = ("core",)
PACKAGES = ("server", "supervision", "procs", "maintenance", "backup")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> set[str]:
    """Every project module this file imports, resolved to the longest module that exists."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(root, path) if path.name == "__init__.py" else module_name(root, path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports the module; `from module import name`, the module.
            names = [f"{base}.{alias.name}" if _exists(root, f"{base}.{alias.name}") else base
                     for alias in node.names]
        for name in names:
            if name.split(".")[0] not in PACKAGES:
                continue
            while name and not _exists(root, name):
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _exists(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def wing_of(name: str) -> str:
    for prefix, wing in WINGS.items():
        if name == prefix or name.startswith(prefix + "."):
            return wing
    raise AssertionError(f"{name} belongs to no wing")


def graph(root: Path) -> dict[str, set[str]]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = imports_of(root, path) - {module_name(root, path)}
    return found


def violations(root: Path) -> list[str]:
    problems = []
    edges = graph(root)
    for module, targets in edges.items():
        mine = wing_of(module)
        for target in targets:
            theirs = wing_of(target)
            if mine == "core" and theirs != "core":
                problems.append(f"core module {module} imports {target} ({theirs})")
            elif mine == "startup" and theirs not in ("core", mine):
                problems.append(f"{module} (startup) imports {target} ({theirs}): the start-up machine imports "
                                "only the core")
            elif COMMANDS.get(module) == target:
                continue
            elif mine != "core" and theirs not in ("core", mine) and target not in PUBLIC:
                problems.append(f"{module} ({mine}) imports {target}, an internal of {theirs}")
    for module, target in COMMANDS.items():
        if module in edges and edges[module] != {target}:
            problems.append(f"{module} is a documented command name: it imports {target} and nothing else")
    problems += [f"import circle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Circles of imports between modules (a package's __init__ importing its own modules does not count)."""
    found, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if node.startswith(target + "."):
                continue  # a module importing its own package: Python's normal package loading
            if state.get(target) == "open":
                found.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_the_floors_hold():
    assert violations(ROOT) == []


def test_the_cores_key_providers_are_public_modules_of_a_wing():
    # The core imports them by name (server.core.config PROVIDERS), which the import graph does not see.
    from server.core import config

    edges = graph(ROOT)
    for name in config.PROVIDERS:
        assert name in edges and wing_of(name) != "core" and name in PUBLIC, name


def test_every_module_belongs_to_a_wing_and_the_core_is_not_empty():
    edges = graph(ROOT)
    assert sum(wing_of(m) == "core" for m in edges) >= 10
    assert {wing_of(m) for m in edges} == {"core", "web", "startup", "programs", "maintenance", "backup"}


def stray_programs(root: Path) -> list[str]:
    """Modules of procs/ that are neither a program of the roster nor a documented command name."""
    roster = (root / "supervision" / "roster.py").read_text()
    declared = set(re.findall(r'Program\("[^"]+", "(procs\.\w+)"', roster))
    found = {module_name(root, p) for p in (root / "procs").glob("*.py")} - {"procs"}
    return sorted(found - declared - set(COMMANDS))


def test_procs_holds_the_programs_only():
    assert stray_programs(ROOT) == []
    for module in COMMANDS:
        assert len((ROOT / (module.replace(".", "/") + ".py")).read_text().splitlines()) <= 8, module


def test_a_module_in_procs_that_is_no_program_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    (root / "procs" / "helpers.py").write_text('"""Not a program."""\n')
    assert stray_programs(root) == ["procs.helpers"]


def copy_tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    return tmp_path


def test_a_core_module_importing_a_wing_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    config = root / "server" / "core" / "config.py"
    # Hidden in a function, the way such imports used to be written.
    config.write_text(config.read_text() + "\n\ndef _tasks():\n    from maintenance import registry\n")
    problems = violations(root)
    assert "core module server.core.config imports maintenance.registry (maintenance)" in problems
    # maintenance.registry imports the configuration, so the same line also closes a circle.
    assert all(p.startswith("core module") or "import circle" in p for p in problems)


def test_a_wing_importing_another_wings_internals_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    api = root / "server" / "api" / "maintenance.py"
    api.write_text("from maintenance.runner import Runner\n" + api.read_text())
    assert violations(root) == ["server.api.maintenance (web) imports maintenance.runner, an internal of maintenance"]


def test_the_start_up_machine_importing_a_program_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    watchdog = root / "supervision" / "watchdog.py"
    watchdog.write_text(watchdog.read_text() + "\n\ndef _setup():\n    from procs import setup\n")
    assert violations(root) == ["supervision.watchdog (startup) imports procs.setup (programs): the start-up "
                                "machine imports only the core"]


def test_a_program_importing_the_start_up_machine_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    setup = root / "procs" / "setup.py"
    setup.write_text("from supervision.watchdog import reason_of\n" + setup.read_text())
    assert violations(root) == ["procs.setup (programs) imports supervision.watchdog, an internal of startup"]


def test_a_command_name_doing_more_than_its_one_import_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    entrypoint = root / "procs" / "entrypoint.py"
    entrypoint.write_text(entrypoint.read_text() + "\nfrom supervision import watchdog\n")
    assert violations(root) == [
        "procs.entrypoint (programs) imports supervision.watchdog, an internal of startup",
        "procs.entrypoint is a documented command name: it imports supervision.handover and nothing else"]


def test_maintenance_importing_a_program_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    cli = root / "maintenance" / "cli.py"
    cli.write_text("from procs.logcollector import Logcollector\n" + cli.read_text())
    assert violations(root) == ["maintenance.cli (maintenance) imports procs.logcollector, an internal of programs"]


def test_a_circle_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    (root / "server" / "core" / "values.py").write_text(
        (root / "server" / "core" / "values.py").read_text() + "\nfrom server.core import config\n")
    assert any("import circle" in problem and "server.core.values" in problem for problem in violations(root))


# --- docs/architecture.md's diagram, checked against the imports ---

ROOTS = {"core": "server/core", "web": "server", "startup": "supervision", "programs": "procs",
         "maintenance": "maintenance", "backup": "backup"}


def diagram(text: str) -> tuple[dict[str, str], set[tuple[str, str]], dict[tuple[str, str], str]]:
    """The Floors diagram: its nodes' labels by id, its solid arrows, its dotted arrows with their labels."""
    block = text.split("## Floors", 1)[1].split("```mermaid", 1)[1].split("```", 1)[0]
    nodes = dict(re.findall(r'^\s*(\w+)\["([^"]*)"\]', block, re.M))
    solid = set(re.findall(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", block, re.M))
    dotted = {(a, b): label for a, label, b in re.findall(r'^\s*(\w+)\s*-\.\s*"([^"]*)"\s*\.->\s*(\w+)\s*$',
                                                           block, re.M)}
    return nodes, solid, dotted


def diagram_problems(root: Path, text: str) -> list[str]:
    from server.core import config

    nodes, solid, dotted = diagram(text)
    problems = [f"the diagram has no node {wing}" for wing in ROOTS if wing not in nodes]
    edges = graph(root)
    real: dict[tuple[str, str], set[str]] = {}
    for module, targets in edges.items():
        for target in targets:
            if wing_of(module) != wing_of(target):
                real.setdefault((wing_of(module), wing_of(target)), set()).add(target)
    for wing in (w for w in ROOTS if w != "core"):
        if ((wing, "core") in real) != ((wing, "core") in solid):
            problems.append(f"{wing} --> core: {'drawn, but no import' if (wing, 'core') in solid else 'missing'}")
    named = {(a, b): set(re.findall(r"\b[a-z_]+\.[a-z_.]+\b", label)) for (a, b), label in dotted.items()}
    wanted = {pair: targets for pair, targets in real.items() if pair[1] != "core"}
    wanted[("core", wing_of(config.PROVIDERS[0]))] = set(config.PROVIDERS)
    for pair in sorted(set(named) | set(wanted)):
        if named.get(pair) != wanted.get(pair):
            problems.append(f"{pair[0]} -.-> {pair[1]}: the diagram names {sorted(named.get(pair, ()))}, "
                            f"the imports are {sorted(wanted.get(pair, ()))}")
    for pair in solid - {(w, "core") for w in ROOTS}:
        problems.append(f"{pair[0]} --> {pair[1]}: only imports of the core are solid arrows")
    for wing, folder in ROOTS.items():
        units = set()
        for module in (m for m in edges if wing_of(m) == wing):
            rest = module.split(".")[len(folder.split("/")):]
            if rest and rest[0] not in ("__main__",):
                units.add(rest[0] + "/" if len(rest) > 1 or (root / folder / rest[0] / "__init__.py").is_file() else rest[0])
        shown = set(re.findall(r"\w+/?", nodes.get(wing, "")))
        problems += [f"the diagram's {wing} does not name {unit}" for unit in sorted(units - shown)]
    return problems


def test_the_architecture_diagram_is_the_imports():
    assert diagram_problems(ROOT, (ROOT / "docs" / "architecture.md").read_text()) == []


def test_a_diagram_out_of_date_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    text = (ROOT / "docs" / "architecture.md").read_text()
    (root / "server" / "newthing.py").write_text('"""A new module of the web wing."""\n')
    cli = root / "maintenance" / "cli.py"
    cli.write_text(cli.read_text() + "\nfrom supervision import roster\n")
    assert diagram_problems(root, text) == [
        "maintenance -.-> startup: the diagram names [], the imports are ['supervision.roster']",
        "the diagram's web does not name newthing"]
    assert "programs --> core: missing" in diagram_problems(root, text.replace("    programs --> core\n", ""))
