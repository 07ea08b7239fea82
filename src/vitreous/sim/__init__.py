"""Simulation: atomic models, their electron-scattering potential maps, and simulated particle stacks."""

from vitreous.sim.atoms import (
    Atoms,
    Trajectory,
    box_size,
    centre_of_mass,
    centred,
    load_atoms,
    load_trajectory,
    masses,
    radius,
    scattering_weights,
)
from vitreous.sim.density import auto_blur, density_map, scattering_coefficients, trajectory_maps

__all__ = [
    "Atoms",
    "Trajectory",
    "auto_blur",
    "box_size",
    "centre_of_mass",
    "centred",
    "density_map",
    "load_atoms",
    "load_trajectory",
    "masses",
    "radius",
    "scattering_coefficients",
    "scattering_weights",
    "trajectory_maps",
]
