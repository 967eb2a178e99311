"""The image's entrypoint: validate settings, then run setup alone or exec supervisord.

Every setting and the AYON_CONFIG_FILE document are checked before anything is
written or started: a bad one is one `Error:` line and exit 2. With arguments
(`python -m maintenance`), exec them instead, as images usually do.
"""

import os
import sys

import maintenance  # noqa: F401  (declares the tasks' configuration keys, which AYON_CONFIG_FILE may set)
from procs import supervisor, supervisord
from server.core import config
from server.core import settings as settings_mod
from server.core.errors import run_main
from server.core.logs import setup_logging

# Programs run in the checkout's folder, not the caller's: relative paths are passed on resolved.
PATHS = ("AYON_DATA_DIR", "AYON_SUPERVISOR_CONF", "AYON_CONFIG_FILE")


def validate() -> settings_mod.Settings:
    """Every check that can refuse the instance's configuration, before any side effect."""
    values = settings_mod.load()
    supervisor.check_roles(values)
    settings_mod.verify(values)
    if values.config_file:
        config.load_file(values.config_file)
    for name in PATHS:
        value = values[settings_mod.key_of(name)]
        if value:
            os.environ[name] = value
    return values


def main() -> int:
    args = sys.argv[1:]
    if args:
        os.execvp(args[0], args)
    values = validate()
    if values.roles == ["setup"]:
        # A Kubernetes Job or init container: setup in the foreground, its exit code is ours.
        os.execv(sys.executable, [sys.executable, "-m", "procs.setup"])
    conf = supervisor.write(values, values.supervisor_conf)
    names = ", ".join(p.name for p in supervisor.programs(values))
    # On stdout only, like supervisord's own lines: the logs table holds the programs' records.
    log = setup_logging("entrypoint", values, spool=False)
    log.info("roles %s; programs %s; config %s", ", ".join(values.roles), names, conf)
    os.execve(sys.executable, [sys.executable, "-m", "procs.supervisord", str(conf), str(supervisor.run_dir(values))],
              supervisord.without_secrets(os.environ))
    return 0  # not reached


def run() -> None:
    """Entry point of `python -m procs.entrypoint` and its console script."""
    run_main(main)


if __name__ == "__main__":
    run()
