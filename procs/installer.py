"""The installer program (minimal daemon; filled in by its issue)."""

from procs.daemon import Daemon


class Installer(Daemon):
    program = "installer"

    def tick(self) -> None:
        pass


if __name__ == "__main__":
    Installer.main()
