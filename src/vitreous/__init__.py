"""vitreous: cryo-EM from particles to maps and heterogeneity, in PyTorch.

Conventions used everywhere (see README "Conventions"):
- arrays are indexed [z, y, x] for volumes and [y, x] for images; the centre is index D // 2;
- orientations are RELION ZYZ Euler angles (rot, tilt, psi) in degrees, matrices as RELION builds them;
- shifts are in Å (``rlnOriginXAngst``), CTF follows RELION's sign (positive first lobe).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vitreous")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
