"""Remove finished or failed webactions (`action.*` events) past their own retention."""

from maintenance.registry import Option
from maintenance.tasks import _events
from server.core.values import Integer

DESCRIPTION = "remove finished or failed webactions older than {retention_days} days"
ENABLED = True
ORDER = 30
OPTIONS = [Option("retention_days", Integer(1, 36500), 30, "Days of finished or failed webactions to keep.")]

TABLES = ("events",)
TOPICS = "e.topic LIKE 'action.%%'"


def run(ctx):
    return _events.remove(ctx, ctx.options["retention_days"], TOPICS, "webactions")


def preview(ctx):
    return _events.count(ctx, ctx.options["retention_days"], TOPICS)
