"""The core every process shares: values, settings, database, migrations, events, configuration, logging.

Nothing here imports the web app (`server`), the start-up machine (`supervision`), the programs
(`procs`) or
maintenance; they all import this (tests/test_floors.py).
"""

VERSION = "0.1.0"
