"""Remove finished events past their retention, in batches (webactions have their own task)."""

from maintenance.registry import Option
from maintenance.tasks import _events
from server.core.values import Integer

DESCRIPTION = "remove events older than {retention_days} days"
ENABLED = True
ORDER = 20
OPTIONS = [Option("retention_days", Integer(1, 36500), 90, "Days of events to keep.")]

TABLES = ("events",)
TOPICS = "e.topic NOT LIKE 'action.%%'"


def run(ctx):
    return _events.remove(ctx, ctx.options["retention_days"], TOPICS, "events")


def preview(ctx):
    return _events.count(ctx, ctx.options["retention_days"], TOPICS)
