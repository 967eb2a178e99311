"""`make run`: every role on an embedded PostgreSQL, with data kept under ./.run."""

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from server.core import instancelock, layout, settings
from server.core.errors import run_main
from server.core.lifetime import hold

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run"


def admin_token() -> str:
    """The evaluation instance's token: kept in .run/admin-token (0600) so it is stable across runs."""
    path = RUN / "admin-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def take_terminal() -> int | None:
    """Become the terminal's foreground process group, so Ctrl-C reaches us and not make."""
    if not os.isatty(0):
        return None
    previous = os.tcgetpgrp(0)
    os.setpgid(0, 0)
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(0, os.getpgrp())
    signal.signal(signal.SIGTTOU, old)
    return previous


def give_back_terminal(previous: int | None) -> None:
    if previous is None:
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, previous)
    except OSError:
        pass
    signal.signal(signal.SIGTTOU, old)


def start_child():
    """In the child, before exec: Ctrl-C reaches it again, and it dies with us (its programs follow it)."""
    parent = os.getpid()

    def prepare():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        hold(signal.SIGTERM, parent)

    return prepare


def main() -> int:
    RUN.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ)
    env.pop("AYON_POSTGRES_URL", None)  # the embedded PostgreSQL
    own = "AYON_DATA_DIR" not in env
    env.setdefault("AYON_DATA_DIR", str(RUN / "data"))
    # Keyed to the data folder: a run on another folder must not take this one's config.
    env.setdefault("AYON_SUPERVISOR_CONF", str(RUN / "supervisord.conf" if own else
                                               layout.supervisor_conf(env["AYON_DATA_DIR"])))
    env.setdefault("AYON_HTTP_BIND", "127.0.0.1:5000")
    env.setdefault("AYON_EMBEDDED_PG_PORT", "54329")
    env.setdefault("AYON_ADMIN_TOKEN", admin_token())
    env.setdefault("AYON_INSTANCE_ID", "local")
    env.setdefault("AYON_DRAIN_SECONDS", "0")  # no load balancer in front: Ctrl-C stops at once
    values = settings.load(env)  # a bad setting is one line and exit 2, before anything starts
    # The entrypoint would refuse too (its data folder's lock); this says it in make run's words.
    other = instancelock.holder(values.data_dir)
    if other:
        print(f"make run: already running on {values.data_dir}: {other}; stop it first (Ctrl-C there)",
              file=sys.stderr, flush=True)
        return 1
    host, _, port = values.http_bind.rpartition(":")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"make run: all roles on an embedded PostgreSQL, data in {values.data_dir}", flush=True)
    print(f"make run: open http://{shown}:{port}/  admin token: {values.admin_token}", flush=True)
    print(f"make run: supervisorctl -c {values.supervisor_conf} status; Ctrl-C stops everything", flush=True)
    previous = take_terminal()
    # supervisord stops everything on SIGINT; we only wait for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-m", "procs.entrypoint"], env=env, cwd=ROOT,
                             preexec_fn=start_child())
    code = child.wait()
    give_back_terminal(previous)
    print(f"make run: stopped ({'cleanly' if code == 0 else f'exit code {code}'})", flush=True)
    return code


if __name__ == "__main__":
    run_main(main)
