"""Webactions: `action.*` events that go pending -> in_progress -> finished/failed.

Every state change is one conditional UPDATE, so concurrent callers (several
takers, several invalidators on several instances) change an action at
most once: PostgreSQL re-checks the WHERE clause against the row a
concurrent transaction just committed.
"""

from server.core import events

PREFIX = "action."
LIKE = "action.%"


class ActionError(Exception):
    """A request about an action that cannot be honoured; `status` is the HTTP code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_topic(topic) -> str:
    if not isinstance(topic, str) or not topic.startswith(PREFIX) or len(topic) <= len(PREFIX) or len(topic) > 200:
        raise ActionError(400, f"topic {topic!r} must start with '{PREFIX}' and name the action")
    return topic


def create(target, topic: str, payload: dict, sender: str | None = None) -> dict:
    """A new pending webaction."""
    event_id = events.dispatch(target, check_topic(topic), status="pending", payload=payload, sender=sender)
    return events.get(target, event_id)


def get(target, action_id: str) -> dict:
    found = events.get(target, action_id)
    if found is None or not found["topic"].startswith(PREFIX):
        raise ActionError(404, f"no webaction {action_id}")
    return found


def _move(target, action_id: str, from_statuses: tuple[str, ...], to: str, **changes) -> dict:
    """Change an action's status only if it is in one of `from_statuses`; 404/409 otherwise."""
    current = get(target, action_id)
    moved = events.update(target, action_id, status=to, only_if=from_statuses, **changes)
    if moved is None:
        now = events.get(target, action_id) or current
        raise ActionError(409, f"webaction {action_id} is {now['status']}, not {' or '.join(from_statuses)}")
    return moved


def take(target, action_id: str, who: str) -> dict:
    """pending -> in_progress; exactly one of several concurrent takers wins, the others get 409."""
    return _move(target, action_id, ("pending",), "in_progress", description=f"taken by {who}")


def finish(target, action_id: str, summary: dict | None = None, description: str | None = None) -> dict:
    return _move(target, action_id, ("in_progress",), "finished", summary=summary, description=description)


def fail(target, action_id: str, description: str | None = None, summary: dict | None = None) -> dict:
    return _move(target, action_id, ("pending", "in_progress"), "failed",
                 description=description or "failed", summary=summary)


def listing(target, status: str | None = None, limit: int = 100) -> list[dict]:
    return events.query(target, topic=PREFIX + "*", status=status, limit=limit)


def expire(db, timeout_seconds: int) -> list[str]:
    """Fail every unfinished webaction created more than `timeout_seconds` ago; returns their ids.

    One UPDATE: with several invalidators at once, a row another one has just
    failed no longer matches the WHERE clause, so each action changes once.
    """
    with db.transaction() as cur:
        cur.execute(
            "UPDATE events SET status = 'failed', "
            "description = format('timed out: still %%s after %%s s (webactions.timeout)', status, %s::int) "
            "WHERE topic LIKE %s AND status IN ('pending', 'in_progress') "
            "AND created_at < clock_timestamp() - make_interval(secs => %s) RETURNING id",
            (timeout_seconds, LIKE, timeout_seconds),
        )
        return [str(row[0]) for row in cur.fetchall()]
