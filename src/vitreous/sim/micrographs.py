"""Simulated micrographs: particles of one or more maps at random positions and poses in vitreous ice.

Image formation (weak-phase approximation, RELION conventions): the phase ``phi(x) = lambda * V(x)`` (rad) of
the projected potential ``V`` (Å^-1; the maps of :mod:`vitreous.sim.density`, Å^-2, summed along z times the
pixel size) of particles, ice, carbon and contamination is filtered by RELION's CTF (:mod:`vitreous.physics.ctf`,
positive first lobe) over the whole field, once, and the image is the intensity relative to the incident beam

    I(x) = 1 - 2 IFT[ CTF * FT[phi] ](x)      (particles dark on a grey background, as raw micrographs),

plus detector noise: white Gaussian with a standard deviation set by the per-particle ``snr`` (the variance of
``2 CTF * phi`` of one particle over its map box, as ``vitreous simulate`` defines it, over the noise variance),
or Poisson counts at ``dose`` e/Å² (``counts ~ Poisson(dose * apix^2 * I)``, stored as counts).  The field is
padded by the CTF's delocalisation (``lambda * defocus * k_max``) before the FFT, so nothing wraps around.

Particle ``i`` is the projection ``project(A_i)`` of its map (:class:`vitreous.physics.projection.Projector`)
with its centre (map voxel ``D//2``) at micrograph pixel ``(rlnCoordinateX, rlnCoordinateY)`` (x = column,
y = row, 0 = the first pixel's centre; sub-pixel positions by a Fourier shift), so a box cut around the
coordinate, with the fractional part as its origin, shows the particle exactly as ``vitreous simulate`` would.
Centres lie at least one particle radius inside the field, at least ``min_distance`` (default: the sum of the
two radii) apart, and off carbon and contamination.  Solvent displacement is not modelled: particles add
their full potential to the ice.

Ice: a mean thickness per micrograph (uniform in ``ice_thickness_A``) times ``1 + ice_variation * g(x)``, with
``g`` a unit-variance Gaussian random field of correlation length ``ice_correlation_A``; its mean potential is
``n_water * f_water(0)`` per Å of thickness, and its amorphous structure adds a random potential of power
spectrum ``n t S(k) |f(k)|^2`` (molecules of number density ``n`` in thickness ``t``, form factor ``f``), which
gives Thon rings without particles, as real ice does.  The structure factor of amorphous water is
``S(k) = s0 (1 + AMORPHOUS_PEAK * exp(-(k - 1/3.7 Å)^2 / (2 w^2)))``: flat at low frequencies at ``s0 =
ice_structure`` (0.06, the compressibility limit ``n kT kappa_T`` of water) with the first diffraction peak of
vitreous ice at 3.7 Å (Q = 1.7 Å^-1) reaching about 2; amorphous carbon uses the flat part only.  (A flat
``S = 0.3`` used before made the ice 5x noisier than water at the frequencies that align particles.)
Crystalline ice (probability ``crystalline``) adds rings of hexagonal ice at 3.90, 3.67 and 3.44 Å.  A carbon
edge (probability ``carbon``) covers part of the field beyond a straight or curved (hole-edge) boundary with
``carbon_thickness_A`` of amorphous carbon; contamination blobs (a Poisson number, mean ``contamination``) are
ice ellipsoids 100-500 Å across and up to 2000 Å thick.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from vitreous.data.particles import EULER
from vitreous.physics.ctf import CTFParams, compute_ctf, ctf_from_frequencies, electron_wavelength
from vitreous.physics.fourier import ifft2c
from vitreous.physics.ice import AMORPHOUS_PEAK_A, HEXAGONAL_RINGS_A
from vitreous.physics.projection import Projector
from vitreous.physics.rotations import euler_to_matrix, matrix_to_euler
from vitreous.physics.so3_grid import random_rotations
from vitreous.sim.density import auto_blur, scattering_coefficients

WATER_DENSITY = 0.031  # molecules / Å^3 (vitreous ice, 0.93 g/cm^3)
CARBON_DENSITY = 0.1  # atoms / Å^3 (amorphous carbon, 2.0 g/cm^3)
RING_WIDTH = 0.004  # 1/Å, Gaussian sd of each crystalline-ice ring
RING_HEIGHT = 500.0  # structure-factor peak of the crystalline rings, relative to S(0)
AMORPHOUS_PEAK_WIDTH = 0.02  # 1/Å, Gaussian sd of that peak
AMORPHOUS_PEAK = 32.0  # its height relative to S(0): S(peak) ~ 2 for S(0) = 0.06
NOISE_SAMPLE = 32  # projections per model used to set the Gaussian noise level
CTF_COLUMNS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift"]


@dataclass
class MicrographOptions:
    """Sample, microscope and detector parameters (Å, µm for defocus ranges, kV, mm, degrees, e/Å²)."""

    size: int = 1024
    apix: float = 1.0
    particles: tuple[int, int] = (150, 150)  # number per micrograph, uniform in [min, max]
    proportions: list[float] | None = None  # fraction of each map (default equal)
    min_distance_A: float | None = None  # default: sum of the two particles' radii
    defocus_um: tuple[float, float] = (0.5, 3.0)
    astigmatism_A: float = 1000.0  # maximum |defocus U - V|, uniform; angle uniform in [-90, 90)
    phase_shift: float = 0.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0
    snr: float = 0.1
    dose: float | None = None  # e/Å²: Poisson counts instead of Gaussian noise at ``snr``
    ice_thickness_A: tuple[float, float] = (300.0, 600.0)
    ice_variation: float = 0.15
    ice_correlation_A: float = 400.0
    ice_structure: float = 0.06  # S(k -> 0) of amorphous water
    crystalline: float = 0.0
    carbon: float = 0.0
    carbon_thickness_A: float = 150.0
    contamination: float = 0.0


@dataclass
class Micrograph:
    """One simulated micrograph: ``image`` float32 [y, x], the true particles (``rlnCoordinateX/Y`` px,
    ``rlnAngleRot/Tilt/Psi`` deg, ``vtsModel`` 1-based, and the micrograph's CTF columns) and truth values."""

    image: np.ndarray
    particles: pd.DataFrame
    ctf: dict[str, float]
    ice_thickness_A: float
    carbon: bool = False
    contamination: int = 0
    crystalline: bool = False
    info: dict[str, float] = field(default_factory=dict)


def map_radius(volume: torch.Tensor, apix: float, fraction: float = 0.02) -> float:
    """Radius (Å) around voxel D//2 of the voxels above ``fraction`` of the map's maximum."""
    D = volume.shape[-1]
    grid = (torch.arange(D, dtype=torch.float32) - D // 2) ** 2
    r2 = grid[:, None, None] + grid[None, :, None] + grid[None, None, :]
    inside = volume > fraction * volume.max()
    return float(r2[inside].max().sqrt()) * apix if inside.any() else 0.0


def _form_factor(elements: list[str], k: torch.Tensor) -> torch.Tensor:
    """Summed electron scattering factor (Å) of ``elements`` at frequency ``k`` (1/Å): sum a exp(-b k^2/4)."""
    a, b = scattering_coefficients(np.asarray(elements))
    k2 = k**2 / 4.0
    total = torch.zeros_like(k)
    for a_i, b_i in zip(a.reshape(-1), b.reshape(-1), strict=True):
        total += float(a_i) * torch.exp(-float(b_i) * k2)
    return total


class MicrographSimulator:
    """Simulates micrographs of the maps ``volumes`` (each (D, D, D) [z, y, x], Å^-2, at ``options.apix``)."""

    def __init__(self, volumes: list[torch.Tensor] | torch.Tensor, options: MicrographOptions) -> None:
        self.options = o = options
        self.volumes = [v.float() for v in volumes]
        self.projectors = [Projector(v) for v in self.volumes]
        self.radii = np.array([map_radius(v, o.apix) for v in self.volumes])
        n = len(self.volumes)
        p = np.full(n, 1.0 / n) if o.proportions is None else np.asarray(o.proportions, np.float64)
        if len(p) != n or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"need {n} non-negative proportions, got {o.proportions}")
        self.proportions = p / p.sum()
        self.wavelength = float(electron_wavelength(o.voltage))
        max_defocus = o.defocus_um[1] * 1e4 + o.astigmatism_A / 2
        delocalisation = self.wavelength * max_defocus / (2 * o.apix) + max(self.radii)  # Å, at Nyquist
        self.pad = int(math.ceil(delocalisation / o.apix)) + max(v.shape[-1] for v in self.volumes) // 2 + 1
        self.padded = _fft_size(o.size + 2 * self.pad)
        self._ky, self._kx = _frequencies(self.padded, o.apix)
        self._k = torch.sqrt(self._ky**2 + self._kx**2)
        self._filters: dict[tuple[str, bool], tuple[torch.Tensor, float]] = {}
        self.sigma = self._noise_sigma() if o.dose is None else 0.0

    # ---- public -------------------------------------------------------------------------------------
    def simulate(self, seed: int | Sequence[int]) -> Micrograph:
        """One micrograph from its own ``seed`` (an int or a sequence such as ``(run_seed, index)``; the same
        seed gives the same micrograph)."""
        o = self.options
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        ctf = self._draw_ctf(rng)
        thickness = rng.uniform(*o.ice_thickness_A)
        carbon = self._carbon(rng) if rng.random() < o.carbon else None
        blobs, n_blobs = self._contamination(rng)
        crystalline = bool(rng.random() < o.crystalline)
        ice = thickness * (1.0 + o.ice_variation * self._smooth_field(generator))
        ice = ice.clamp_min(0.1 * thickness) + blobs
        carbon_t = torch.zeros_like(ice) if carbon is None else carbon * o.carbon_thickness_A
        excluded = (blobs > 0) | (carbon_t > 0.01 * max(o.carbon_thickness_A, 1.0))
        particles = self._place(rng, excluded)
        phase = self._particle_phase(particles)
        phase += self.wavelength * (self._material_phase(ice, "water", crystalline, generator)
                                    + self._material_phase(carbon_t, "carbon", False, generator))
        contrast = self._apply_ctf(phase, ctf)
        crop = slice(self.pad, self.pad + o.size)
        intensity = 1.0 - 2.0 * contrast[crop, crop]
        if o.dose is None:
            image = intensity + self.sigma * torch.randn(intensity.shape, generator=generator)
        else:
            image = torch.poisson(o.dose * o.apix**2 * intensity.clamp_min(0.0), generator=generator)
        table = particles.assign(**{k: ctf[k] for k in CTF_COLUMNS})
        return Micrograph(image.numpy().astype(np.float32), table, ctf, thickness, carbon is not None,
                          n_blobs, crystalline, {"noise_sigma": self.sigma})

    # ---- geometry -----------------------------------------------------------------------------------
    def _draw_ctf(self, rng: np.random.Generator) -> dict[str, float]:
        o = self.options
        defocus = rng.uniform(*o.defocus_um) * 1e4
        astig = rng.uniform(0.0, o.astigmatism_A)
        return {"rlnDefocusU": defocus + astig / 2, "rlnDefocusV": defocus - astig / 2,
                "rlnDefocusAngle": rng.uniform(-90.0, 90.0), "rlnPhaseShift": o.phase_shift}

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates (Å) of the padded field's pixels relative to the visible field's first pixel, [y, x]."""
        axis = (torch.arange(self.padded, dtype=torch.float32) - self.pad) * self.options.apix
        return axis[:, None], axis[None, :]

    def _carbon(self, rng: np.random.Generator) -> torch.Tensor:
        """Carbon coverage (0..1, soft 10 Å edge) beyond a straight or circular edge crossing the field."""
        o = self.options
        side = o.size * o.apix
        angle = rng.uniform(0, 2 * math.pi)
        normal = np.array([math.cos(angle), math.sin(angle)])  # (x, y), pointing into the carbon
        point = side / 2 + normal * rng.uniform(0.15, 0.4) * side
        y, x = self._grid()
        if rng.random() < 0.5:
            distance = (x - point[0]) * normal[0] + (y - point[1]) * normal[1]
        else:
            radius = rng.uniform(0.6, 2.0) * side
            centre = point - radius * normal
            distance = torch.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2) - radius
        return torch.sigmoid(distance / 5.0)

    def _contamination(self, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """Thickness (Å) of a Poisson number of ice ellipsoids (semi-axes 50-250 Å, up to 2000 Å thick)."""
        o = self.options
        n_blobs = int(rng.poisson(o.contamination)) if o.contamination > 0 else 0
        total = torch.zeros(self.padded, self.padded)
        for _ in range(n_blobs):
            cx, cy = rng.uniform(0, o.size * o.apix, 2)
            a, b = rng.uniform(50, 250, 2)
            height = rng.uniform(200, 1000)
            t = rng.uniform(0, math.pi)
            half = int(math.ceil(max(a, b) / o.apix)) + 1
            x0, y0 = int(cx / o.apix) + self.pad - half, int(cy / o.apix) + self.pad - half
            window = (slice(max(y0, 0), min(y0 + 2 * half + 1, self.padded)),
                      slice(max(x0, 0), min(x0 + 2 * half + 1, self.padded)))
            y = (torch.arange(window[0].start, window[0].stop) - self.pad)[:, None] * o.apix - cy
            x = (torch.arange(window[1].start, window[1].stop) - self.pad)[None, :] * o.apix - cx
            u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
            total[window] += 2 * height * torch.sqrt((1 - (u / a) ** 2 - (v / b) ** 2).clamp_min(0.0))
        return total, n_blobs

    def _place(self, rng: np.random.Generator, excluded: torch.Tensor) -> pd.DataFrame:
        """Non-overlapping centres (px, float), models and uniform poses of this micrograph's particles."""
        o = self.options
        wanted = int(rng.integers(o.particles[0], o.particles[1] + 1))
        models = rng.choice(len(self.volumes), size=20 * wanted + 100, p=self.proportions)
        radius_px = self.radii / o.apix
        low = radius_px[models]
        xy = rng.uniform(low[:, None], o.size - 1 - low[:, None], (len(models), 2))
        # keep candidates whose disc (radius + 2 px) misses carbon and contamination
        blocked = _dilate(excluded, int(math.ceil(max(radius_px))) + 2)
        ix = np.clip(np.rint(xy).astype(int) + self.pad, 0, self.padded - 1)
        ok = ~blocked[ix[:, 1], ix[:, 0]].numpy()
        distance_px = None if o.min_distance_A is None else o.min_distance_A / o.apix
        chosen: list[int] = []
        for i in np.nonzero(ok)[0]:
            if len(chosen) == wanted:
                break
            if chosen:
                d2 = ((xy[chosen] - xy[i]) ** 2).sum(1)
                need = radius_px[models[chosen]] + radius_px[models[i]] if distance_px is None else distance_px
                if (d2 < need**2).any():
                    continue
            chosen.append(i)
        chosen_idx = np.asarray(chosen, dtype=int)
        seed = int(rng.integers(2**62))
        rotations = random_rotations(len(chosen_idx), generator=torch.Generator().manual_seed(seed),
                                     dtype=torch.float64).numpy()
        table = pd.DataFrame({"rlnCoordinateX": xy[chosen_idx, 0], "rlnCoordinateY": xy[chosen_idx, 1]})
        table[EULER] = matrix_to_euler(rotations) if len(chosen_idx) else np.zeros((0, 3))
        table["vtsModel"] = models[chosen_idx] + 1
        return table

    # ---- potentials ---------------------------------------------------------------------------------
    def _particle_phase(self, particles: pd.DataFrame) -> torch.Tensor:
        """Phase (rad) of the particles' projections pasted into the padded field [y, x]."""
        o, P = self.options, self.padded
        field_ = torch.zeros(P * P)
        xy = particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
        rotations = torch.as_tensor(_rotations(particles), dtype=torch.float32)
        models = particles["vtsModel"].to_numpy() - 1
        for m in np.unique(models):
            idx = np.nonzero(models == m)[0]
            D = self.projectors[m].D
            whole = np.floor(xy[idx] + 0.5)
            fraction = torch.as_tensor(xy[idx] - whole, dtype=torch.float32)
            images = self.projectors[m].project(rotations[idx], shifts_px=-fraction)  # centre at D//2 + fraction
            corner = whole.astype(np.int64) - D // 2 + self.pad  # (x, y) of box pixel (0, 0) in the field
            offsets = torch.arange(D)
            rows = torch.as_tensor(corner[:, 1])[:, None] + offsets  # (n, D)
            cols = torch.as_tensor(corner[:, 0])[:, None] + offsets
            flat = (rows[:, :, None] * P + cols[:, None, :]).reshape(-1)
            field_.index_add_(0, flat, images.reshape(-1))
        return field_.view(P, P) * (self.wavelength * o.apix)

    def _smooth_field(self, generator: torch.Generator) -> torch.Tensor:
        """Unit-variance Gaussian random field with correlation length ``ice_correlation_A`` (padded grid)."""
        o, P = self.options, self.padded
        noise = torch.randn(P, P, generator=generator)
        envelope = torch.exp(-(math.pi * o.ice_correlation_A * self._k) ** 2)
        smooth = torch.fft.irfft2(torch.fft.rfft2(noise) * envelope, s=(P, P))
        return (smooth - smooth.mean()) / smooth.std().clamp_min(1e-12)

    def _material_filter(self, material: str, crystalline: bool) -> tuple[torch.Tensor, float]:
        """Amplitude filter of the amorphous structure (per pixel of white noise, per Å of thickness) and
        the mean projected potential per Å of thickness (Å^-2) of ``material`` ("water" or "carbon")."""
        key = (material, crystalline)
        if key not in self._filters:
            o, k = self.options, self._k.double()
            molecule, density = (["O", "H", "H"], WATER_DENSITY) if material == "water" else (["C"], CARBON_DENSITY)
            form = _form_factor(molecule, k) * torch.exp(-auto_blur(o.apix) * k**2 / 4.0)
            structure = torch.full_like(k, o.ice_structure)
            if material == "water":
                peak = torch.exp(-0.5 * ((k - 1 / AMORPHOUS_PEAK_A) / AMORPHOUS_PEAK_WIDTH) ** 2)
                structure += AMORPHOUS_PEAK * o.ice_structure * peak
            if crystalline:
                for spacing in HEXAGONAL_RINGS_A:
                    structure += RING_HEIGHT * o.ice_structure * torch.exp(-0.5 * ((k - 1 / spacing) / RING_WIDTH) ** 2)
            # white noise of unit variance per pixel has power apix^2: filter to density * S * |f|^2 per Å
            filt = (torch.sqrt(density * structure) * form / o.apix).float()
            mean = density * float(_form_factor(molecule, torch.zeros(1, dtype=torch.float64))[0])
            self._filters[key] = (filt, mean)
        return self._filters[key]

    def _material_phase(self, thickness: torch.Tensor, material: str, crystalline: bool,
                        generator: torch.Generator) -> torch.Tensor:
        """Projected potential (Å^-1) of a material of ``thickness`` (Å): mean plus amorphous structure."""
        if not bool((thickness > 0).any()):
            return torch.zeros_like(thickness)
        P = self.padded
        filt, mean = self._material_filter(material, crystalline)
        noise = torch.randn(P, P, generator=generator)
        amorphous = torch.fft.irfft2(torch.fft.rfft2(noise) * filt, s=(P, P))
        return mean * thickness + torch.sqrt(thickness.clamp_min(0.0)) * amorphous

    def _apply_ctf(self, phase: torch.Tensor, ctf: dict[str, float]) -> torch.Tensor:
        """``IFT[CTF * FT[phase]]`` over the padded field (real FFTs)."""
        P = self.padded
        transfer = ctf_from_frequencies(self._params(ctf, torch.float32), self._kx[None], self._ky[None])[0]
        return torch.fft.irfft2(torch.fft.rfft2(phase) * transfer, s=(P, P))

    def _params(self, ctf: dict[str, float], dtype: torch.dtype) -> CTFParams:
        o = self.options
        return CTFParams.create(ctf["rlnDefocusU"], ctf["rlnDefocusV"], ctf["rlnDefocusAngle"], o.voltage, o.cs,
                                o.amplitude_contrast, ctf["rlnPhaseShift"], o.bfactor, dtype=dtype)

    def _noise_sigma(self) -> float:
        """Gaussian noise sd giving ``snr`` = var(2 CTF * phi of one particle in its map box) / sigma^2, with
        the CTF at the middle of the defocus range (no astigmatism)."""
        o = self.options
        generator = torch.Generator().manual_seed(0)
        mid = float(np.mean(o.defocus_um)) * 1e4
        variance = 0.0
        for projector, weight in zip(self.projectors, self.proportions, strict=True):
            rotations = random_rotations(NOISE_SAMPLE, generator=generator, dtype=torch.float32)
            ctf = compute_ctf(self._params({"rlnDefocusU": mid, "rlnDefocusV": mid, "rlnDefocusAngle": 0.0,
                                            "rlnPhaseShift": o.phase_shift}, torch.float32), projector.D, o.apix)
            images = ifft2c(projector.slices(rotations) * ctf).real * (2 * self.wavelength * o.apix)
            variance += weight * float(images.var())
        return math.sqrt(variance / o.snr)


def simulate_micrograph(volumes: list[torch.Tensor] | torch.Tensor, options: MicrographOptions,
                        seed: int | Sequence[int]) -> Micrograph:
    """One micrograph of the maps ``volumes`` (see :class:`MicrographSimulator`; build that once for many)."""
    return MicrographSimulator(volumes, options).simulate(seed)


def micrograph_optics(options: MicrographOptions) -> pd.DataFrame:
    """RELION 3.1 ``data_optics`` of the simulated micrographs (one group)."""
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                         "rlnVoltage": [options.voltage], "rlnSphericalAberration": [options.cs],
                         "rlnAmplitudeContrast": [options.amplitude_contrast],
                         "rlnMicrographPixelSize": [options.apix]})


