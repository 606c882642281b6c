"""The command line: ``werkfluss <command>`` / ``python -m werkfluss <command>``."""

from werkfluss.cli.main import main

__all__ = ["main"]
