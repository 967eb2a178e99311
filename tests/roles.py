"""What an instance of some roles runs, as the tests ask it: its program names, and supervisord's listeners."""

from types import SimpleNamespace

from supervision import roster

# supervisord's event listeners beside the programs (supervision/generator.py writes their sections).
LISTENERS = ("console",)


def names_for(*, server: bool, setup: bool, maintenance: bool, embedded: bool) -> list[str]:
    """The program names of an instance with these roles, in start order."""
    roles = SimpleNamespace(run_server=server, run_setup=setup, run_maintenance=maintenance, embedded_postgres=embedded)
    return [p.name for p in roster.programs(roles)]