def _rotations(particles: pd.DataFrame) -> np.ndarray:
    return euler_to_matrix(particles[EULER].to_numpy(np.float64)).reshape(-1, 3, 3)


def _frequencies(P: int, apix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 frequency grids (1/Å): ky (P, 1), kx (1, P//2+1), float32."""
    ky = torch.fft.fftfreq(P, d=apix)[:, None]
    kx = torch.fft.rfftfreq(P, d=apix)[None, :]
    return ky, kx


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT lengths)."""
    best = 1 << (n - 1).bit_length()
    for a in (1, 3, 9, 27, 5, 15, 45, 25, 75):
        m = a
        while m < n:
            m *= 2
        best = min(best, m)
    return best


def _dilate(mask: torch.Tensor, radius: int, coarse: int = 4) -> torch.Tensor:
    """Binary dilation of a [y, x] mask by a square of half-side ``radius`` px, computed on a grid ``coarse``
    times smaller (conservative: blocks a little more than the exact dilation)."""
    if radius <= 0 or not bool(mask.any()):
        return mask
    small = torch.nn.functional.max_pool2d(mask[None, None].float(), coarse, stride=coarse, ceil_mode=True)
    r = -(-radius // coarse)
    small = torch.nn.functional.max_pool2d(small, (2 * r + 1, 1), stride=1, padding=(r, 0))
    small = torch.nn.functional.max_pool2d(small, (1, 2 * r + 1), stride=1, padding=(0, r))
    full = small[0, 0].repeat_interleave(coarse, 0).repeat_interleave(coarse, 1)
    return full[:mask.shape[0], :mask.shape[1]] > 0
