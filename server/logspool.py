"""The durable local hand-off of log records to the log collector.

Placeholder seam until the log collector lands: nothing is spooled yet.
"""


def attach_spool(root, settings, program: str) -> None:
    return None
