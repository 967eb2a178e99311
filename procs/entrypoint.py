"""The image's entrypoint: validate settings, then run setup alone or exec supervisord.

With arguments (`python -m maintenance`), exec them instead, as images usually do.
"""

import os
import sys

from procs import supervisor
from server import settings as settings_mod
from server.errors import ConfigError, run_main


def main() -> int:
    args = sys.argv[1:]
    if args:
        os.execvp(args[0], args)
    values = settings_mod.load()
    supervisor.check_roles(values)
    if values.roles == ["setup"]:
        # A Kubernetes Job or init container: setup in the foreground, its exit code is ours.
        os.execv(sys.executable, [sys.executable, "-m", "procs.setup"])
    conf = supervisor.write(values, values.supervisor_conf)
    names = ", ".join(p.name for p in supervisor.programs(values))
    print(f"entrypoint: roles {', '.join(values.roles)}; programs {names}; config {conf}", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "procs.supervisord", str(conf), str(supervisor.run_dir(values))])
    return 0  # not reached


if __name__ == "__main__":
    run_main(main)
