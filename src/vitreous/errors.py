"""Errors that the command line reports as one line (exit code 2) instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: names the file, what is wrong, and how to fix it."""

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{where}{self.problem}{fix}".replace("\n", " ")
