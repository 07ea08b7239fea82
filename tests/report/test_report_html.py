"""The HTML report: self-contained (embedded PNGs, inline CSS), escaped text, written atomically."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitreous.jobs import Job
from vitreous.report import Report
from vitreous.report.imaging import new_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def small_figure():
    fig = new_figure(3, 2)
    fig.subplots().plot([0, 1, 2], [1, 0, 1])
    return fig


def test_report_holds_everything_inline(tmp_path: Path) -> None:
    images = np.random.default_rng(0).standard_normal((3, 12, 12))
    report = (Report("Backprojection <test>", subtitle="5 particles")
              .section("Inputs").paragraph("a < b & c").key_values({"box (px)": 64, "pixel size (Å)": 1.0 / 3})
              .table(pd.DataFrame({"group": range(1, 131), "defocus (Å)": np.linspace(1e4, 2e4, 130)}),
                     caption="optics", max_rows=5)
              .section("Results").figure(small_figure(), caption="a curve").gallery(images, ["1", "2", "3"])
              .links({"run.log": "run.log"}))
    path = report.write(tmp_path / "out" / "report.html")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert "Backprojection &lt;test&gt;" in html and "a &lt; b &amp; c" in html
    assert "0.3333" in html and "first 5 of 130 rows" in html and "<h2>Results</h2>" in html
    pngs = embedded_pngs(html)
    assert len(pngs) == 4 and all(p.startswith(PNG_SIGNATURE) for p in pngs)  # 1 figure + 3 gallery tiles
    assert "href='run.log'" in html
    assert not re.search(r"(src|href)=['\"]https?:", html) and "<script" not in html  # no external assets
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary files left


def test_gallery_needs_matching_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        Report("x").gallery(np.zeros((2, 4, 4)), ["only one"])


def test_job_writes_its_report_with_links(tmp_path: Path) -> None:
    with Job.open(tmp_path / "job", command="demo", params={"box": 32}, console=False) as job:
        path = job.write_report(Report("Demo").section("Map").figure(small_figure()))
    html = path.read_text()
    assert path == tmp_path / "job" / "report.html"
    assert "href='run.log'" in html and "href='job.json'" in html
    assert "<h2>Job</h2>" in html and "box" in html and len(embedded_pngs(html)) == 1
