"""``vitreous demo``: simulate -> backproject -> one report linking both steps."""

from __future__ import annotations

import json
import re
from pathlib import Path


def test_demo_runs_end_to_end(vitreous, tmp_path: Path) -> None:
    out = tmp_path / "a_demo_folder_with_a_long_enough_name_that_the_printed_path_exceeds_eighty_columns"
    outcome = vitreous("demo", "-o", out, "-n", 300)
    assert outcome.code == 0, outcome
    assert outcome.out.strip().splitlines() == [f"demo report: {out / 'report.html'}"]  # one line, any length
    report = (out / "report.html").read_text()
    links = re.findall(r"<a href='([^']+)'>", report)
    assert "simulate/report.html" in links and "backproject/report.html" in links
    for step in ("", "simulate", "backproject"):
        assert (out / step / "report.html").is_file()
        assert json.loads((out / step / "job.json").read_text())["status"] == "finished"
    assert (out / "backproject" / "map.mrc").is_file()
    assert "fsc_vs_reference" in (out / "backproject" / "fsc.csv").read_text().splitlines()[0]
    assert json.loads((out / "simulate" / "job.json").read_text())["params"]["n"] == 300
