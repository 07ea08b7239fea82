"""Imaging physics: rotations, CTF, Fourier tools, projection (PyTorch, CPU and CUDA)."""
