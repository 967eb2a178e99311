"""The maintenance procedure: tasks run in sequence, one run fleet-wide.

Each task's switch and options are keys of the server configuration: the core
reads them from `maintenance.registry.config_fields` itself (server.core.config
PROVIDERS), so no process has to import this package for them.
"""
