"""Map analysis: Fourier shell correlation and resolution."""

from vitreous.analysis.fsc import fsc_curve, fsc_table, resolution_at, soft_spherical_mask

__all__ = ["fsc_curve", "fsc_table", "resolution_at", "soft_spherical_mask"]
