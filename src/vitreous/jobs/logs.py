"""The job's log: ``run.log`` in the job folder and rich console output, for the ``vitreous`` logger."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

LOGGER = "vitreous"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JobLog:
    """Attach a file handler (and optionally a console handler) to the ``vitreous`` logger until closed."""

    def __init__(self, path: Path, console: bool = True) -> None:
        self.logger = logging.getLogger(LOGGER)
        self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.file.setFormatter(logging.Formatter(FILE_FORMAT))
        self.handlers: list[logging.Handler] = [self.file]
        nested = any(isinstance(h, RichHandler) for h in self.logger.handlers)  # a job run inside another
        if console and not nested:
            self.handlers.append(RichHandler(console=Console(stderr=True), show_path=False, markup=False))
        self._level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        for handler in self.handlers:
            handler.setLevel(logging.INFO)
            self.logger.addHandler(handler)

    def error(self, message: str, exc: BaseException | None = None) -> None:
        """Write an error (with its traceback) to run.log only: the console reports errors its own way."""
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        record = self.logger.makeRecord(LOGGER, logging.ERROR, __file__, 0, message, (), exc_info)
        self.file.handle(record)

    def close(self) -> None:
        """Detach and close the handlers, restore the logger level."""
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.logger.setLevel(self._level)
