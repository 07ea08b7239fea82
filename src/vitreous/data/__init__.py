"""The particle data model: per-particle metadata table plus a lazy image source."""

from vitreous.data.particles import ImageSource, ParticleSet

__all__ = ["ImageSource", "ParticleSet"]
