"""The `dmat` command line: each command parses its options (from dmat.config.options) and calls one function."""

from dmat.cli.main import main

__all__ = ["main"]
