"""The supervisord process's first steps: take the settings handed over, check them, write the config.

`python -m procs.entrypoint` (supervision/handover.py) execs
`python -m supervision.supervisord` with the settings in an inherited
in-memory file; `take_settings` reads them back into this process's memory.
`prepare` takes the data folder's lock (server/core/instancelock.py) and
checks every setting and the AYON_CONFIG_FILE document before anything else
is written or started: a bad one, or a data folder or supervisord config
another running instance has, is one `Error:` line and exit 2. Setup alone
(a Kubernetes Job or init container) is exec'd with its settings; otherwise
the supervisord config is written and supervisord runs.
"""

import os
import sys

from supervision import generator
from supervision.handover import FD_OPTION

# Programs run in the checkout's folder, not the caller's: relative paths are passed on resolved.
PATHS = ("AYON_DATA_DIR", "AYON_SUPERVISOR_CONF", "AYON_CONFIG_FILE")


def take_settings(argv: list[str]) -> bool:
    """Put the handed-over settings into os.environ (this process's memory only); False if none were."""
    if len(argv) != 2 or argv[0] != FD_OPTION or not argv[1].isdigit():
        return False
    from server.core.errors import ConfigError

    what = f"{FD_OPTION} {argv[1]}"
    try:
        with open(int(argv[1]), "rb") as handed:
            settings = handed.read()
    except OSError as exc:
        raise ConfigError(f"{what}: the settings handed over cannot be read ({exc.strerror}); "
                          "start the instance with python -m procs.entrypoint") from None
    for item in filter(None, settings.split(b"\0")):
        name, equals, value = item.partition(b"=")
        if not (name and equals):
            raise ConfigError(f"{what}: the settings handed over are not NAME=VALUE entries; "
                              "start the instance with python -m procs.entrypoint")
        os.environb[name] = value
    return True


def validate():
    """Every check that can refuse the instance's configuration, before any side effect; the settings."""
    from server.core import config
    from server.core import settings as settings_mod

    values = settings_mod.load()
    generator.check_roles(values)
    settings_mod.verify(values)
    if values.config_file:
        config.load_file(values.config_file)
    for name in PATHS:
        value = values[settings_mod.key_of(name)]
        if value:
            os.environ[name] = value
    return values


def prepare():
    """Validate, then exec setup when it is the only role; else write the supervisord config: (config, data folder).

    What is left in os.environ afterwards holds no secret: supervisord hands its environment to
    every program, and the config gives each program the secrets it needs.
    """
    import logging

    from server.core import instancelock
    from server.core import settings as settings_mod
    from server.core.errors import AyonError
    from server.core.logs import setup_logging

    values = settings_mod.load()
    generator.check_roles(values)
    if values.roles == ["setup"]:
        # A Kubernetes Job or init container, beside a running instance or none: it takes no lock.
        validate()
        os.execv(sys.executable, [sys.executable, "-m", "procs.setup"])
    # Before anything is written, verify()'s probe files included: a second start on this
    # folder refuses here, whatever of the running instance's files were removed.
    held = instancelock.DataFolderLock(values.data_dir, values.instance_id, settings_mod.check_data_dir)
    try:
        values = validate()
        instancelock.lock_conf(values.supervisor_conf)
    except AyonError:
        held.give_up()
        raise
    conf = generator.write(values, values.supervisor_conf)
    names = ", ".join(p.name for p in generator.programs(values))
    # On stdout only, like supervisord's own lines: the logs table holds the programs' records.
    log = setup_logging("entrypoint", values, spool=False)
    log.info("roles %s; programs %s; config %s", ", ".join(values.roles), names, conf)
    # Programs forked from this process set up their own logging; until then they have none of this one's.
    logging.getLogger().handlers.clear()
    for name in generator.secret_names():
        os.environ.pop(name, None)
    return str(conf), values.data_dir
