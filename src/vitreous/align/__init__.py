"""Pose search (alignment) of particle images against a reference given by its central slices.

Model-agnostic: the reference is any :class:`~vitreous.align.reference.SliceSource` (a voxel map through its
projector, or a neural model).  Scores are CTF-weighted, noise-whitened Gaussian log-likelihoods or normalised
cross-correlations over a Fourier disc (:mod:`~vitreous.align.scoring`), evaluated as matrix products; search is
global and coarse-to-fine over the hierarchical SO(3) grid, or local around given poses
(:mod:`~vitreous.align.search`).
"""

from vitreous.align.noise import ResidualShells, ShellPower, image_power
from vitreous.align.points import FourierPoints, fourier_points, radius_for_resolution, resolution_for_radius
from vitreous.align.reference import FullSlices, ProjectorSlices, SliceSource
from vitreous.align.scoring import PreparedImages, image_spectra, pose_terms, prepare
from vitreous.align.search import GlobalOptions, LocalOptions, PoseResult, PoseSearch
from vitreous.align.shifts import shift_grid, shift_phases, shift_step_for_radius

__all__ = [
    "FourierPoints", "FullSlices", "GlobalOptions", "LocalOptions", "PoseResult", "PoseSearch", "PreparedImages",
    "ProjectorSlices", "ResidualShells", "ShellPower", "SliceSource", "fourier_points", "image_power",
    "image_spectra", "pose_terms", "prepare", "radius_for_resolution", "resolution_for_radius", "shift_grid",
    "shift_phases", "shift_step_for_radius",
]
