"""Run the ``vitreous`` entry point in-process, as the console script would, capturing its output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from vitreous.cli.main import run


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def assert_error(self, *fragments: str) -> None:
        """Exit code 2 and one 'vitreous: error:' line on stderr that contains ``fragments``."""
        assert self.code == 2, self
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("vitreous: error: ")
        for fragment in fragments:
            assert fragment in lines[0]


@pytest.fixture
def vitreous(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Outcome]:
    """``vitreous(*args)`` -> Outcome(exit code, stdout, stderr); unexpected exceptions propagate."""

    def call(*args: object) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["vitreous", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            run()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return Outcome(code if isinstance(code, int) else (0 if code is None else 1), captured.out, captured.err)

    return call

