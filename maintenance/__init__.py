"""The maintenance procedure: tasks run in sequence, one run fleet-wide.

Importing this package declares each task's switch and options as keys of
the server configuration (server.core.config), so every process that reads
or validates them imports it: the web app, setup, the entrypoint and the
procedure itself.
"""

from maintenance import registry as _registry
from server.core import config as _config

_config.declare(_registry.config_fields())
