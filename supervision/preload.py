"""supervisord's Python programs, forked from it instead of exec'd: their imports are loaded once.

Every program's command is `python -m supervision.lifeline SIGNAL python -m MODULE
ARG ...` (supervision/generator.py). Run as written, each program is an interpreter
of its own that imports psycopg2 and the core afresh: 15 to 19 MiB PSS each,
most of it the same pages in every one. supervision.supervisord therefore imports,
before supervisord starts anything, what each such program's module imports
(`preload`), and supervisord's fork becomes the program where exec would have
started it (`become`, through supervision/patches.py): the same environment with its secrets decoded, the same
parent-death signal, signal dispositions as a fresh interpreter has them,
`sys.argv`, stdio on the descriptors supervisord set up, the command line `ps`
shows, and the program's exit code. The imported pages stay shared between
supervisord and every program (copy-on-write; `gc.freeze` keeps the collector
from writing to them).

Not forked: a command of another shape or for another interpreter, and one
not in the config supervisord started with. Forked but not preloaded:
`NOT_PRELOADED`. A program restarted with supervisorctl is forked from the
same supervisord, so it runs the code supervisord loaded: restart the
instance to run changed code.
"""

import ast
import atexit
import configparser
import gc
import importlib
import importlib.util
import io
import os
import runpy
import shlex
import signal
import sys
import threading
import traceback
import types
from typing import Callable, NamedTuple, NoReturn

from setproctitle import setproctitle

from supervision import lifeline, patches
from server.core.errors import first_line
from server.core.lifetime import hold

# The compiled code of each preloaded program's module (the one `python -m` runs), with its spec.
_CODE: dict[str, tuple] = {}
# Forked, but imported in their program only: gunicorn sets up setproctitle when imported, which
# rewrites the importing process's command line (supervisord's, seen by `ps` and by `make run`).
NOT_PRELOADED = frozenset({"gunicorn"})
# The signals supervisord handles; its child starts with them as a fresh interpreter would.
SUPERVISORD_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR2)


class Command(NamedTuple):
    deathsignal: signal.Signals
    module: str
    args: tuple[str, ...]
    title: str  # the command line exec would have shown: `python -m MODULE ARG ...`


def parse(argv: list[str], python: str = sys.executable) -> Command | None:
    """The program a lifeline command starts, when it is one of ours this interpreter can fork."""
    if len(argv) < 7 or argv[:3] != [python, "-m", lifeline.MODULE] or argv[4:6] != [python, "-m"]:
        return None
    module = argv[6]
    if module.startswith("-"):
        return None
    try:
        signum = lifeline.signal_named(argv[3])
    except ValueError:
        return None
    return Command(signum, module, tuple(argv[7:]), shlex.join(argv[4:]))


def commands(conf: str) -> dict[tuple[str, ...], Command]:
    """Every forkable command in a supervisord config, by its argv as supervisord splits it."""
    parser = configparser.RawConfigParser(interpolation=None)
    parser.read(conf)
    found = {}
    for section in parser.sections():
        if section.startswith(("program:", "eventlistener:")) and parser.has_option(section, "command"):
            argv = shlex.split(parser.get(section, "command"))
            command = parse(argv)
            if command is not None:
                found[tuple(argv)] = command
    return found


def main_module(module: str) -> str:
    """The module `python -m module` runs: a package's `__main__`."""
    spec = importlib.util.find_spec(module)
    return module + ".__main__" if spec is not None and spec.submodule_search_locations is not None else module


