"""Show an ``info`` summary (a nested dict) with rich: scalars as a table, sub-dicts as sections,
lists of rows as tables, notes at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

UNITS = {"_A": " (Å)", "_px": " (px)", "_deg": " (°)", "_kV": " (kV)", "_mm": " (mm)"}
MAX_ITEMS = 10


def label(key: str) -> str:
    """A summary key for people: ``pixel_size_A`` -> ``pixel size (Å)``; RELION labels stay as they are."""
    if key.startswith("rln"):
        return key
    for suffix, unit in UNITS.items():
        if key.endswith(suffix):
            return key[: -len(suffix)].replace("_", " ") + unit
    return key.replace("_", " ")


def text(value: Any) -> str:
    """A value as a short string: 4 significant digits, lists shortened, dicts inline."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{label(str(k))}: {text(v)}" for k, v in value.items())
    if isinstance(value, list):
        shown = ", ".join(text(v) for v in value[:MAX_ITEMS])
        return shown + (f" ... (+{len(value) - MAX_ITEMS} more)" if len(value) > MAX_ITEMS else "")
    return str(value)


def _rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title, title_justify="left", title_style="bold")
    for column in columns:
        table.add_column(label(column), overflow="fold")
    for row in rows:
        table.add_row(*(Text(text(row.get(c))) for c in columns))
    return table


def _pairs_table(title: str, items: dict[str, Any]) -> Table:
    table = Table(title=title or None, title_justify="left", title_style="bold", show_header=False)
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in items.items():
        table.add_row(Text(label(key)), Text(text(value)))
    return table


def render(summary: dict[str, Any], console: Console) -> None:
    """Print a summary: header line, top-level values, then one table per section, then notes."""
    console.print(f"[bold]{escape(str(summary.get('path', '')))}[/bold]  ({escape(str(summary.get('format', '')))})")
    skip = {"path", "format", "notes"}
    scalars = {k: v for k, v in summary.items() if k not in skip and not isinstance(v, dict)
               and not (isinstance(v, list) and v and isinstance(v[0], dict))}
    console.print(_pairs_table("", scalars))
    for key, value in summary.items():
        if key in skip or key in scalars:
            continue
        if isinstance(value, dict):
            console.print(_pairs_table(label(key), value))
        else:
            console.print(_rows_table(label(key), value))
    for note in summary.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
