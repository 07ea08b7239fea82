"""``vitreous demo``: micrographs -> ctf -> pick -> extract -> class2d -> abinit -> refine, one linking report
(smoke-test sizes: two small micrographs, every iterative step cut short)."""

from __future__ import annotations

import json
import re
from pathlib import Path

STEPS = ("simulate", "ctf", "pick", "extract", "class2d", "abinit", "refine")


def test_demo_runs_the_whole_front_end_to_end(vitreous, tmp_path: Path) -> None:
    out = tmp_path / "a_demo_folder_with_a_long_enough_name_that_the_printed_path_exceeds_eighty_columns"
    outcome = vitreous("demo", "-o", out, "--micrographs", 2, "--size", 512, "--fast")
    assert outcome.code == 0, outcome
    assert outcome.out.strip().splitlines() == [f"demo report: {out / 'report.html'}"]  # one line, any length
    report = (out / "report.html").read_text()
    links = re.findall(r"<a href='([^']+)'>", report)
    assert links[:len(STEPS)] == [f"{step}/report.html" for step in STEPS]  # then run.log, job.json
    for step in ("", *STEPS):
        assert (out / step / "report.html").is_file()
        assert json.loads((out / step / "job.json").read_text())["status"] == "finished"
    assert (out / "refine" / "map.mrc").is_file() and (out / "class2d" / "class_averages.mrcs").is_file()
    assert "FSC = 0.5" in report and "against the truth" in report
    assert json.loads((out / "simulate" / "job.json").read_text())["params"]["n"] == 2
