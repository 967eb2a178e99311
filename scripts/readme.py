"""Regenerate the README's settings table from the settings declaration."""

from pathlib import Path

from server.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table -->\n", "<!-- /settings-table -->"


def main() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + START + markdown_table() + END + tail)
    print(f"updated the settings table in {README.name}")


if __name__ == "__main__":
    main()
