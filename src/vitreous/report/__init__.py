"""Self-contained HTML reports (``report.html``) and the figures commands put in them.

``Report`` builds the page (figures embedded as base64 PNG, no external files); ``figures`` makes the
reusable plots (particle gallery, map slices/projections, FSC curves, orientation distribution) with
matplotlib's Agg backend.  A job writes its report with ``job.write_report(report)``.
"""

from vitreous.report.figures import fsc_plot, map_views, orientation_plot, particle_gallery
from vitreous.report.html import Report

__all__ = ["Report", "fsc_plot", "map_views", "orientation_plot", "particle_gallery"]
