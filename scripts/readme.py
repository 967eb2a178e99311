"""Regenerate the README's tables from their declarations: settings (server.core.settings), programs (supervision.roster)."""

from pathlib import Path

from server.core import settings
from supervision import roster

README = Path(__file__).resolve().parent.parent / "README.md"
TABLES = {"settings-table": settings.markdown_table, "program-table": roster.markdown_table}


def render(text: str) -> str:
    """The README text with every generated table current."""
    for marker, table in TABLES.items():
        start, end = f"<!-- {marker} -->\n", f"<!-- /{marker} -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + start + table() + end + tail
    return text


def main() -> None:
    README.write_text(render(README.read_text()))
    print(f"updated {', '.join(TABLES)} in {README.name}")


if __name__ == "__main__":
    main()
