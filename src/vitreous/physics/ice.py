"""Diffraction of water ice, as seen in micrograph power spectra (spacings in Å).

Hexagonal ice's strongest reflections, (100), (002) and (101), are at 3.90, 3.67 and 3.44 Å (cubic ice adds
3.67 Å only); vitreous ice has one broad first peak near 3.7 Å (scattering vector 1.7 Å^-1).
"""

HEXAGONAL_RINGS_A = (3.90, 3.67, 3.44)
AMORPHOUS_PEAK_A = 3.7

__all__ = ["AMORPHOUS_PEAK_A", "HEXAGONAL_RINGS_A"]
