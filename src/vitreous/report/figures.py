"""Figures that commands put in their reports (matplotlib Figures on the Agg backend, no pyplot).

Units: spatial frequency in 1/Å, resolution in Å, Euler angles in degrees (RELION rot, tilt, psi),
voxel sizes in Å.  Arrays are [y, x] images and [z, y, x] maps, shown with row 0 on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from vitreous.report.imaging import display_range, new_figure

FSC_THRESHOLDS = (0.143, 0.5)
MAX_SCATTER = 20000


def particle_gallery(images: np.ndarray | Sequence[np.ndarray], labels: Sequence[str] | None = None,
                     columns: int | None = None, title: str = "") -> Figure:
    """A grid of 2D images (each with its own contrast), optionally labelled (e.g. 1-based particle numbers)."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    fig = new_figure(1.6 * columns, 1.6 * rows + (0.3 if title else 0))
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            vmin, vmax = display_range(images[k])
            ax.imshow(np.asarray(images[k]), cmap="gray", vmin=vmin, vmax=vmax)
            if labels is not None:
                ax.set_title(str(labels[k]), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def map_views(volume: np.ndarray, voxel_size: float | None = None, *, slices: bool = True,
              projections: bool = True, title: str = "") -> Figure:
    """Central slices (z, y, x = D // 2) and/or projections (sums) along z, y and x of a [z, y, x] map."""
    volume = np.asarray(volume, np.float64)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D map, got shape {volume.shape}")
    if not (slices or projections):
        raise ValueError("ask for slices, projections or both")
    centre = [s // 2 for s in volume.shape]
    rows = []
    if slices:
        rows.append(("slice", [volume[centre[0]], volume[:, centre[1]], volume[:, :, centre[2]]]))
    if projections:
        rows.append(("projection", [volume.sum(axis=a) for a in range(3)]))
    names = [("z", "x", "y"), ("y", "x", "z"), ("x", "y", "z")]  # axis removed, horizontal, vertical
    fig = new_figure(9, 3.1 * len(rows) + (0.3 if title else 0))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    unit = f" (voxel {voxel_size:.4g} Å)" if voxel_size else ""
    for r, (kind, views) in enumerate(rows):
        for c, view in enumerate(views):
            ax = axes[r, c]
            vmin, vmax = display_range(view, 0.5, 99.5)
            ax.imshow(view, cmap="gray", vmin=vmin, vmax=vmax)
            removed, horizontal, vertical = names[c]
            where = f" at {removed} = {centre[c]}" if kind == "slice" else f" along {removed}"
            ax.set_title(f"{kind}{where}", fontsize=9)
            ax.set_xlabel(f"{horizontal} (px)", fontsize=8)
            ax.set_ylabel(f"{vertical} (px)", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle((title + unit).strip() or None)
    return fig


def fsc_plot(frequency: np.ndarray, curves: Mapping[str, np.ndarray] | np.ndarray,
             thresholds: Sequence[float] = FSC_THRESHOLDS, title: str = "") -> Figure:
    """FSC curve(s) against spatial frequency (1/Å) with threshold lines and the resolution (Å) of each
    (:func:`vitreous.analysis.fsc.resolution_at`; "> t to X Å" when a curve never falls below ``t``)."""
    from vitreous.analysis.fsc import resolution_at  # imports torch: only when an FSC is plotted

    frequency = np.asarray(frequency, np.float64)
    curves = {"FSC": curves} if isinstance(curves, np.ndarray) else dict(curves)
    fig = new_figure(7, 4.2)
    ax = fig.subplots()
    for name, fsc in curves.items():
        fsc = np.asarray(fsc, np.float64)
        if fsc.shape != frequency.shape:
            raise ValueError(f"FSC '{name}' has shape {fsc.shape}, frequencies {frequency.shape}")
        found = [(t, None if (fsc[1:] >= t).all() else resolution_at(frequency, fsc, t)) for t in thresholds]
        label = name + "".join(f"; {t:g}: " + (f"{r:.2f} Å" if r else f"> {t:g} to {1 / frequency[-1]:.2f} Å")
                               for t, r in found)
        (line,) = ax.plot(frequency, fsc, label=label)
        for _, r in found:
            if r:
                ax.axvline(1.0 / r, color=line.get_color(), linestyle=":", linewidth=1)
    for t in thresholds:
        ax.axhline(t, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"{t:g}", (frequency[-1], t), fontsize=8, color="grey", ha="right", va="bottom")
    ax.set_xlabel("spatial frequency (1/Å), resolution (Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.05)
    ax.set_xlim(0, frequency[-1])
    ax.xaxis.set_major_formatter(FuncFormatter(_frequency_and_resolution))
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title)
    return fig


def _frequency_and_resolution(f: float, _position: float) -> str:
    """Tick label: the frequency (1/Å) and below it the resolution (Å)."""
    return f"{f:.3g}\n({1.0 / f:.3g} Å)" if f > 0 else "0"


def orientation_plot(euler_deg: np.ndarray, kind: str = "histogram", bins: tuple[int, int] = (72, 36),
                     title: str = "") -> Figure:
    """Viewing directions from RELION Euler angles (N, 3) in degrees: a rot/tilt 2D histogram (``kind=
    'histogram'``, log colour scale) or a Mollweide scatter (``'mollweide'``: longitude rot, latitude 90 - tilt)."""
    euler = np.asarray(euler_deg, np.float64).reshape(-1, 3)
    rot = (euler[:, 0] + 180.0) % 360.0 - 180.0
    tilt = euler[:, 1]
    if kind == "histogram":
        fig = new_figure(7, 4)
        ax = fig.subplots()
        counts, xe, ye = np.histogram2d(rot, tilt, bins=bins, range=[[-180, 180], [0, 180]])
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_equal(counts.T, 0), cmap="viridis",
                             norm=LogNorm(vmin=1, vmax=max(counts.max(), 1)))
        fig.colorbar(mesh, ax=ax, label="particles")
        ax.set_xlabel("rot (°)")
        ax.set_ylabel("tilt (°)")
        ax.set_xlim(-180, 180)
        ax.set_ylim(180, 0)
    elif kind == "mollweide":
        fig = new_figure(7, 4)
        ax = fig.add_subplot(projection="mollweide")
        step = max(1, len(rot) // MAX_SCATTER)
        ax.scatter(np.radians(rot[::step]), np.radians(90.0 - tilt[::step]), s=2, alpha=0.3, linewidths=0)
        ax.grid(True)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("rot (°)")
        ax.set_ylabel("90° - tilt")
    else:
        raise ValueError(f"kind must be 'histogram' or 'mollweide', not {kind!r}")
    ax.set_title(title or f"orientations of {len(euler)} particles")
    return fig
