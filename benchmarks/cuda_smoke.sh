#!/usr/bin/env bash
# Every command with --device once on CUDA, on 2000 simulated adenylate kinase particles (box 64, 1.5 Å/px,
# SNR 0.1), with wall times; plus the CUDA against the CPU backprojection (relative difference of the maps).
# Needs vitreous importable and a GPU; data from $VITREOUS_SHARED_DATA (default ../shared/data); logs in
# $OUT (default /tmp/cuda_smoke).  On a lent machine without a venv (see .library/device):
#   PYTHONPATH=$PWD/src:$PWD/benchmarks bash benchmarks/cuda_smoke.sh
set -u
OUT=${OUT:-/tmp/cuda_smoke}
DATA=${VITREOUS_SHARED_DATA:-$(dirname "$0")/../../shared/data}
W=$(mktemp -d)
mkdir -p "$OUT"
v() { python3 -c 'from vitreous.cli.main import run; run()' "$@"; }
step() {
    local name=$1 t0=$EPOCHREALTIME rc
    shift
    "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    awk -v n="$name" -v r=$rc -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%-16s rc=%s %7.1f s\n", n, r, b - a}' \
        | tee -a "$OUT/summary.txt"
    [ $rc = 0 ] || tail -15 "$OUT/$name.log"
}
python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' || exit 1
step simulate v simulate --model "$DATA/structures/adk/adk_closed.pdb" -n 2000 --box 64 --apix 1.5 --snr 0.1 -o "$W/sim"
S=$W/sim/particles.star
python3 -c "from bench_refine import unposed; from pathlib import Path; unposed(Path('$S'), Path('$W/unposed.star'))"
step backproject_cuda v backproject "$S" --device cuda -o "$W/bp_cuda"
step backproject_cpu v backproject "$S" --device cpu -o "$W/bp_cpu"
python3 -c "
import mrcfile, numpy as np
a, b = (mrcfile.read(f'$W/bp_{d}/map.mrc') for d in ('cuda', 'cpu'))
print('backproject CUDA vs CPU: relative difference', float(np.linalg.norm(a - b) / np.linalg.norm(b)))"
step refine v refine "$S" --reference "$W/bp_cuda/map.mrc" --iterations 3 --device cuda -o "$W/refine"
step classify3d v classify3d "$S" --reference "$W/bp_cuda/map.mrc" -K 2 --iterations 3 --device cuda -o "$W/c3d"
step class2d v class2d "$S" -K 10 --device cuda -o "$W/c2d"
step abinit v abinit "$W/unposed.star" --device cuda -o "$W/abinit"
step train_vae v train-vae "$S" --zdim 1 -n 2 --device cuda -o "$W/vae"
step analyze v analyze "$W/vae" --no-umap --device cuda
step abinit_neural v abinit-neural "$W/unposed.star" -K 2 --zdim 1 --epochs 2 --device cuda -o "$W/neural"
step analyze_class v analyze "$W/neural" --class 1 --no-umap --device cuda
rm -rf "$W"