def imports_of(source: str) -> list[str]:
    """The modules a module's source imports at its top level (read, not run)."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def preload(found: dict[tuple[str, ...], Command]) -> dict[str, str]:
    """Import what the programs import, in this process; {module: why} for those it could not.

    A module that cannot be read or imported here fails the same way in its program, which then
    says so in its own log, as `python -m` would have.
    """
    failed, wanted = {}, []
    for module in dict.fromkeys(c.module for c in found.values() if c.module not in NOT_PRELOADED):
        try:
            spec = importlib.util.find_spec(main_module(module))
            source = spec.loader.get_source(spec.name)
            # The program's own module runs afresh in each child; its compiled code is shared.
            _CODE[module] = (spec, spec.loader.get_code(spec.name))
        except Exception as exc:
            failed[module] = first_line(exc)
            continue
        wanted += imports_of(source)
    for name in dict.fromkeys(wanted):
        try:
            importlib.import_module(name)
        except Exception as exc:
            parent = name.rpartition(".")[0]
            if isinstance(exc, ModuleNotFoundError) and exc.name == name and parent in sys.modules:
                continue  # `from package import name` named an attribute, not a module
            failed[name] = first_line(exc)
    # Objects that live as long as supervisord, out of the collector's sight: a collection in a
    # program would otherwise write to (and so copy) every page holding them.
    gc.freeze()
    return failed


# Spawned before the preload: readiness waits on the server alone, and it imports its web stack itself
# (gunicorn is not preloaded). supervisord imports the other programs' modules while the server starts on
# the other core, instead of before it. `postgres` (embedded mode) goes first because the server needs it.
FIRST = ("postgres", "server")


def install(conf: str) -> Callable[[object], None]:
    """Have supervisord fork the config's programs; what supervisord runs before its loop (see `first_then_preload`)."""
    found = commands(conf)

    def become_program(filename, argv, env) -> bool:
        command = found.get(tuple(argv)) if filename == sys.executable else None
        if command is None:
            return False
        become(command, env)

    patches.fork_programs(become_program)

    def first_then_preload(supervisor) -> None:
        """Spawn the FIRST programs (in priority order), then preload what the others import."""
        for group in sorted(supervisor.process_groups.values()):
            if group.config.name in FIRST:
                group.transition()  # spawns it: supervisord's loop then leaves it be, as it started already
        for name, why in preload(found).items():
            print(f"supervisord: could not preload {name} ({why}); the program that imports it will say why",
                  file=sys.stderr, flush=True)

    return first_then_preload


# --- in the forked child ---

_OLD_STDIO: list = []  # supervisord's stdio objects, kept so that no finalizer ever touches fds 0-2


def become(command: Command, env: dict) -> NoReturn:
    """Turn this fork of supervisord into the program, then exit with its code; never returns."""
    code = 1
    try:
        code = _run(command, env)
    except BaseException:  # nothing may return into supervisord's code in this process
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe: nothing more to say
                pass
        os._exit(code)


def _run(command: Command, env: dict) -> int:
    for signum in SUPERVISORD_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # supervisord's objects are never collected here: garbage it had not collected yet may hold a
    # descriptor number this process has closed, and then reuses; its finalizer would close ours.
    gc.freeze()
    # setproctitle finds the memory `ps` reads on its first use, which must come before the
    # environment changes.
    setproctitle(command.title)
    env, parent = lifeline.environment(env)
    # Only what differs: each change of the C environment copies heap pages shared with supervisord.
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    hold(command.deathsignal, parent)
    _fresh_stdio(unbuffered=bool(env.get("PYTHONUNBUFFERED")))
    sys.path[0] = os.getcwd()  # `python -m` puts the working folder first
    sys.argv = [command.module, *command.args]
    interrupted = False
    try:
        _run_main(command.module)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException as exc:  # an interpreter prints the traceback and exits 1
        traceback.print_exc()
        interrupted, code = isinstance(exc, KeyboardInterrupt), 1
    _finish()
    if interrupted:  # as Python ends on an unhandled Ctrl-C: by the signal itself
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _run_main(module: str) -> None:
    """What `python -m module` runs, as `__main__`, from the code preloaded (runpy's way when there is none)."""
    if module not in _CODE:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    spec, code = _CODE[module]
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=spec.origin, __cached__=spec.cached, __loader__=spec.loader,
                         __package__=spec.parent, __spec__=spec)
    sys.modules["__main__"] = main
    sys.argv[0] = spec.origin
    exec(code, main.__dict__)  # the program's own module, as the interpreter would run it


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish() -> None:
    """What an interpreter does on its way out: wait for non-daemon threads, run atexit functions."""
    threading._shutdown()  # what Py_FinalizeEx calls
    atexit._run_exitfuncs()


def _fresh_stdio(unbuffered: bool) -> None:
    """Standard streams on fds 0-2 as the interpreter would have made them, without supervisord's buffers."""
    _OLD_STDIO.extend([sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__])
    streams = []
    for fd, old in ((0, sys.__stdin__), (1, sys.__stdout__), (2, sys.__stderr__)):
        encoding = getattr(old, "encoding", None) or "utf-8"
        errors = getattr(old, "errors", None) or ("backslashreplace" if fd == 2 else "strict")
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        if fd == 0:
            streams.append(io.TextIOWrapper(io.BufferedReader(raw), encoding, errors))
        elif unbuffered:
            streams.append(io.TextIOWrapper(raw, encoding, errors, write_through=True))
        else:
            streams.append(io.TextIOWrapper(io.BufferedWriter(raw), encoding, errors, line_buffering=fd == 2))
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
