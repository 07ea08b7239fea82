"""A self-contained HTML report: title, sections, paragraphs, tables, figures and image galleries.

Everything is embedded (figures as base64 PNG, CSS inline), so ``report.html`` opens anywhere on its own.
Build it with chained calls, then ``write`` it (atomically)::

    Report("Backprojection").section("Map").figure(map_views(vol, apix)).key_values({"box (px)": 128})
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vitreous.io.atomic import write_text
from vitreous.report.imaging import array_png, data_uri, figure_png

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #446; padding-bottom: .2em; } h2 { color: #446; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; } th { background: #eef; }
figure { margin: 1em 0; } figcaption, caption { color: #555; font-size: 90%; text-align: left; }
img { max-width: 100%; } .subtitle { color: #666; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)); gap: 8px; }
.gallery figure { margin: 0; } .gallery img { width: 100%; image-rendering: pixelated; }
"""


def _text(value: Any) -> str:
    """A value as escaped text; floats with 4 significant digits."""
    if isinstance(value, float | np.floating):
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


class Report:
    """An HTML report under construction; every adding method returns the report for chaining."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._sections: list[tuple[str, list[str]]] = [("", [])]

    def _add(self, fragment: str) -> Report:
        self._sections[-1][1].append(fragment)
        return self

    def section(self, heading: str) -> Report:
        """Start a new section; what is added next goes into it."""
        self._sections.append((heading, []))
        return self

    def paragraph(self, text: str) -> Report:
        """A paragraph of plain text."""
        return self._add(f"<p>{html.escape(text)}</p>")

    def key_values(self, items: Mapping[str, Any], caption: str = "") -> Report:
        """A two-column table of names and values."""
        rows = "".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in items.items())
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        return self._add(f"<table>{cap}{rows}</table>")

    def table(self, frame: pd.DataFrame, caption: str = "", max_rows: int = 100) -> Report:
        """A pandas table (the first ``max_rows`` rows, saying so when there are more)."""
        shown = frame.head(max_rows)
        body = shown.to_html(border=0, index=False, escape=True, float_format=lambda v: f"{v:.4g}")
        if len(frame) > max_rows:
            caption = f"{caption} (first {max_rows} of {len(frame)} rows)".strip()
        cap = f"<p class='subtitle'>{html.escape(caption)}</p>" if caption else ""
        return self._add(cap + body)

    def figure(self, fig: Figure, caption: str = "") -> Report:
        """A matplotlib figure, embedded as PNG."""
        return self._image(data_uri(figure_png(fig)), caption)

    def png(self, png: bytes, caption: str = "") -> Report:
        """A PNG image given as bytes."""
        return self._image(data_uri(png), caption)

    def _image(self, uri: str, caption: str) -> Report:
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return self._add(f"<figure><img src='{uri}' alt='{html.escape(caption)}'>{cap}</figure>")

    def gallery(self, images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[str] | None = None,
                caption: str = "") -> Report:
        """A grid of 2D arrays (e.g. particle images), each as its own PNG with an optional label."""
        labels = list(labels) if labels is not None else [""] * len(images)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        tiles = "".join(f"<figure><img src='{data_uri(array_png(image))}' alt='{html.escape(label)}'>"
                        f"<figcaption>{html.escape(label)}</figcaption></figure>"
                        for image, label in zip(images, labels, strict=True))
        cap = f"<p class='subtitle'>{html.escape(caption)}</p>" if caption else ""
        return self._add(f"{cap}<div class='gallery'>{tiles}</div>")

    def links(self, items: Mapping[str, str]) -> Report:
        """A list of links: text -> relative or absolute address."""
        entries = "".join(f"<li><a href='{html.escape(href)}'>{html.escape(text)}</a></li>"
                          for text, href in items.items())
        return self._add(f"<ul>{entries}</ul>")

    def to_html(self) -> str:
        """The whole report as one HTML document."""
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f"<p class='subtitle'>{html.escape(self.subtitle)}</p>")
        for heading, fragments in self._sections:
            if not heading and not fragments:
                continue
            body = "\n".join(fragments)
            parts.append(f"<section>{f'<h2>{html.escape(heading)}</h2>' if heading else ''}\n{body}</section>")
        return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>\n<body>\n"
                + "\n".join(parts) + "\n</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the report to ``path`` atomically; returns the path."""
        path = Path(path)
        write_text(path, self.to_html())
        return path
