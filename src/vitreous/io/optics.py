"""Optics groups from per-particle optical columns (RELION 3.0 files, cryoSPARC .cs, cryoDRGN CTF)."""

from __future__ import annotations

import numpy as np
import pandas as pd

OPTICS_LABELS = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                 "rlnImageSize"]


def split_optics(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move optical columns out of a flat particle table into optics groups (one per distinct combination).

    Returns (particles with ``rlnOpticsGroup`` 1-based, optics table).
    """
    present = [c for c in OPTICS_LABELS if c in table]
    keys = table[present].astype(np.float64).round(6)
    if present:
        grouped = keys.groupby(present, dropna=False, sort=True)
        codes = grouped.ngroup().to_numpy()
        optics = grouped.size().reset_index()[present]
    else:
        codes, optics = np.zeros(len(table), np.int64), pd.DataFrame(index=[0])
    if "rlnImageSize" in optics:
        optics["rlnImageSize"] = optics["rlnImageSize"].astype(np.int64)
        optics["rlnImageDimensionality"] = 2
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(optics) + 1))
    optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{i}" for i in optics["rlnOpticsGroup"]])
    particles = table.drop(columns=present)
    particles["rlnOpticsGroup"] = codes + 1
    return particles, optics
