"""Reconstruction of 3D maps from particle images with known poses."""
