"""Peer tools for side-by-side benchmarks, each in its own venv under ``benchmarks/.peer-venvs/``.

ASPIRE (``ensure_aspire()``, ``aspire==0.14.3``): CTF estimation and 2D class averaging peers of issue 7.

cryoDRGN: ``ensure_cryodrgn()`` builds ``.peer-venvs/cryodrgn`` idempotently (a ``.installed``
marker), installing ``torch==2.13.0`` (local CPU wheel) first and then ``cryodrgn==4.3.1`` (the
latest on PyPI; ``pip index versions cryodrgn``) with the torch pin repeated, so pip never pulls
CUDA wheels. It installed cleanly with no extra constraints, in ~100 s on 2 busy cores
(~140 packages, jupyterlab among them). ``python benchmarks/peers.py`` installs and verifies.

Every ``cryodrgn`` call spends ~8 s importing its CLI before doing any work.

Subcommands in 4.3.1 (``cryodrgn --help``): abinit, abinit_het_old, abinit_homo_old, analyze,
analyze_landscape, analyze_landscape_full, backproject_voxel, dashboard, direct_traversal,
downsample, eval_images, eval_vol, filter, graph_traversal, parse_ctf_csparc, parse_ctf_star,
parse_pose_csparc, parse_pose_star, parse_star, pc_traversal, train_nn, train_vae, train_dec.
Ab initio is now ``abinit`` (cryoDRGN-AI; ``--zdim 0`` = homogeneous); the former
``abinit_homo``/``abinit_het`` survive as ``abinit_homo_old``/``abinit_het_old``.

Argument names from ``--help`` (4.3.1)::

    parse_pose_star input --outpkl/-o PKL [-D D] [--Apix APIX]
        (-D/--Apix override the STAR; --Apix converts rlnOriginX/YAngst to pixels)
    parse_ctf_star star -o O [--png PNG] [-D D] [--Apix APIX] [--kv KV] [--cs CS] [-w W] [--ps PS]
    parse_star input [--ctf CTF] [--poses POSES] [--png PNG] [-D D] [--Apix APIX] [--kv KV]
        [--cs CS] [-w W] [--ps PS] [--overwrite]                  (both parsers in one call)
    backproject_voxel particles --poses POSES [--ctf pkl] --outdir/-o OUTDIR [--no-half-maps]
        [--no-fsc-vals] [-b/--batch-size 1000] [--ctf-alg {flip,mul}=mul] [--reg-weight 1.0]
        [--output-sumcount] [--uninvert-data] [--datadir DATADIR] [--lazy] [--ind PKL]
        [--first FIRST] [--log-interval 5000] [--tilt] [--ntilts 10] [--force-ntilts]
        [-d/--dose-per-tilt D] [-a/--angle-per-tilt 3]
    train_vae particles -o OUTDIR --zdim ZDIM --poses POSES [--ctf pkl] [-n/--num-epochs 20]
        [-b/--batch-size 16] [--max-threads 16] [--num-workers N] [--lazy] [--datadir DATADIR]
        [--ind PKL] [--uninvert-data] [--no-window] [--window-r R] [--seed SEED] [--no-amp]
        [--no-analysis] [--checkpoint N] [--load WEIGHTS.PKL] [--enc-layers QLAYERS]
        [--enc-dim QDIM] [--dec-layers PLAYERS] [--dec-dim PDIM] [--encode-mode {conv,resid,mlp,tilt}]
        [--pe-type ...] [--domain {hartley,fourier}] [--beta BETA] [--lr LR] [--wd WD]
        [--do-pose-sgd] [--multigpu] ...
    abinit particles -o OUTDIR --zdim ZDIM [--ctf CTF] [--datadir DATADIR] [--ind IND]
        [--relion31] [--uninvert-data] [--lazy] [--max-threads 16] [--seed SEED]
        [--num-epochs/-n 30] [--epochs-pose-search N] [--n-imgs-pose-search N] [--epochs-sgd N]
        [--n-imgs-pretrain 10000] [--batch-size-hps B] [--batch-size-known-poses B]
        [--batch-size-sgd B] [--explicit-volume] [--layers 3] [--dim 256] [--no-trans]
        [--no-amp] [--no-analysis] [--load LOAD] [--load-poses LOAD_POSES] ...
    abinit_homo_old particles -o OUTDIR [--ctf pkl] [-n NUM_EPOCHS] [-b BATCH_SIZE] [--lazy]
        [--datadir DATADIR] [--ind IND] [--uninvert-data] [--no-amp] [--seed SEED] ...
    abinit_het_old particles -o OUTDIR --zdim ZDIM [--ctf pkl] [-n NUM_EPOCHS] [-b BATCH_SIZE]
        [--max-threads MAX_THREADS] [--lazy] [--datadir DATADIR] [--no-amp] ...

``--max-threads`` only sizes cryoDRGN's file-reading thread pool; torch compute threads follow
``OMP_NUM_THREADS`` (set by ``harness.run_measured``). Pass ``--max-threads 2`` as well when
benchmarking train_vae/abinit so both tools use 2 threads.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PEER_VENVS = BENCH_DIR / ".peer-venvs"
CRYODRGN_VENV = PEER_VENVS / "cryodrgn"
TORCH_PIN = "torch==2.13.0"
CRYODRGN_PIN = "cryodrgn==4.3.1"
ASPIRE_VENV = PEER_VENVS / "aspire"
ASPIRE_PIN = "aspire==0.14.3"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def cryodrgn_exe(venv: Path = CRYODRGN_VENV) -> Path:
    """Path of the ``cryodrgn`` console script in the peer venv."""
    return venv / "bin" / "cryodrgn"


def ensure_venv(venv: Path, packages: list[str], *, quiet: bool = True) -> Path:
    """Create a peer venv with ``packages`` if needed (idempotent, a ``.installed`` marker); return its python.

    The CPU torch pin is installed first and repeated with the packages, so pip never pulls CUDA wheels.
    """
    python = _venv_python(venv)
    marker = venv / ".installed"
    if marker.exists() and python.exists():
        return python
    t0 = time.perf_counter()
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("-q")
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, *packages, TORCH_PIN], check=True)
    marker.write_text(f"{' '.join(packages)} {TORCH_PIN} installed in {time.perf_counter() - t0:.1f} s\n")
    return python


def ensure_cryodrgn(venv: Path = CRYODRGN_VENV, *, quiet: bool = True) -> Path:
    """Create the cryoDRGN venv if needed (idempotent); return the ``cryodrgn`` executable."""
    ensure_venv(venv, [CRYODRGN_PIN], quiet=quiet)
    return cryodrgn_exe(venv)


def ensure_aspire(venv: Path = ASPIRE_VENV, *, quiet: bool = True) -> Path:
    """Create the ASPIRE venv if needed (idempotent); return its python (``import aspire`` works there)."""
    return ensure_venv(venv, [ASPIRE_PIN], quiet=quiet)


REQUIRED_COMMANDS = (
    "parse_pose_star",
    "parse_ctf_star",
    "backproject_voxel",
    "train_vae",
    "abinit",
    "abinit_homo_old",
    "abinit_het_old",
)


def verify_cryodrgn(exe: Path | None = None) -> str:
    """Check the version and that every command in ``REQUIRED_COMMANDS`` exists; return the version."""
    exe = exe or cryodrgn_exe()
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    usage = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    choices = set(usage[usage.index("{") + 1 : usage.index("}")].split(","))
    missing = [c for c in REQUIRED_COMMANDS if c not in choices]
    if missing:
        raise RuntimeError(f"cryoDRGN {version} lacks commands: {missing}")
    return version


if __name__ == "__main__":
    exe = ensure_cryodrgn(quiet=False)
    print(f"{exe}: cryoDRGN {verify_cryodrgn(exe)}, all of {', '.join(REQUIRED_COMMANDS)} present")
