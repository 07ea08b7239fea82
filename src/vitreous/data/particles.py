"""ParticleSet: per-particle metadata in RELION 3.1 form plus a lazy image source.

The tables use RELION labels without the leading underscore (as ``starfile`` does).  ``particles`` holds one
row per particle: ``rlnImageName``, ``rlnOpticsGroup`` (1-based), Euler angles ``rlnAngleRot/Tilt/Psi``
(degrees), shifts ``rlnOriginXAngst/YAngst`` (Å), ``rlnDefocusU/V`` (Å), ``rlnDefocusAngle`` (degrees),
``rlnPhaseShift`` (degrees), ``rlnCtfBfactor`` (Å^2), ``rlnClassNumber`` (1-based), ``rlnRandomSubset``
(1 or 2) and vitreous' own ``vtsLatent1..Z``.  ``optics`` holds one row per optics group:
``rlnOpticsGroup``, ``rlnImagePixelSize`` (Å), ``rlnImageSize`` (px), ``rlnVoltage`` (kV),
``rlnSphericalAberration`` (mm), ``rlnAmplitudeContrast``.
Every reader (STAR 3.0/3.1/5, cryoSPARC .cs, cryoDRGN .pkl) converts to this one form.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd

from vitreous.errors import InputError
from vitreous.physics.rotations import euler_to_matrix, matrix_to_euler

EULER = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
SHIFTS = ["rlnOriginXAngst", "rlnOriginYAngst"]
DEFOCUS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
OPTICS_CTF = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
LATENT_PREFIX = "vtsLatent"
CLASS_PROBABILITY_PREFIX = "vtsClassProbability"
DEFAULT_AMPLITUDE_CONTRAST = 0.1


class ImageSource(Protocol):
    """What a ParticleSet needs from its images: length, box, batched reads, subsets."""

    box: int

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray | slice, check_finite: bool = True) -> np.ndarray: ...

    def subset(self, indices: np.ndarray) -> ImageSource: ...


@dataclass
class ParticleSet:
    """Particles: metadata tables (RELION 3.1 labels) and, when available, their images."""

    particles: pd.DataFrame
    optics: pd.DataFrame
    images: ImageSource | None = None
    source: str = ""

    def __post_init__(self) -> None:
        self.particles = self.particles.reset_index(drop=True)
        self.optics = self.optics.reset_index(drop=True)
        if "rlnOpticsGroup" not in self.particles:
            self.particles["rlnOpticsGroup"] = 1
        if "rlnOpticsGroup" not in self.optics or "rlnImagePixelSize" not in self.optics:
            raise InputError(self.source or None, "optics table needs rlnOpticsGroup and rlnImagePixelSize")
        duplicated = self.optics["rlnOpticsGroup"][self.optics["rlnOpticsGroup"].duplicated()]
        if len(duplicated):
            raise InputError(self.source or None, f"optics group {duplicated.iloc[0]} is defined twice",
                             "give each row of data_optics its own rlnOpticsGroup")
        missing = set(self.particles["rlnOpticsGroup"].unique()) - set(self.optics["rlnOpticsGroup"])
        if missing:
            raise InputError(self.source or None, f"particles refer to optics groups {sorted(missing)} "
                             "that the optics table does not define", "add those groups to data_optics")
        if self.images is not None and len(self.images) != len(self.particles):
            raise InputError(self.source or None, f"{len(self.particles)} particles but {len(self.images)} "
                             "images", "use metadata and images of the same particle set")

    def __len__(self) -> int:
        return len(self.particles)

    # ---- per-particle values drawn from the optics table -------------------------------------------
    def optics_column(self, column: str) -> np.ndarray:
        """Value of an optics-table column for every particle (N,)."""
        table = self.optics.set_index("rlnOpticsGroup")[column]
        return table.loc[self.particles["rlnOpticsGroup"].to_numpy()].to_numpy()

    @property
    def pixel_size(self) -> np.ndarray:
        """Pixel size of each particle image in Å (N,)."""
        return self.optics_column("rlnImagePixelSize").astype(np.float64)

    @property
    def box(self) -> int:
        """Image side in pixels (from the images, else from ``rlnImageSize``); 0 when unknown."""
        if self.images is not None:
            return self.images.box
        if "rlnImageSize" in self.optics:
            return int(self.optics["rlnImageSize"].iloc[0])
        return 0

    def single_pixel_size(self) -> float:
        """The one pixel size (Å) of all particles; an error if optics groups disagree."""
        sizes = np.unique(np.round(self.optics["rlnImagePixelSize"].to_numpy(np.float64), 6))
        if len(sizes) != 1:
            raise InputError(self.source or None, f"optics groups have different pixel sizes {sizes.tolist()} Å",
                             "rescale the particles to one pixel size first")
        return float(sizes[0])

    # ---- poses ---------------------------------------------------------------------------------------
    @property
    def has_poses(self) -> bool:
        return all(c in self.particles for c in EULER)

    @property
    def euler(self) -> np.ndarray:
        """RELION Euler angles (rot, tilt, psi) in degrees (N, 3); zeros where absent."""
        return self._columns(EULER)

    @property
    def rotations(self) -> np.ndarray:
        """RELION rotation matrices (N, 3, 3), float64."""
        return euler_to_matrix(self.euler)

    @property
    def shifts_angst(self) -> np.ndarray:
        """Origin shifts (``rlnOriginXAngst``, ``rlnOriginYAngst``) in Å (N, 2); zeros where absent."""
        return self._columns(SHIFTS)

    @property
    def shifts_px(self) -> np.ndarray:
        """Origin shifts in pixels (N, 2)."""
        return self.shifts_angst / self.pixel_size[:, None]

    def with_poses(self, rotations: np.ndarray | None = None, shifts_angst: np.ndarray | None = None,
                   euler: np.ndarray | None = None) -> ParticleSet:
        """A copy with new orientations (matrices or Euler degrees) and/or shifts (Å)."""
        table = self.particles.copy()
        if rotations is not None:
            euler = matrix_to_euler(np.asarray(rotations, np.float64))
        if euler is not None:
            table[EULER] = np.asarray(euler, np.float64)
        if shifts_angst is not None:
            table[SHIFTS] = np.asarray(shifts_angst, np.float64)
        return replace(self, particles=table)

    # ---- CTF -----------------------------------------------------------------------------------------
    @property
    def has_ctf(self) -> bool:
        return all(c in self.particles for c in DEFOCUS[:2]) and all(
            c in self.optics or c in self.particles for c in OPTICS_CTF[:2])

    def ctf_table(self) -> pd.DataFrame:
        """Per-particle CTF parameters in RELION units: defocus_u/v (Å), defocus_angle (deg), voltage (kV),
        cs (mm), amplitude_contrast, phase_shift (deg), bfactor (Å^2), scale, pixel_size (Å)."""
        if not self.has_ctf:
            raise InputError(self.source or None, "no CTF parameters (rlnDefocusU/V, rlnVoltage, "
                             "rlnSphericalAberration)", "add CTF columns or run with --no-ctf")

        return ctf_table(self.particles, self.optics, self.pixel_size)

    # ---- classes, half sets, latents -----------------------------------------------------------------
    @property
    def classes(self) -> np.ndarray | None:
        """1-based class numbers (N,), or None."""
        return self.particles["rlnClassNumber"].to_numpy(np.int64) if "rlnClassNumber" in self.particles else None

    @property
    def half_sets(self) -> np.ndarray | None:
        """Gold-standard half-set (1 or 2) of each particle (N,), or None."""
        if "rlnRandomSubset" not in self.particles:
            return None
        return self.particles["rlnRandomSubset"].to_numpy(np.int64)

    @property
    def latents(self) -> np.ndarray | None:
        """Latent coordinates (N, Z) from ``vtsLatent1..Z``, or None."""
        cols = self.latent_columns()
        return self.particles[cols].to_numpy(np.float64) if cols else None

    def latent_columns(self) -> list[str]:
        cols = [c for c in self.particles.columns if c.startswith(LATENT_PREFIX)]
        return sorted(cols, key=lambda c: int(c[len(LATENT_PREFIX):]))

    def with_columns(self, **columns: np.ndarray) -> ParticleSet:
        """A copy with per-particle columns set (RELION labels without underscore)."""
        table = self.particles.copy()
        for name, values in columns.items():
            table[name] = np.asarray(values)
        return replace(self, particles=table)

    def with_latents(self, z: np.ndarray) -> ParticleSet:
        """A copy with latent coordinates (N, Z) in ``vtsLatent1..Z`` (replacing old ones)."""
        z = np.asarray(z, np.float64).reshape(len(self), -1)
        table = self.particles.drop(columns=self.latent_columns())
        for k in range(z.shape[1]):
            table[f"{LATENT_PREFIX}{k + 1}"] = z[:, k]
        return replace(self, particles=table)

    def with_class_probabilities(self, posteriors: np.ndarray | None) -> ParticleSet:
        """A copy with class posteriors (N, K) in ``vtsClassProbability1..K``, replacing those of an earlier job
        (None: only removed)."""
        table = self.particles.drop(columns=[c for c in self.particles.columns
                                             if c.startswith(CLASS_PROBABILITY_PREFIX)])
        if posteriors is not None:
            for k in range(posteriors.shape[1]):
                table[f"{CLASS_PROBABILITY_PREFIX}{k + 1}"] = np.asarray(posteriors[:, k])
        return replace(self, particles=table)

    def subset(self, indices: np.ndarray) -> ParticleSet:
        """The particles at ``indices`` (integer positions or boolean mask), images included."""
        idx = np.arange(len(self))[np.asarray(indices)]
        images = None if self.images is None else self.images.subset(idx)
        return ParticleSet(self.particles.iloc[idx].copy(), self.optics.copy(), images, self.source)

    def _columns(self, names: list[str]) -> np.ndarray:
        out = np.zeros((len(self), len(names)))
        for k, name in enumerate(names):
            if name in self.particles:
                out[:, k] = self.particles[name].to_numpy(np.float64)
        return out


def ctf_table(rows: pd.DataFrame, optics: pd.DataFrame, pixel_size: np.ndarray) -> pd.DataFrame:
    """CTF parameters per row (with ``rlnOpticsGroup``) in RELION units (defocus_u/v Å, defocus_angle deg,
    voltage kV, cs mm, amplitude_contrast, phase_shift deg, bfactor Å^2, scale, pixel_size Å): each from the
    row's column, else its optics group's, else RELION's default."""
    groups = rows["rlnOpticsGroup"].to_numpy()

    def value(column: str, default: float) -> np.ndarray:
        if column in rows:
            return rows[column].to_numpy(np.float64)
        if column in optics:
            return optics.set_index("rlnOpticsGroup")[column].loc[groups].to_numpy(np.float64)
        return np.full(len(rows), default)

    return pd.DataFrame({
        "defocus_u": value("rlnDefocusU", 0.0),
        "defocus_v": value("rlnDefocusV", 0.0),
        "defocus_angle": value("rlnDefocusAngle", 0.0),
        "voltage": value("rlnVoltage", 300.0),
        "cs": value("rlnSphericalAberration", 2.7),
        "amplitude_contrast": value("rlnAmplitudeContrast", DEFAULT_AMPLITUDE_CONTRAST),
        "phase_shift": value("rlnPhaseShift", 0.0),
        "bfactor": value("rlnCtfBfactor", 0.0),
        "scale": value("rlnCtfScalefactor", 1.0),
        "pixel_size": np.asarray(pixel_size, np.float64),
    })
