"""PNG encoding for reports: matplotlib figures (Agg, no pyplot) and 2D arrays, as bytes or data URIs."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib Figure (inches) drawn by the Agg backend, outside pyplot's global state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def display_range(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Grey-scale limits: the ``low``/``high`` percentiles of the finite pixels (a flat image gets +-1)."""
    values = np.asarray(image, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -1.0, 1.0
    vmin, vmax = np.percentile(values, [low, high])
    if vmax <= vmin:
        vmin, vmax = vmin - 1.0, vmax + 1.0
    return float(vmin), float(vmax)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """A figure rendered as PNG bytes."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def array_png(image: np.ndarray) -> bytes:
    """A 2D array as a grey-scale PNG (row 0 on top), contrast from :func:`display_range`."""
    image = np.asarray(image, np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    vmin, vmax = display_range(image)
    buffer = io.BytesIO()
    imsave(buffer, np.nan_to_num(image, nan=vmin), cmap="gray", vmin=vmin, vmax=vmax, format="png")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
