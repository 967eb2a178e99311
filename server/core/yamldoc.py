"""YAML documents from outside (package.yaml, AYON_CONFIG_FILE), read as data and nothing more.

`yaml.safe_load` still expands aliases (a few hundred bytes can name a
value of gigabytes, and any message that quotes it renders it whole),
recurses once per nesting level (a deep document is a RecursionError), and
turns `2026-02-30` or a 5,000-digit number into a ValueError from the
constructor. This loader refuses aliases and nesting deeper than
MAX_DEPTH before anything is built, and names a value it cannot construct
by its line: every failure is one `Refused` with a short reason.
"""

from typing import Any

import yaml

# Deeper than any configuration or manifest needs, far below Python's recursion limit.
MAX_DEPTH = 32


class Refused(ValueError):
    """Text that is no acceptable YAML document; the message says what and where."""


class _Limit(yaml.MarkedYAMLError):
    """A document this loader refuses although YAML allows it."""


# What a value that cannot be constructed is called in the message.
_KINDS = {"int": "a number", "float": "a number", "timestamp": "a date"}


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases, with a depth limit, and with construction errors marked by line."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Limit(None, None, "aliases (*name) are not accepted", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError):
            # An impossible date, or a number past int()'s digit limit: named by its kind, not quoted.
            kind = _KINDS.get(node.tag.rpartition(":")[2], "a value")
            raise _Limit(None, None, f"{kind} that cannot be read", node.start_mark) from None


def load(text: str) -> Any:
    """The one document in `text`, as plain data (dicts, lists, text, numbers, booleans, None)."""
    loader = None
    try:
        loader = _Loader(text)  # the reader checks the characters here already
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(problem).split())[:120] if problem else ""
        if isinstance(exc, _Limit):
            raise Refused(f"{problem}{at}") from None
        raise Refused(f"not valid YAML{at}" + (f" ({problem})" if problem else "")) from None
    except RecursionError:
        raise Refused(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
